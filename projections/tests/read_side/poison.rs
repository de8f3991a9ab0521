//! An event a projection cannot apply stops that projection, with its position and
//! the error in the status, and no other projection.

use std::time::{Duration, Instant};

use eventstore::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use projections::{Projection, ProjectionState, ProjectionStatus, Runner};
use serde_json::json;
use uuid::Uuid;

use crate::support::{quick_runner, shop, TestDb, TestResult};

async fn wait_for(
    t: &TestDb,
    timeout: Duration,
    done: impl Fn(&[ProjectionStatus]) -> bool,
) -> anyhow::Result<Vec<ProjectionStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses = projections::status(&t.store).await?;
        if done(&statuses) {
            return Ok(statuses);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out: {statuses:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn of(statuses: &[ProjectionStatus], projection: Projection) -> &ProjectionStatus {
    statuses
        .iter()
        .find(|s| s.projection == projection)
        .expect("every projection has a status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_stops_only_its_projection_with_a_clear_status() -> TestResult {
    let t = TestDb::new().await?;
    let mut shop = shop(3);
    t.append_workload(&mut shop, 500).await?;
    // An order event whose time is not a time: it cannot be decoded.
    let poison = t
        .store
        .append(AppendRequest {
            stream_id: format!("order-{}", Uuid::from_u128(99)),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new("OrderConfirmed", json!({"at": "yesterday"}))],
            command_id: None,
            preconditions: Vec::new(),
            guards: Vec::new(),
        })
        .await?
        .last_position;
    t.append_workload(&mut shop, 300).await?;
    let head = t.store.head().await?;

    let runner = Runner::start(t.store.clone(), quick_runner(64)).await?;
    let statuses = wait_for(&t, Duration::from_secs(20), |s| {
        s.iter()
            .all(|s| s.lag == 0 || s.state == ProjectionState::Failed)
            && s.iter()
                .filter(|s| s.state == ProjectionState::Failed)
                .count()
                == 2
    })
    .await?;
    for failed in [Projection::Orders, Projection::Sales] {
        let s = of(&statuses, failed);
        assert_eq!(s.state, ProjectionState::Failed);
        assert_eq!(s.error_position, Some(poison));
        assert_eq!(s.checkpoint, poison - 1, "applied everything before it");
        let error = s.error.as_deref().unwrap_or_default();
        assert!(error.contains("OrderConfirmed"), "{error}");
    }
    for healthy in [
        Projection::Catalog,
        Projection::Inventory,
        Projection::Carts,
    ] {
        let s = of(&statuses, healthy);
        assert_eq!(s.state, ProjectionState::Running, "{s:?}");
        assert_eq!((s.checkpoint, s.error.as_deref()), (head, None));
    }

    // Told to retry, it meets the same event and stops at it again.
    let client = t.client().await?;
    assert!(projections::retry(&client, Projection::Orders).await?);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let statuses = wait_for(&t, Duration::from_secs(10), |s| {
        of(s, Projection::Orders).state == ProjectionState::Failed
    })
    .await?;
    assert_eq!(
        of(&statuses, Projection::Orders).error_position,
        Some(poison)
    );
    runner.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_event_that_breaks_an_invariant_is_poison_too() -> TestResult {
    let t = TestDb::new().await?;
    // Stock committed from a warehouse that never had any.
    let poison = t
        .store
        .append(AppendRequest {
            stream_id: "inventory-GHOST-1".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new(
                "ReservationCommitted",
                json!({
                    "reservation_id": Uuid::from_u128(1),
                    "order_id": Uuid::from_u128(2),
                    "allocations": [{"warehouse": "main", "quantity": 3}],
                }),
            )],
            command_id: None,
            preconditions: Vec::new(),
            guards: Vec::new(),
        })
        .await?
        .last_position;
    let runner = Runner::start(t.store.clone(), quick_runner(64)).await?;
    let statuses = wait_for(&t, Duration::from_secs(10), |s| {
        s.iter()
            .filter(|s| s.state == ProjectionState::Failed)
            .count()
            == 2
    })
    .await?;
    runner.stop().await;
    for failed in [Projection::Catalog, Projection::Inventory] {
        let s = of(&statuses, failed);
        assert_eq!(s.error_position, Some(poison));
        assert!(
            s.error.as_deref().unwrap_or_default().contains("reserved"),
            "{s:?}"
        );
    }
    Ok(())
}
