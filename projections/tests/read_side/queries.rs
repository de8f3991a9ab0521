//! Read-your-writes and the query functions' paging and validation.

use std::time::Duration;

use projections::orders::{self, OrderFilter, OrderSort};
use projections::{CheckpointWatch, PageRequest, Projection, ProjectionError, Runner};
use uuid::Uuid;

use crate::support::{quick_runner, shop, TestDb, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_can_wait_until_its_read_model_has_the_callers_write() -> TestResult {
    let t = TestDb::new().await?;
    let watch = CheckpointWatch::new(t.store.pool().clone());
    let runner = Runner::start(t.store.clone(), quick_runner(500)).await?;
    let mut shop = shop(4);
    let appends = shop.next_appends(300);
    let mut written = 0;
    for result in eventstore::EventStore::append_batch(&t.store, appends).await {
        written = result?.last_position;
    }
    assert!(
        watch
            .wait_until(Projection::Orders, written, Duration::from_secs(10))
            .await
    );
    assert!(watch
        .position(Projection::Orders)
        .is_some_and(|p| p >= written));
    let client = t.client().await?;
    let page = orders::list(
        &client,
        &OrderFilter::default(),
        OrderSort::Newest,
        PageRequest::default(),
    )
    .await?;
    assert!(!page.items.is_empty());
    // A position nobody wrote yet is not reached; the wait is bounded.
    let started = std::time::Instant::now();
    assert!(
        !watch
            .wait_until(
                Projection::Orders,
                written + 1_000,
                Duration::from_millis(200)
            )
            .await
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    runner.stop().await;
    Ok(())
}

#[tokio::test]
async fn pages_do_not_overlap_and_bad_queries_are_refused() -> TestResult {
    let t = TestDb::new().await?;
    let mut shop = shop(6);
    t.append_workload(&mut shop, 1_500).await?;
    t.project(quick_runner(500)).await?;
    let client = t.client().await?;

    let all = orders::list(
        &client,
        &OrderFilter::default(),
        OrderSort::Oldest,
        PageRequest::new(0, 500),
    )
    .await?;
    assert!(all.items.len() > 6, "{} orders", all.items.len());
    let mut paged = Vec::new();
    let mut offset = 0;
    loop {
        let page = orders::list(
            &client,
            &OrderFilter::default(),
            OrderSort::Oldest,
            PageRequest::new(offset, 3),
        )
        .await?;
        paged.extend(page.items.iter().map(|o| o.order_id));
        offset += 3;
        if !page.has_more {
            break;
        }
    }
    let ids: Vec<Uuid> = all.items.iter().map(|o| o.order_id).collect();
    assert_eq!(paged, ids);
    assert!(all
        .items
        .windows(2)
        .all(|w| w[0].placed_at <= w[1].placed_at));

    let delivered = orders::list(
        &client,
        &OrderFilter {
            status: Some("delivered".into()),
            ..OrderFilter::default()
        },
        OrderSort::TotalDesc,
        PageRequest::default(),
    )
    .await?;
    assert!(delivered
        .items
        .iter()
        .all(|o| o.status == "delivered" && o.delivered_at.is_some()));
    assert!(delivered
        .items
        .windows(2)
        .all(|w| w[0].total_minor >= w[1].total_minor));

    let bad_status = OrderFilter {
        status: Some("lost".into()),
        ..OrderFilter::default()
    };
    assert!(matches!(
        orders::list(
            &client,
            &bad_status,
            OrderSort::Newest,
            PageRequest::default()
        )
        .await,
        Err(ProjectionError::InvalidQuery {
            field: "status",
            ..
        })
    ));
    assert!(matches!(
        orders::list(
            &client,
            &OrderFilter::default(),
            OrderSort::Newest,
            PageRequest::new(0, 0)
        )
        .await,
        Err(ProjectionError::InvalidQuery { field: "limit", .. })
    ));
    Ok(())
}
