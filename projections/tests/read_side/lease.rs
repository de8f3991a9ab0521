//! Several runners of the same projections: one applies, the others stand by and
//! take over when the holder's lock connection dies.

use std::time::{Duration, Instant};

use projections::{ProjectionState, Runner, RunnerConfig};

use crate::support::{quick_runner, shop, TestDb, TestResult};

fn runner(owner: &str, lease_retry_ms: u64) -> RunnerConfig {
    RunnerConfig {
        owner: owner.to_owned(),
        lease_retry_interval: Duration::from_millis(lease_retry_ms),
        ..quick_runner(100)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_runner_takes_over_when_the_holders_connection_dies() -> TestResult {
    let t = TestDb::new().await?;
    let mut shop = shop(5);
    t.append_workload(&mut shop, 500).await?;
    // `a` waits long after losing a lease, so `b` is the one that takes over.
    let a = Runner::start(t.store.clone(), runner("runner-a", 3_000)).await?;
    t.wait_caught_up(Duration::from_secs(20)).await?;
    let b = Runner::start(t.store.clone(), runner("runner-b", 50)).await?;
    t.append_workload(&mut shop, 200).await?;
    t.wait_caught_up(Duration::from_secs(20)).await?;
    let before = projections::status(&t.store).await?;
    assert!(
        before
            .iter()
            .all(|s| s.owner.as_deref() == Some("runner-a")),
        "{before:#?}"
    );
    let holder = before[0].lease_pid.expect("a holds the leases");
    assert!(before.iter().all(|s| s.lease_pid == Some(holder)));

    let client = t.client().await?;
    client
        .execute("SELECT pg_terminate_backend($1)", &[&holder])
        .await?;
    t.append_workload(&mut shop, 300).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statuses = projections::status(&t.store).await?;
        let taken_over = statuses.iter().all(|s| {
            s.owner.as_deref() == Some("runner-b")
                && s.lag == 0
                && s.state == ProjectionState::Running
                && s.lease_pid.is_some_and(|pid| pid != holder)
        });
        if taken_over {
            break;
        }
        assert!(Instant::now() < deadline, "no takeover: {statuses:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await;
    b.stop().await;
    let stopped = projections::status(&t.store).await?;
    assert!(stopped.iter().all(|s| s.state == ProjectionState::Stopped));
    Ok(())
}
