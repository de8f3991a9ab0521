//! The contract every event store keeps, as test cases. Each case takes a fresh,
//! empty store; [`crate::conformance_suite!`] turns them into `#[tokio::test]`s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::hash::{expected_hash, verify_chain, GENESIS_HASH};
use crate::{
    AppendRequest, CanonicalJson, Direction, EventStore, ExpectedVersion, Metadata, NewEvent,
    Precondition, StoreError, Subscription, SubscriptionOptions, APPEND_MAX_PRECONDITIONS,
};

/// Generates one `#[tokio::test]` per conformance case. `$make` is an async function
/// returning `(Arc<dyn EventStore>, guard)`; the guard lives as long as the test.
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            appending_to_a_new_stream_assigns_gapless_positions_and_versions,
            no_stream_expectation_conflicts_on_an_existing_stream,
            stream_exists_expectation_conflicts_on_a_missing_stream,
            exact_expectation_appends_only_at_that_version,
            any_expectation_always_appends,
            repeating_a_command_id_returns_the_first_result,
            repeating_a_command_id_with_any_expectation_writes_nothing,
            reusing_a_command_id_with_other_events_is_refused,
            a_command_id_reused_on_a_moved_stream_is_a_conflict,
            duplicate_event_id_is_refused_and_nothing_is_written,
            reading_a_stream_forwards_and_backwards_with_paging,
            reading_the_log_from_a_position_with_paging,
            reading_the_log_by_category,
            reading_the_log_matching_a_filter,
            envelope_round_trips_every_field,
            data_given_as_canonical_text_is_stored_as_its_value_would_be,
            hash_chain_links_every_event,
            subscription_catches_up_then_follows_live_without_gap_or_duplicate,
            category_subscription_sees_only_its_category,
            bad_input_is_refused_and_writes_nothing,
            concurrent_exact_appends_admit_one_winner_per_version,
            concurrent_version_reads_see_each_stream_as_of_the_call,
            append_batch_decides_each_append_in_order,
            preconditions_admit_an_append_only_while_the_streams_read_stand_still,
            concurrent_writers_and_subscribers_see_one_gapless_order,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make().await;
                $crate::testing::conformance::$case(store).await;
            }
        )*
    };
}

type Store = Arc<dyn EventStore>;

fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::new(event_type, json!({ "n": n }))
}

fn append(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream_id: stream.to_owned(),
        expected,
        events,
        command_id: None,
        preconditions: Vec::new(),
        guards: Vec::new(),
    }
}

async fn whole_log(store: &Store) -> Vec<crate::RecordedEvent> {
    store
        .read_all(0, 1_000_000, None)
        .await
        .expect("read the log")
}

pub async fn appending_to_a_new_stream_assigns_gapless_positions_and_versions(store: Store) {
    let first = store
        .append(append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![event("A", 1), event("B", 2)],
        ))
        .await
        .expect("first append");
    assert_eq!(
        (
            first.first_position,
            first.last_position,
            first.stream_version
        ),
        (1, 2, 2)
    );
    let second = store
        .append(append(
            "cart-1",
            ExpectedVersion::NoStream,
            vec![event("C", 3)],
        ))
        .await
        .expect("second append");
    assert_eq!(
        (
            second.first_position,
            second.last_position,
            second.stream_version
        ),
        (3, 3, 1)
    );
    let log = whole_log(&store).await;
    let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![1, 2, 3]);
    let versions: Vec<(&str, u64)> = log
        .iter()
        .map(|e| (e.stream_id.as_str(), e.version))
        .collect();
    assert_eq!(
        versions,
        vec![("order-1", 1), ("order-1", 2), ("cart-1", 1)]
    );
    assert_eq!(store.head().await.expect("head"), 3);
    assert_eq!(store.stream_version("order-1").await.expect("version"), 2);
    assert_eq!(store.stream_version("order-404").await.expect("version"), 0);
}

pub async fn no_stream_expectation_conflicts_on_an_existing_stream(store: Store) {
    store
        .append(append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![event("A", 1), event("A", 2)],
        ))
        .await
        .expect("create");
    let err = store
        .append(append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![event("A", 3)],
        ))
        .await
        .expect_err("stream exists");
    assert_eq!(
        err,
        StoreError::WrongExpectedVersion {
            stream_id: "order-1".into(),
            expected: ExpectedVersion::NoStream,
            actual: 2
        }
    );
}

pub async fn stream_exists_expectation_conflicts_on_a_missing_stream(store: Store) {
    let err = store
        .append(append(
            "order-1",
            ExpectedVersion::StreamExists,
            vec![event("A", 1)],
        ))
        .await
        .expect_err("no such stream");
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 0, .. }),
        "{err:?}"
    );
    store
        .append(append("order-1", ExpectedVersion::Any, vec![event("A", 1)]))
        .await
        .expect("create");
    store
        .append(append(
            "order-1",
            ExpectedVersion::StreamExists,
            vec![event("A", 2)],
        ))
        .await
        .expect("stream exists now");
    assert_eq!(store.stream_version("order-1").await.expect("version"), 2);
}

pub async fn exact_expectation_appends_only_at_that_version(store: Store) {
    store
        .append(append(
            "order-1",
            ExpectedVersion::Exact(0),
            vec![event("A", 1)],
        ))
        .await
        .expect("exact 0 on a new stream");
    let ok = store
        .append(append(
            "order-1",
            ExpectedVersion::Exact(1),
            vec![event("A", 2)],
        ))
        .await
        .expect("exact 1");
    assert_eq!(ok.stream_version, 2);
    for stale in [0, 1, 3, 99] {
        let err = store
            .append(append(
                "order-1",
                ExpectedVersion::Exact(stale),
                vec![event("A", 9)],
            ))
            .await
            .expect_err("stale version");
        assert_eq!(
            err,
            StoreError::WrongExpectedVersion {
                stream_id: "order-1".into(),
                expected: ExpectedVersion::Exact(stale),
                actual: 2
            }
        );
    }
    assert_eq!(
        store.head().await.expect("head"),
        2,
        "conflicts wrote nothing"
    );
}

pub async fn any_expectation_always_appends(store: Store) {
    for i in 0..3 {
        let r = store
            .append(append("order-1", ExpectedVersion::Any, vec![event("A", i)]))
            .await
            .expect("any");
        assert_eq!(r.stream_version, i + 1);
    }
}

pub async fn repeating_a_command_id_returns_the_first_result(store: Store) {
    let command_id = Uuid::new_v4();
    let mut request = append(
        "order-1",
        ExpectedVersion::NoStream,
        vec![event("A", 1), event("B", 2)],
    );
    request.command_id = Some(command_id);
    let first = store.append(request.clone()).await.expect("first");
    store
        .append(append("order-2", ExpectedVersion::Any, vec![event("X", 0)]))
        .await
        .expect("another stream");
    // A retry mints fresh event ids but carries the same command: same answer.
    let mut retry = request.clone();
    for e in &mut retry.events {
        e.event_id = Uuid::new_v4();
    }
    let again = store.append(retry).await.expect("repeat");
    assert_eq!(first, again);
    assert_eq!(
        store.head().await.expect("head"),
        3,
        "the repeat wrote nothing"
    );
    assert_eq!(store.stream_version("order-1").await.expect("version"), 2);
}

pub async fn repeating_a_command_id_with_any_expectation_writes_nothing(store: Store) {
    let command_id = Uuid::new_v4();
    let mut request = append("order-1", ExpectedVersion::Any, vec![event("A", 1)]);
    request.command_id = Some(command_id);
    let first = store.append(request.clone()).await.expect("first");
    // The repeat arrives in one batch with other appends, which must still succeed.
    let mut other = append("order-2", ExpectedVersion::Any, vec![event("B", 1)]);
    other.command_id = Some(Uuid::new_v4());
    let results = store
        .append_batch(vec![
            other,
            request.clone(),
            append("order-3", ExpectedVersion::NoStream, vec![event("C", 1)]),
        ])
        .await;
    assert_eq!(results[1], Ok(first));
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert_eq!(store.stream_version("order-1").await.expect("version"), 1);
    assert_eq!(store.head().await.expect("head"), 3);
}

pub async fn reusing_a_command_id_with_other_events_is_refused(store: Store) {
    let command_id = Uuid::new_v4();
    let mut request = append("order-1", ExpectedVersion::Any, vec![event("A", 1)]);
    request.command_id = Some(command_id);
    store.append(request).await.expect("first");
    let mut other = append("order-1", ExpectedVersion::Any, vec![event("A", 2)]);
    other.command_id = Some(command_id);
    let err = store.append(other).await.expect_err("other events");
    assert_eq!(err, StoreError::CommandIdReused { command_id });
    let mut other_stream = append("order-2", ExpectedVersion::Any, vec![event("A", 1)]);
    other_stream.command_id = Some(command_id);
    let err = store.append(other_stream).await.expect_err("other stream");
    assert_eq!(err, StoreError::CommandIdReused { command_id });
    assert_eq!(store.head().await.expect("head"), 1);
}

/// A writer that decided on a state the stream has moved past hears of the conflict
/// first, even when its command id was used since (by another writer with that state,
/// or by itself before a crash): it loads the stream, decides again, and finds the
/// first use there.
pub async fn a_command_id_reused_on_a_moved_stream_is_a_conflict(store: Store) {
    let command_id = Uuid::new_v4();
    let mut first = append("order-1", ExpectedVersion::NoStream, vec![event("A", 1)]);
    first.command_id = Some(command_id);
    store.append(first).await.expect("first");
    store
        .append(append(
            "order-1",
            ExpectedVersion::Exact(1),
            vec![event("B", 1)],
        ))
        .await
        .expect("second");
    let mut stale = append("order-1", ExpectedVersion::NoStream, vec![event("A", 2)]);
    stale.command_id = Some(command_id);
    let err = store.append(stale).await.expect_err("stale");
    assert_eq!(
        err,
        StoreError::WrongExpectedVersion {
            stream_id: "order-1".into(),
            expected: ExpectedVersion::NoStream,
            actual: 2,
        }
    );
    let mut current = append("order-1", ExpectedVersion::Exact(2), vec![event("A", 2)]);
    current.command_id = Some(command_id);
    let err = store.append(current).await.expect_err("current");
    assert_eq!(err, StoreError::CommandIdReused { command_id });
    assert_eq!(store.head().await.expect("head"), 2);
}

pub async fn duplicate_event_id_is_refused_and_nothing_is_written(store: Store) {
    let first = event("A", 1);
    let event_id = first.event_id;
    store
        .append(append("order-1", ExpectedVersion::Any, vec![first.clone()]))
        .await
        .expect("first");
    let err = store
        .append(append(
            "order-2",
            ExpectedVersion::Any,
            vec![event("B", 1), first.clone()],
        ))
        .await
        .expect_err("event id reused");
    assert_eq!(err, StoreError::DuplicateEventId { event_id });
    let twice = event("C", 1);
    let err = store
        .append(append(
            "order-3",
            ExpectedVersion::Any,
            vec![twice.clone(), twice.clone()],
        ))
        .await
        .expect_err("event id twice in one append");
    assert_eq!(
        err,
        StoreError::DuplicateEventId {
            event_id: twice.event_id
        }
    );
    assert_eq!(store.head().await.expect("head"), 1);
    assert_eq!(store.stream_version("order-2").await.expect("version"), 0);
    // The store still takes good appends afterwards.
    let next = store
        .append(append(
            "order-2",
            ExpectedVersion::NoStream,
            vec![event("B", 1)],
        ))
        .await
        .expect("next append");
    assert_eq!(next.first_position, 2);
}

pub async fn reading_a_stream_forwards_and_backwards_with_paging(store: Store) {
    let events: Vec<NewEvent> = (1..=10).map(|i| event("A", i)).collect();
    store
        .append(append("order-1", ExpectedVersion::NoStream, events))
        .await
        .expect("append");
    store
        .append(append(
            "order-2",
            ExpectedVersion::NoStream,
            vec![event("B", 1)],
        ))
        .await
        .expect("append");
    let versions =
        |evs: Vec<crate::RecordedEvent>| evs.iter().map(|e| e.version).collect::<Vec<_>>();
    let page = store
        .read_stream("order-1", 1, Direction::Forward, 4)
        .await
        .expect("read");
    assert_eq!(versions(page), vec![1, 2, 3, 4]);
    let page = store
        .read_stream("order-1", 5, Direction::Forward, 4)
        .await
        .expect("read");
    assert_eq!(versions(page), vec![5, 6, 7, 8]);
    let page = store
        .read_stream("order-1", 9, Direction::Forward, 4)
        .await
        .expect("read");
    assert_eq!(versions(page), vec![9, 10]);
    let page = store
        .read_stream("order-1", 11, Direction::Forward, 4)
        .await
        .expect("read");
    assert!(page.is_empty());
    let page = store
        .read_stream("order-1", u64::MAX, Direction::Backward, 3)
        .await
        .expect("read");
    assert_eq!(versions(page), vec![10, 9, 8]);
    let page = store
        .read_stream("order-1", 2, Direction::Backward, 3)
        .await
        .expect("read");
    assert_eq!(versions(page), vec![2, 1]);
    let missing = store
        .read_stream("order-404", 1, Direction::Forward, 10)
        .await
        .expect("read");
    assert!(missing.is_empty());
    let data: Vec<u64> = store
        .read_stream("order-1", 1, Direction::Forward, 100)
        .await
        .expect("read")
        .iter()
        .map(|e| e.data["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(data, (1..=10).collect::<Vec<_>>());
}

pub async fn reading_the_log_from_a_position_with_paging(store: Store) {
    for i in 0..25u64 {
        store
            .append(append(
                &format!("order-{}", i % 4),
                ExpectedVersion::Any,
                vec![event("A", i)],
            ))
            .await
            .expect("append");
    }
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = store.read_all(after, 7, None).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().map(|e| e.position).expect("non-empty");
        seen.extend(page.into_iter().map(|e| e.position));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    let tail = store.read_all(20, 100, None).await.expect("tail");
    assert_eq!(
        tail.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![21, 22, 23, 24, 25]
    );
}

pub async fn reading_the_log_by_category(store: Store) {
    let streams = [
        "order-1",
        "cart-1",
        "order-2",
        "orderline-1",
        "cart-2",
        "order-1",
    ];
    for (i, stream) in streams.iter().enumerate() {
        store
            .append(append(
                stream,
                ExpectedVersion::Any,
                vec![event("A", i as u64)],
            ))
            .await
            .expect("append");
    }
    let orders = store.read_all(0, 100, Some("order")).await.expect("orders");
    assert_eq!(
        orders.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 3, 6]
    );
    assert!(orders.iter().all(|e| e.category() == "order"));
    let page = store.read_all(1, 1, Some("order")).await.expect("page");
    assert_eq!(page.iter().map(|e| e.position).collect::<Vec<_>>(), vec![3]);
    let carts = store.read_all(0, 100, Some("cart")).await.expect("carts");
    assert_eq!(
        carts.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![2, 5]
    );
    assert!(store
        .read_all(0, 100, Some("nothing"))
        .await
        .expect("none")
        .is_empty());
}

pub async fn reading_the_log_matching_a_filter(store: Store) {
    // Positions 1..=8; the filter wants checkouts, and cancellations anywhere.
    let appended = [
        ("checkout-1", "Started"),
        ("cart-1", "Cancelled"),
        ("order-1", "Placed"),
        ("checkout-2", "Started"),
        ("order-1", "Cancelled"),
        ("cart-2", "Added"),
        ("checkouts-9", "Started"),
        ("checkout-1", "Completed"),
    ];
    for (i, (stream, event_type)) in appended.iter().enumerate() {
        store
            .append(append(
                stream,
                ExpectedVersion::Any,
                vec![event(event_type, i as u64)],
            ))
            .await
            .expect("append");
    }
    let filter = crate::LogFilter {
        categories: &["checkout"],
        event_types: &["Cancelled"],
    };
    let read = |after: u64, limit: usize, window: u64| {
        let store = store.clone();
        async move {
            let (events, looked) = store
                .read_all_matching(after, limit, &filter, window)
                .await
                .expect("read");
            (
                events.iter().map(|e| e.position).collect::<Vec<_>>(),
                looked,
            )
        }
    };
    assert_eq!(read(0, 100, 1_000).await, (vec![1, 2, 4, 5, 8], 8));
    // A full page stops at its last match: the rest is read next time.
    assert_eq!(read(0, 2, 1_000).await, (vec![1, 2], 2));
    assert_eq!(read(2, 2, 1_000).await, (vec![4, 5], 5));
    // A window without matches is passed over whole.
    assert_eq!(read(5, 100, 2).await, (vec![], 7));
    assert_eq!(read(7, 100, 2).await, (vec![8], 8));
    // Nothing new: the read looks up to where it started.
    assert_eq!(read(8, 100, 1_000).await, (vec![], 8));
    assert_eq!(read(0, 0, 1_000).await, (vec![], 0));
}

pub async fn envelope_round_trips_every_field(store: Store) {
    let metadata = Metadata {
        command_id: Some(Uuid::new_v4()),
        correlation_id: Some(Uuid::new_v4()),
        causation_id: Some(Uuid::new_v4()),
        actor: Some("customer:42".into()),
        custom: json!({"ip": "127.0.0.1", "nested": {"b": 2, "a": [1, 2.5, null]}}),
    };
    let data = json!({
        "title": "Caf\u{e9} \"quoted\" \n line",
        "price": {"minor": 1999, "currency": "EUR"},
        "big": 9_007_199_254_740_993u64,
        "ratio": 0.125,
        "tags": ["a", "b"],
        "none": null,
        "yes": true
    });
    let proposed = NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "ProductCreated".into(),
        schema_version: 3,
        data: data.clone().into(),
        metadata: metadata.clone(),
    };
    let before = chrono::Utc::now() - chrono::Duration::seconds(60);
    store
        .append(append(
            "product-1",
            ExpectedVersion::NoStream,
            vec![proposed.clone()],
        ))
        .await
        .expect("append");
    let after = chrono::Utc::now() + chrono::Duration::seconds(60);
    let stored = store
        .read_stream("product-1", 1, Direction::Forward, 1)
        .await
        .expect("read")
        .pop()
        .expect("one event");
    assert_eq!(stored.position, 1);
    assert_eq!(stored.stream_id, "product-1");
    assert_eq!(stored.version, 1);
    assert_eq!(stored.event_id, proposed.event_id);
    assert_eq!(stored.event_type, "ProductCreated");
    assert_eq!(stored.schema_version, 3);
    assert_eq!(stored.data, data);
    assert_eq!(stored.metadata, metadata);
    assert!(stored.recorded_at > before && stored.recorded_at < after);
    let from_log = whole_log(&store).await.pop().expect("one event");
    assert_eq!(from_log, stored);
}

pub async fn data_given_as_canonical_text_is_stored_as_its_value_would_be(store: Store) {
    let data = json!({
        "title": "Caf\u{e9} \"quoted\"",
        "lines": [{"sku": "A", "qty": 2}, {"qty": 1, "sku": "B"}],
        "ratio": 0.125,
        "zero": -0.0,
        "none": null
    });
    let as_value = NewEvent::new("OrderPlaced", data.clone());
    let as_text = NewEvent::new(
        "OrderPlaced",
        CanonicalJson::of(&data).expect("a value always writes"),
    );
    assert_eq!(as_value.data, as_text.data, "equal as canonical text");
    for (stream, proposed) in [("order-1", as_value), ("order-2", as_text)] {
        store
            .append(append(stream, ExpectedVersion::NoStream, vec![proposed]))
            .await
            .expect("append");
    }
    let log = whole_log(&store).await;
    assert_eq!(log.len(), 2);
    // The value form keeps `-0.0` as the writer gave it where the store holds the
    // value itself (memory); the text holds `0.0`. Compared in canonical form, both
    // are the same data, and the chain covers the same bytes for both.
    assert_eq!(
        crate::hash::canonical_json(&log[0].data),
        crate::hash::canonical_json(&log[1].data)
    );
    assert_eq!(log[1].data["lines"][1]["sku"], "B");
    assert_eq!(log[1].data["zero"], json!(0.0));
    verify_chain(GENESIS_HASH, &log).expect("the chain holds");
}

pub async fn hash_chain_links_every_event(store: Store) {
    for i in 0..12u64 {
        let events = (0..=(i % 3)).map(|j| event("A", i * 10 + j)).collect();
        store
            .append(append(
                &format!("order-{}", i % 5),
                ExpectedVersion::Any,
                events,
            ))
            .await
            .expect("append");
    }
    let log = whole_log(&store).await;
    assert!(log.len() > 12);
    let last = verify_chain(GENESIS_HASH, &log).expect("chain intact");
    assert_eq!(last, log.last().expect("non-empty").hash);
    let mut previous = GENESIS_HASH;
    for e in &log {
        assert_eq!(
            e.hash,
            expected_hash(&previous, e),
            "position {}",
            e.position
        );
        previous = e.hash;
    }
    // Any change to a stored field breaks the chain at that event.
    let mut tampered = log.clone();
    tampered[5].data = json!({"n": 999_999});
    let broken = verify_chain(GENESIS_HASH, &tampered).expect_err("tampered");
    assert_eq!(broken.position, log[5].position);
}

pub async fn subscription_catches_up_then_follows_live_without_gap_or_duplicate(store: Store) {
    for i in 0..50u64 {
        store
            .append(append(
                &format!("order-{}", i % 3),
                ExpectedVersion::Any,
                vec![event("A", i)],
            ))
            .await
            .expect("append");
    }
    let options = SubscriptionOptions {
        batch_max_events: 16,
        poll_interval: Duration::from_millis(200),
        ..SubscriptionOptions::default()
    };
    let mut subscription = Subscription::new(store.clone(), 0, options);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 50..120u64 {
                store
                    .append(append(
                        &format!("order-{}", i % 3),
                        ExpectedVersion::Any,
                        vec![event("A", i)],
                    ))
                    .await
                    .expect("live append");
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 120 {
        let batch = tokio::time::timeout(Duration::from_secs(20), subscription.next_batch())
            .await
            .expect("subscription kept up")
            .expect("batch");
        assert!(!batch.is_empty() && batch.len() <= 16);
        seen.extend(batch.into_iter().map(|e| e.position));
    }
    writer.await.expect("writer");
    assert_eq!(seen, (1..=120).collect::<Vec<_>>());
    assert_eq!(subscription.position(), 120);
    assert!(subscription.try_next_batch().await.expect("read").is_none());
}

pub async fn category_subscription_sees_only_its_category(store: Store) {
    let options = SubscriptionOptions {
        category: Some("cart".into()),
        poll_interval: Duration::from_millis(200),
        ..SubscriptionOptions::default()
    };
    let mut subscription = Subscription::new(store.clone(), 0, options);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..40u64 {
                let stream = if i % 4 == 0 {
                    format!("cart-{i}")
                } else {
                    format!("order-{i}")
                };
                store
                    .append(append(&stream, ExpectedVersion::Any, vec![event("A", i)]))
                    .await
                    .expect("append");
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let batch = tokio::time::timeout(Duration::from_secs(20), subscription.next_batch())
            .await
            .expect("subscription kept up")
            .expect("batch");
        seen.extend(batch);
    }
    writer.await.expect("writer");
    assert!(seen.iter().all(|e| e.category() == "cart"));
    let numbers: Vec<u64> = seen
        .iter()
        .map(|e| e.data["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(numbers, (0..40).step_by(4).collect::<Vec<_>>());
}

pub async fn bad_input_is_refused_and_writes_nothing(store: Store) {
    store
        .append(append("order-1", ExpectedVersion::Any, vec![event("A", 0)]))
        .await
        .expect("seed");
    let mut bad_metadata = event("A", 1);
    bad_metadata.metadata.custom = json!(["not", "an", "object"]);
    let mut nul_data = event("A", 1);
    nul_data.data = json!({"name": "a\u{0}b"}).into();
    let mut nul_text = event("A", 1);
    nul_text.data = CanonicalJson::of(&json!({"name": "a\u{0}b"}))
        .expect("writes")
        .into();
    let mut empty_type = event("A", 1);
    empty_type.event_type = String::new();
    let mut huge = event("A", 1);
    huge.data = json!({"blob": "x".repeat(crate::EVENT_DATA_MAX_BYTES + 1)}).into();
    let cases: Vec<(&str, AppendRequest)> = vec![
        (
            "empty append",
            append("order-1", ExpectedVersion::Any, vec![]),
        ),
        (
            "empty stream id",
            append("", ExpectedVersion::Any, vec![event("A", 1)]),
        ),
        (
            "over-long stream id",
            append(
                &format!("order-{}", "x".repeat(300)),
                ExpectedVersion::Any,
                vec![event("A", 1)],
            ),
        ),
        (
            "stream id with spaces",
            append("order 1", ExpectedVersion::Any, vec![event("A", 1)]),
        ),
        (
            "custom metadata that is not an object",
            append("order-1", ExpectedVersion::Any, vec![bad_metadata]),
        ),
        (
            "absurd expected version",
            append(
                "order-1",
                ExpectedVersion::Exact(u64::MAX),
                vec![event("A", 1)],
            ),
        ),
        (
            "expected version past bigint",
            append(
                "order-1",
                ExpectedVersion::Exact(i64::MAX as u64 + 1),
                vec![event("A", 1)],
            ),
        ),
        (
            "NUL in data",
            append("order-1", ExpectedVersion::Any, vec![nul_data]),
        ),
        (
            "NUL in data given as canonical text",
            append("order-1", ExpectedVersion::Any, vec![nul_text]),
        ),
        (
            "empty event type",
            append("order-1", ExpectedVersion::Any, vec![empty_type]),
        ),
        (
            "oversized event",
            append("order-1", ExpectedVersion::Any, vec![huge]),
        ),
    ];
    for (what, request) in cases {
        let err = store.append(request).await.expect_err(what);
        assert!(
            matches!(err, StoreError::InvalidRequest { .. }),
            "{what}: {err:?}"
        );
    }
    assert!(ExpectedVersion::exact_from_i128(-1).is_err());
    assert!(ExpectedVersion::exact_from_i128(i128::from(i64::MAX) + 1).is_err());
    assert_eq!(
        ExpectedVersion::exact_from_i128(7).ok(),
        Some(ExpectedVersion::Exact(7))
    );
    assert_eq!(store.head().await.expect("head"), 1, "nothing was written");
    assert_eq!(store.stream_version("order-1").await.expect("version"), 1);
}

pub async fn append_batch_decides_each_append_in_order(store: Store) {
    let results = store
        .append_batch(vec![
            append(
                "inventory-A",
                ExpectedVersion::Exact(0),
                vec![event("R", 1)],
            ),
            append(
                "inventory-A",
                ExpectedVersion::Exact(1),
                vec![event("R", 2), event("R", 3)],
            ),
            append(
                "inventory-A",
                ExpectedVersion::Exact(1),
                vec![event("R", 99)],
            ),
            append("", ExpectedVersion::Any, vec![event("R", 98)]),
            append(
                "inventory-B",
                ExpectedVersion::NoStream,
                vec![event("R", 4)],
            ),
            append(
                "inventory-A",
                ExpectedVersion::Exact(3),
                vec![event("R", 5)],
            ),
        ])
        .await;
    assert_eq!(results.len(), 6);
    let ok = |i: usize| results[i].clone().expect("accepted");
    assert_eq!((ok(0).first_position, ok(0).stream_version), (1, 1));
    assert_eq!(
        (
            ok(1).first_position,
            ok(1).last_position,
            ok(1).stream_version
        ),
        (2, 3, 3)
    );
    assert!(matches!(
        results[2],
        Err(StoreError::WrongExpectedVersion { actual: 3, .. })
    ));
    assert!(matches!(results[3], Err(StoreError::InvalidRequest { .. })));
    assert_eq!((ok(4).first_position, ok(4).stream_version), (4, 1));
    assert_eq!((ok(5).first_position, ok(5).stream_version), (5, 4));
    let numbers: Vec<u64> = whole_log(&store)
        .await
        .iter()
        .map(|e| e.data["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5]);
}

/// An append that read other streams (a cart line priced from a product) is written
/// only while each of them is at the version read, also against appends earlier in
/// the same batch; a refusal writes nothing and names the stream that moved.
pub async fn preconditions_admit_an_append_only_while_the_streams_read_stand_still(store: Store) {
    let reading = |version: u64, n: u64| {
        let mut request = append("cart-1", ExpectedVersion::Any, vec![event("L", n)]);
        request.preconditions = vec![
            Precondition {
                stream_id: "product-1".into(),
                version,
            },
            // A stream that does not exist is at version 0.
            Precondition {
                stream_id: "product-none".into(),
                version: 0,
            },
        ];
        request
    };
    store
        .append(append(
            "product-1",
            ExpectedVersion::NoStream,
            vec![event("P", 1)],
        ))
        .await
        .expect("product");
    let ok = store
        .append(reading(1, 2))
        .await
        .expect("product still at 1");
    assert_eq!((ok.first_position, ok.stream_version), (2, 1));

    let err = store
        .append(reading(0, 3))
        .await
        .expect_err("read before the product existed");
    assert_eq!(
        err,
        StoreError::StreamMoved {
            stream_id: "product-1".into(),
            read: 0,
            actual: 1
        }
    );
    // In one batch: the product moves, and the append that read it before is
    // refused; one that read it after is written.
    let results = store
        .append_batch(vec![
            append("product-1", ExpectedVersion::Exact(1), vec![event("P", 4)]),
            reading(1, 5),
            reading(2, 6),
        ])
        .await;
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        matches!(&results[1], Err(StoreError::StreamMoved { stream_id, read: 1, actual: 2 }) if stream_id == "product-1"),
        "{results:?}"
    );
    assert_eq!(results[2].clone().expect("read at 2").stream_version, 2);
    let numbers: Vec<u64> = whole_log(&store)
        .await
        .iter()
        .map(|e| e.data["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(numbers, vec![1, 2, 4, 6], "refused appends wrote nothing");

    let mut too_many = append("cart-1", ExpectedVersion::Any, vec![event("L", 7)]);
    too_many.preconditions = (0..=APPEND_MAX_PRECONDITIONS)
        .map(|i| Precondition {
            stream_id: format!("product-{i}"),
            version: 0,
        })
        .collect();
    assert!(matches!(
        store.append(too_many).await,
        Err(StoreError::InvalidRequest {
            field: "preconditions",
            ..
        })
    ));
    let mut bad_stream = reading(2, 8);
    bad_stream.preconditions[0].stream_id = String::new();
    assert!(matches!(
        store.append(bad_stream).await,
        Err(StoreError::InvalidRequest { .. })
    ));
    assert_eq!(store.head().await.expect("head"), 4);
}

pub async fn concurrent_exact_appends_admit_one_winner_per_version(store: Store) {
    let mut tasks = Vec::new();
    for writer in 0..24u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(append(
                    "inventory-SKU1",
                    ExpectedVersion::Exact(0),
                    vec![event("A", writer)],
                ))
                .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(r) => {
                won += 1;
                assert_eq!(r.stream_version, 1);
            }
            Err(StoreError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, 1),
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.head().await.expect("head"), 1);
}

/// Many version reads at once, over many streams (some read twice, some with no
/// events): each gets its own stream's version, and a read made after an append
/// returned sees that append, while other writers append to other streams.
pub async fn concurrent_version_reads_see_each_stream_as_of_the_call(store: Store) {
    const STREAMS: u64 = 40;
    const ROUNDS: u64 = 5;
    let mut writers = Vec::new();
    for s in 0..STREAMS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let stream = format!("order-v{s}");
            for round in 0..ROUNDS {
                // Streams grow at different rates: stream `s` takes `s % 3 + 1` events
                // a round.
                let events = (0..s % 3 + 1).map(|n| event("A", round * 10 + n)).collect();
                let expected = round * (s % 3 + 1);
                let written = store
                    .append(append(&stream, ExpectedVersion::Exact(expected), events))
                    .await
                    .expect("append");
                let (read, again) =
                    tokio::join!(store.stream_version(&stream), store.stream_version(&stream));
                assert_eq!(read.expect("version"), written.stream_version, "{stream}");
                assert_eq!(again.expect("version"), written.stream_version, "{stream}");
            }
        }));
    }
    let missing = futures::future::join_all((0..STREAMS).map(|s| {
        let store = store.clone();
        async move { store.stream_version(&format!("order-none{s}")).await }
    }));
    for version in missing.await {
        assert_eq!(version.expect("version of a stream with no events"), 0);
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let versions = futures::future::join_all((0..STREAMS).map(|s| {
        let store = store.clone();
        async move { store.stream_version(&format!("order-v{s}")).await }
    }))
    .await;
    for (s, version) in versions.into_iter().enumerate() {
        assert_eq!(version.expect("version"), ROUNDS * (s as u64 % 3 + 1));
    }
}

/// Appends guarded by request keys, on a store whose record of kept answers holds
/// `answered` (and no other key): an append carrying that key is refused with the
/// key and writes nothing, whether alone or in a batch beside appends that are
/// written; an append whose keys have no answer is written.
pub async fn guarded_appends_are_refused_once_a_key_has_an_answer(store: Store, answered: Uuid) {
    let fresh = Uuid::new_v4();
    let guarded = |stream: &str, expected, guards: Vec<Uuid>| AppendRequest {
        guards,
        ..append(stream, expected, vec![event("StockReserved", 1)])
    };
    let written = store
        .append(guarded(
            "inventory-A",
            ExpectedVersion::NoStream,
            vec![fresh],
        ))
        .await
        .expect("a key without an answer");
    assert_eq!(written.stream_version, 1);

    let refused = store
        .append(guarded(
            "inventory-A",
            ExpectedVersion::Exact(1),
            vec![fresh, answered],
        ))
        .await
        .expect_err("a key with an answer");
    assert_eq!(
        refused,
        StoreError::AlreadyAnswered {
            keys: vec![answered]
        }
    );
    assert_eq!(
        store.stream_version("inventory-A").await.expect("version"),
        1
    );
    assert_eq!(store.head().await.expect("head"), 1);

    // A guard is checked before the expected version: the request was answered, so
    // whatever else the append would meet does not matter.
    let refused = store
        .append(guarded(
            "inventory-A",
            ExpectedVersion::NoStream,
            vec![answered],
        ))
        .await
        .expect_err("answered");
    assert!(
        matches!(refused, StoreError::AlreadyAnswered { .. }),
        "{refused:?}"
    );

    let results = store
        .append_batch(vec![
            guarded("inventory-B", ExpectedVersion::NoStream, vec![answered]),
            guarded(
                "inventory-C",
                ExpectedVersion::NoStream,
                vec![Uuid::new_v4()],
            ),
            append(
                "inventory-D",
                ExpectedVersion::NoStream,
                vec![event("StockReserved", 2)],
            ),
        ])
        .await;
    assert!(
        matches!(&results[0], Err(StoreError::AlreadyAnswered { keys }) if keys == &vec![answered]),
        "{:?}",
        results[0]
    );
    assert_eq!(results[1].as_ref().expect("C is written").first_position, 2);
    assert_eq!(results[2].as_ref().expect("D is written").first_position, 3);
    assert_eq!(
        store.stream_version("inventory-B").await.expect("version"),
        0
    );
    let log = whole_log(&store).await;
    assert_eq!(
        log.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>(),
        vec!["inventory-A", "inventory-C", "inventory-D"]
    );
    verify_chain(GENESIS_HASH, &log).expect("chain intact");
}

/// 32 writers append to 8 overlapping streams, each append expecting the version it
/// last read (and retrying on conflict), while 4 subscribers follow from position 0.
/// Every subscriber must see the same gapless sequence, every stream's versions must
/// be contiguous, and every event must sit at the version its writer expected.
pub async fn concurrent_writers_and_subscribers_see_one_gapless_order(store: Store) {
    writers_and_subscribers_on_stores_see_one_gapless_order(&[store]).await;
}

/// [`concurrent_writers_and_subscribers_see_one_gapless_order`] with writers and
/// subscribers spread over `stores`, all on one log: for PostgreSQL, several stores
/// on one database stand for several engine processes, whose appenders race for the
/// same positions.
pub async fn writers_and_subscribers_on_stores_see_one_gapless_order(stores: &[Store]) {
    let store = stores[0].clone();
    const WRITERS: u64 = 32;
    const APPENDS_PER_WRITER: u64 = 40;
    const STREAMS: u64 = 8;
    let total_events = (WRITERS * APPENDS_PER_WRITER) as usize;

    let mut subscribers = Vec::new();
    for subscriber in 0..4 {
        let store = stores[subscriber % stores.len()].clone();
        subscribers.push(tokio::spawn(async move {
            let options = SubscriptionOptions {
                batch_max_events: 100,
                poll_interval: Duration::from_millis(100),
                ..SubscriptionOptions::default()
            };
            let mut subscription = Subscription::new(store, 0, options);
            let mut seen = Vec::with_capacity(total_events);
            while seen.len() < total_events {
                let batch =
                    tokio::time::timeout(Duration::from_secs(60), subscription.next_batch())
                        .await
                        .expect("subscriber kept up")
                        .expect("batch");
                seen.extend(batch.into_iter().map(|e| (e.position, e.event_id)));
            }
            seen
        }));
    }

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = stores[writer as usize % stores.len()].clone();
        writers.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for i in 0..APPENDS_PER_WRITER {
                let stream = format!("inventory-{}", (writer + i) % STREAMS);
                loop {
                    let version = store.stream_version(&stream).await.expect("version");
                    let e = NewEvent::new(
                        "StockReserved",
                        json!({"writer": writer, "i": i, "expected": version}),
                    );
                    match store
                        .append(append(&stream, ExpectedVersion::Exact(version), vec![e]))
                        .await
                    {
                        Ok(r) => {
                            assert_eq!(r.stream_version, version + 1);
                            break;
                        }
                        Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                            assert!(actual > version, "a conflict means someone else moved on");
                            conflicts += 1;
                            assert!(conflicts < 100_000, "bounded retries");
                        }
                        Err(e) => panic!("append failed: {e:?}"),
                    }
                }
            }
            conflicts
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }

    let log = whole_log(&store).await;
    assert_eq!(log.len(), total_events);
    let expected_positions: Vec<u64> = (1..=total_events as u64).collect();
    assert_eq!(
        log.iter().map(|e| e.position).collect::<Vec<_>>(),
        expected_positions
    );
    verify_chain(GENESIS_HASH, &log).expect("chain intact");
    assert!(
        log.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at),
        "recorded_at never goes back in position order"
    );
    let mut by_stream: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in &log {
        by_stream.entry(&e.stream_id).or_default().push(e.version);
        assert_eq!(
            e.data["expected"].as_u64().expect("expected"),
            e.version - 1,
            "event at {} was written against a stale version",
            e.position
        );
    }
    for (stream, versions) in by_stream {
        let contiguous: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, contiguous, "stream {stream}");
    }
    let reference: Vec<(u64, Uuid)> = log.iter().map(|e| (e.position, e.event_id)).collect();
    for s in subscribers {
        let seen = s.await.expect("subscriber");
        assert_eq!(seen, reference, "every subscriber sees the log's own order");
    }
}
