//! Subscriptions: catch up, then follow live while others append, with no gap and no
//! duplicate; `$all` with the server-side filter and its checkpoints.

use std::collections::HashMap;

use esdb::{
    AppendToStreamOptions, ExpectedRevision, Position, StreamPosition, SubscribeToAllOptions,
    SubscribeToStreamOptions, SubscriptionEvent, SubscriptionFilter,
};
use serde_json::json;

use crate::support::{json_event, spawn, SUBSCRIPTION_WAIT};

async fn next(subscription: &mut esdb::Subscription) -> SubscriptionEvent {
    tokio::time::timeout(SUBSCRIPTION_WAIT, subscription.next_subscription_event())
        .await
        .expect("the subscription delivers in time")
        .expect("the subscription stays up")
}

async fn append_n(client: &esdb::Client, stream: &str, from: u64, count: u64) {
    for n in from..from + count {
        client
            .append_to_stream(
                stream,
                &AppendToStreamOptions::default().expected_revision(ExpectedRevision::Any),
                json_event("Tick", json!({"n": n})),
            )
            .await
            .expect("an append");
    }
}

#[tokio::test]
async fn a_stream_subscription_catches_up_then_follows_live_without_gap_or_duplicate() {
    let app = spawn().await;
    let client = app.admin();
    append_n(&client, "integration-live", 0, 30).await;

    let mut subscription = client
        .subscribe_to_stream(
            "integration-live",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    // Writers to this stream and to others keep appending while it catches up.
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                append_n(&client, "integration-live", 1_000 * (w + 1), 40).await;
                append_n(&client, &format!("integration-other{w}"), 0, 10).await;
            })
        })
        .collect();

    let mut seen = Vec::new();
    let mut confirmed = false;
    let mut caught_up = false;
    while seen.len() < 150 {
        match next(&mut subscription).await {
            SubscriptionEvent::Confirmed(_) => confirmed = true,
            SubscriptionEvent::CaughtUp => caught_up = true,
            SubscriptionEvent::EventAppeared(event) => {
                let event = event.get_original_event();
                assert_eq!(event.stream_id, "integration-live");
                seen.push(event.revision);
            }
            _ => {}
        }
    }
    for writer in writers {
        writer.await.expect("a writer");
    }
    assert!(confirmed, "the server confirms the subscription first");
    assert!(caught_up || seen.len() == 150);
    assert_eq!(seen, (0..150).collect::<Vec<_>>(), "no gap, no duplicate");
}

#[tokio::test]
async fn a_stream_subscription_from_a_revision_or_the_end_starts_after_it() {
    let app = spawn().await;
    let client = app.admin();
    append_n(&client, "integration-after", 0, 5).await;
    let mut from_revision = client
        .subscribe_to_stream(
            "integration-after",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Position(2)),
        )
        .await;
    let mut from_end = client
        .subscribe_to_stream(
            "integration-after",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::End),
        )
        .await;
    let first = from_revision.next().await.expect("an event");
    assert_eq!(first.get_original_event().revision, 3);
    // Confirmation is read before the append, so the subscription is in place.
    assert!(matches!(
        next(&mut from_end).await,
        SubscriptionEvent::Confirmed(_)
    ));
    append_n(&client, "integration-after", 5, 1).await;
    let live = tokio::time::timeout(SUBSCRIPTION_WAIT, from_end.next())
        .await
        .expect("in time")
        .expect("an event");
    assert_eq!(live.get_original_event().revision, 5);
}

#[tokio::test]
async fn an_all_subscription_with_a_stream_prefix_filter_sees_each_matching_event_once_in_order() {
    let app = spawn().await;
    let client = app.admin();
    append_n(&client, "integration-wanted1", 0, 20).await;
    append_n(&client, "integration-skipped", 0, 20).await;

    let filter = SubscriptionFilter::on_stream_name()
        .add_prefix("integration-wanted")
        .max(4);
    let mut subscription = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(StreamPosition::Start)
                .filter(filter),
        )
        .await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = client.clone();
            let stream = if w % 2 == 0 {
                format!("integration-wanted{w}")
            } else {
                format!("integration-skipped{w}")
            };
            tokio::spawn(async move { append_n(&client, &stream, 100, 25).await })
        })
        .collect();

    let expected = 20 + 2 * 25;
    let mut per_stream: HashMap<String, Vec<u64>> = HashMap::new();
    let mut positions = Vec::new();
    let mut checkpoints = Vec::new();
    while positions.len() < expected {
        match next(&mut subscription).await {
            SubscriptionEvent::EventAppeared(event) => {
                let event = event.get_original_event();
                assert!(
                    event.stream_id.starts_with("integration-wanted"),
                    "{}",
                    event.stream_id
                );
                per_stream
                    .entry(event.stream_id.clone())
                    .or_default()
                    .push(event.revision);
                positions.push(event.position.commit);
            }
            SubscriptionEvent::Checkpoint(position) => checkpoints.push(position.commit),
            _ => {}
        }
    }
    for writer in writers {
        writer.await.expect("a writer");
    }
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in log order, no duplicate"
    );
    assert_eq!(
        per_stream["integration-wanted1"],
        (0..20).collect::<Vec<_>>()
    );
    assert_eq!(
        per_stream["integration-wanted0"],
        (0..25).collect::<Vec<_>>()
    );
    assert_eq!(
        per_stream["integration-wanted2"],
        (0..25).collect::<Vec<_>>()
    );
    assert!(
        !checkpoints.is_empty(),
        "a filtered subscription sends checkpoints"
    );
    assert!(checkpoints.windows(2).all(|w| w[0] <= w[1]));
}

#[tokio::test]
async fn an_all_subscription_filters_on_event_type_by_regex_and_resumes_after_a_position() {
    let app = spawn().await;
    let client = app.admin();
    for n in 0..6u64 {
        let event_type = if n % 2 == 0 {
            "OrderSynced"
        } else {
            "Heartbeat"
        };
        client
            .append_to_stream(
                "integration-types",
                &AppendToStreamOptions::default(),
                json_event(event_type, json!({"n": n})),
            )
            .await
            .expect("an append");
    }
    let filter = SubscriptionFilter::on_event_type().regex("^Order.*$");
    let mut subscription = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(StreamPosition::Start)
                .filter(filter.clone()),
        )
        .await;
    let mut synced = Vec::new();
    while synced.len() < 3 {
        if let SubscriptionEvent::EventAppeared(event) = next(&mut subscription).await {
            let event = event.get_original_event();
            assert_eq!(event.event_type, "OrderSynced");
            synced.push(event.position.commit);
        }
    }
    // Resuming from the first one's position yields the ones after it.
    let at = Position {
        commit: synced[0],
        prepare: synced[0],
    };
    let mut resumed = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(StreamPosition::Position(at))
                .filter(filter),
        )
        .await;
    let mut again = Vec::new();
    while again.len() < 2 {
        if let SubscriptionEvent::EventAppeared(event) = next(&mut resumed).await {
            again.push(event.get_original_event().position.commit);
        }
    }
    assert_eq!(again, synced[1..]);
}
