//! Rebuilds: the rebuilt read models equal the live ones row for row, also when
//! events arrive during the rebuild, and an interrupted rebuild resumes.

use std::sync::Arc;
use std::time::Duration;

use eventstore::EventStore;
use projections::{Projection, RebuildOptions, RebuildPhase, Runner};
use tokio::sync::Notify;

use crate::support::{all_rows, assert_same_rows, quick_runner, shop, TestDb, TestResult};

/// Small batches, and writes every few batches: rows are folded across batches in
/// memory, written, and loaded again from the shadow by the batches after a write.
fn small_batches() -> RebuildOptions {
    RebuildOptions {
        batch_max_events: 700,
        write_max_events: 2_000,
        ..RebuildOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_read_model_equals_the_live_one_row_for_row() -> TestResult {
    let t = TestDb::new().await?;
    let mut shop = shop(7);
    t.append_workload(&mut shop, 6_000).await?;
    assert_eq!(shop.stats().refused_commands, 0, "{:?}", shop.stats());
    let client = t.client().await?;
    let types: Vec<String> = client
        .query("SELECT DISTINCT event_type FROM events ORDER BY 1", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for expected in [
        "CartAbandoned",
        "CartLineQuantityChanged",
        "CartLineRemoved",
        "CartReopened",
        "OrderCancelled",
        "OrderDelivered",
        "OrderRejected",
        "PriceSet",
        "ReservationCommitted",
        "ReservationExpired",
        "ReservationReleased",
        "StockAdjusted",
        "WarehousePrioritySet",
    ] {
        assert!(
            types.iter().any(|t| t == expected),
            "no {expected} in {types:?}"
        );
    }
    // The live models fold in batches of 97 events: rows come from loads, from the
    // cache and from the batch itself.
    let runner = Runner::start(t.store.clone(), quick_runner(97)).await?;
    t.wait_caught_up(Duration::from_secs(30)).await?;
    let client = t.client().await?;
    let live = all_rows(&client).await?;
    assert!(
        live.iter().all(|(_, rows)| !rows.is_empty()),
        "every table has rows"
    );

    // Rebuilt while the live runner keeps running.
    let mut phases = Vec::new();
    let report = projections::rebuild(&t.store, &Projection::ALL, &small_batches(), |p| {
        if phases.last() != Some(&p.phase) {
            phases.push(p.phase);
        }
    })
    .await?;
    assert_eq!(report.position, t.store.head().await?);
    assert_eq!(report.resumed_from, 0);
    assert_eq!(phases.first(), Some(&RebuildPhase::Building));
    assert_eq!(phases.last(), Some(&RebuildPhase::Done));
    assert_same_rows(&live, &all_rows(&client).await?);

    // Events keep coming while a rebuild runs: the swap catches the shadow up to the
    // live checkpoint, and the live runner goes on from the swapped-in tables.
    let appending = {
        let store = t.store.clone();
        let appends = shop.next_appends(3_000);
        tokio::spawn(async move {
            for chunk in appends.chunks(40) {
                for result in store.append_batch(chunk.to_vec()).await {
                    result?;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };
    projections::rebuild(&t.store, &Projection::ALL, &small_batches(), |_| {}).await?;
    appending.await??;
    t.wait_caught_up(Duration::from_secs(30)).await?;
    runner.stop().await;
    let live = all_rows(&client).await?;
    // With the default options every row is folded in memory and written once.
    projections::rebuild(
        &t.store,
        &Projection::ALL,
        &RebuildOptions::default(),
        |_| {},
    )
    .await?;
    assert_same_rows(&live, &all_rows(&client).await?);

    let generations: Vec<i32> = client
        .query(
            "SELECT generation FROM projection_checkpoints ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(generations, vec![3; 5], "three swaps per projection");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_resumes_where_its_shadow_got_to() -> TestResult {
    let t = TestDb::new().await?;
    let mut shop = shop(8);
    t.append_workload(&mut shop, 8_000).await?;
    t.project(quick_runner(1_000)).await?;
    let client = t.client().await?;
    let live = all_rows(&client).await?;

    // Dropped as soon as it reports progress past its first write: the shadows stay
    // behind. (Progress counts folded events; a projection that has folded
    // `write_max_events` has written at least once.)
    let halfway = Arc::new(Notify::new());
    let options = RebuildOptions {
        batch_max_events: 200,
        write_max_events: 1_000,
        ..RebuildOptions::default()
    };
    let signal = halfway.clone();
    tokio::select! {
        result = projections::rebuild(&t.store, &[Projection::Orders, Projection::Sales], &options, move |p| {
            if p.phase == RebuildPhase::Building && p.events_done >= 1_000 {
                signal.notify_one();
            }
        }) => panic!("the rebuild finished before it could be interrupted: {result:?}"),
        _ = halfway.notified() => {}
    }
    let left: i64 = client
        .query_one("SELECT min(position) FROM projection_rebuilds", &[])
        .await?
        .get(0);
    assert!(left > 0, "the interrupted rebuild left its shadows");

    let report = projections::rebuild(
        &t.store,
        &[Projection::Orders, Projection::Sales],
        &options,
        |_| {},
    )
    .await?;
    assert!(report.resumed_from >= left as u64, "{report:?}");
    assert_eq!(report.position, t.store.head().await?);
    assert_same_rows(&live, &all_rows(&client).await?);
    let shadows: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild_%'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(shadows, 0);
    Ok(())
}
