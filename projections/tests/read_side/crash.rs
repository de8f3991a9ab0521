//! A real worker process, SIGKILLed in the middle of its batches again and again
//! while the workload goes on; after a final clean run its read models equal a
//! clean rebuild.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use projections::{Projection, RebuildOptions};
use tokio_postgres::Client;

use crate::support::{all_rows, assert_same_rows, shop, TestDb, TestResult};

const WORKER: &str = env!("CARGO_BIN_EXE_projections-worker");
const KILLS: usize = 15;

fn spawn_worker(url: &str, pause_ms: u64) -> std::io::Result<Child> {
    Command::new(WORKER)
        .env(
            "DATABASE_URL",
            format!("{url}?application_name=crash-worker"),
        )
        .env("PROJECTIONS_PAUSE_BEFORE_COMMIT_MS", pause_ms.to_string())
        .env("PROJECTIONS_BATCH_MAX_EVENTS", "150")
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
}

/// Waits (bounded) until a worker transaction has written rows and not committed.
async fn batch_in_flight(client: &Client, timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'crash-worker' AND backend_xid IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        if open > 0 {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_many_times_ends_equal_to_a_clean_rebuild() -> TestResult {
    let t = TestDb::new().await?;
    let client = t.client().await?;
    let mut shop = shop(11);
    let mut mid_batch_kills = 0;
    for _ in 0..KILLS {
        let mut worker = spawn_worker(&t.db.url, 20)?;
        t.append_workload(&mut shop, 400).await?;
        if batch_in_flight(&client, Duration::from_secs(5)).await? {
            mid_batch_kills += 1;
        }
        worker.kill()?; // SIGKILL
        worker.wait()?;
    }
    assert!(
        mid_batch_kills >= KILLS * 2 / 3,
        "only {mid_batch_kills} of {KILLS} kills hit an open batch"
    );

    // A final clean run, then compare with a rebuild from scratch.
    let mut worker = spawn_worker(&t.db.url, 0)?;
    let caught_up = t.wait_caught_up(Duration::from_secs(30)).await;
    drop(worker.stdin.take()); // closing stdin stops it cleanly
    worker.wait()?;
    caught_up?;
    let live = all_rows(&client).await?;
    projections::rebuild(
        &t.store,
        &Projection::ALL,
        &RebuildOptions::default(),
        |_| {},
    )
    .await?;
    assert_same_rows(&live, &all_rows(&client).await?);
    Ok(())
}
