//! Append and BatchAppend: every expected revision, idempotent repeats, and every field
//! of an event round-tripping.

use bytes::Bytes;
use chrono::Utc;
use esdb::{
    AppendToStreamOptions, CurrentRevision, Error, EventData, ExpectedRevision, ReadStreamOptions,
    StreamPosition,
};
use eventstore::EventStore;
use serde_json::json;
use uuid::Uuid;

use crate::support::{json_event, read_all_of, read_stream, revisions, spawn};

fn expecting(revision: ExpectedRevision) -> AppendToStreamOptions {
    AppendToStreamOptions::default().expected_revision(revision)
}

#[tokio::test]
async fn every_expected_revision_is_honoured_with_the_protocols_reply() {
    let app = spawn().await;
    let client = app.admin();
    let stream = "integration-expected";

    let first = client
        .append_to_stream(
            stream,
            &expecting(ExpectedRevision::NoStream),
            json_event("A", json!({"n": 0})),
        )
        .await
        .expect("a new stream takes NoStream");
    assert_eq!(first.next_expected_version, 0);
    assert_eq!(first.position.commit, first.position.prepare);

    let error = client
        .append_to_stream(
            stream,
            &expecting(ExpectedRevision::NoStream),
            json_event("A", json!({"n": 1})),
        )
        .await
        .expect_err("the stream exists");
    assert!(
        matches!(
            error,
            Error::WrongExpectedVersion {
                expected: ExpectedRevision::NoStream,
                current: CurrentRevision::Current(0)
            }
        ),
        "{error:?}"
    );

    let second = client
        .append_to_stream(
            stream,
            &expecting(ExpectedRevision::Exact(0)),
            json_event("A", json!({"n": 1})),
        )
        .await
        .expect("exact revision 0");
    assert_eq!(second.next_expected_version, 1);
    assert!(second.position.commit > first.position.commit);

    let error = client
        .append_to_stream(
            stream,
            &expecting(ExpectedRevision::Exact(5)),
            json_event("A", json!({"n": 2})),
        )
        .await
        .expect_err("revision 5 is wrong");
    assert!(
        matches!(
            error,
            Error::WrongExpectedVersion {
                expected: ExpectedRevision::Exact(5),
                current: CurrentRevision::Current(1)
            }
        ),
        "{error:?}"
    );

    let third = client
        .append_to_stream(
            stream,
            &expecting(ExpectedRevision::StreamExists),
            json_event("A", json!({"n": 2})),
        )
        .await
        .expect("the stream exists");
    assert_eq!(third.next_expected_version, 2);

    let error = client
        .append_to_stream(
            "integration-missing",
            &expecting(ExpectedRevision::StreamExists),
            json_event("A", json!({})),
        )
        .await
        .expect_err("no such stream");
    assert!(
        matches!(
            error,
            Error::WrongExpectedVersion {
                expected: ExpectedRevision::StreamExists,
                current: CurrentRevision::NoStream
            }
        ),
        "{error:?}"
    );

    let error = client
        .append_to_stream(
            "integration-missing",
            &expecting(ExpectedRevision::Exact(0)),
            json_event("A", json!({})),
        )
        .await
        .expect_err("no such stream");
    assert!(
        matches!(
            error,
            Error::WrongExpectedVersion {
                current: CurrentRevision::NoStream,
                ..
            }
        ),
        "{error:?}"
    );

    let fourth = client
        .append_to_stream(
            stream,
            &expecting(ExpectedRevision::Any),
            json_event("A", json!({"n": 3})),
        )
        .await
        .expect("any revision");
    assert_eq!(fourth.next_expected_version, 3);

    let events = read_stream(&client, stream).await.expect("a read");
    assert_eq!(revisions(&events), [0, 1, 2, 3]);
}

#[tokio::test]
async fn repeating_an_append_with_the_same_event_ids_writes_nothing_twice() {
    let app = spawn().await;
    let client = app.admin();
    let id = Uuid::new_v4();
    let event = || json_event("Synced", json!({"batch": 1})).id(id);
    let options = expecting(ExpectedRevision::NoStream);
    let first = client
        .append_to_stream("integration-idem", &options, event())
        .await
        .expect("the first append");
    let head = app.head().await;
    let again = client
        .append_to_stream("integration-idem", &options, event())
        .await
        .expect("the repeat is answered as the first");
    assert_eq!(again.next_expected_version, first.next_expected_version);
    assert_eq!(again.position, first.position);
    assert_eq!(app.head().await, head, "nothing was written again");
}

#[tokio::test]
async fn event_fields_round_trip_json_and_binary_byte_for_byte() {
    let app = spawn().await;
    let client = app.admin();
    let before = Utc::now();
    let ids = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    // Canonical JSON, JSON with its own key order and spacing, and binary bytes with
    // binary custom metadata.
    let canonical = EventData::json("Canonical", &json!({"a": 1, "b": "x"}))
        .expect("JSON")
        .id(ids[0])
        .metadata(Bytes::from_static(br#"{"trace":"t-1"}"#));
    // Fields in declaration order: JSON, but not in the log's canonical key order.
    #[derive(serde::Serialize)]
    struct Reordered {
        zeta: u32,
        alpha: (f64, &'static str),
    }
    let reordered = Reordered {
        zeta: 1,
        alpha: (1.5, "\u{e9}"),
    };
    let reordered_text = serde_json::to_vec(&reordered).expect("JSON");
    assert_eq!(
        reordered_text,
        "{\"zeta\":1,\"alpha\":[1.5,\"\u{e9}\"]}".as_bytes()
    );
    let spaced = EventData::json("Spaced", &reordered)
        .expect("JSON")
        .id(ids[1])
        .metadata(Bytes::from_static(b"{ \"b\":1, \"a\":2 }"));
    let binary_data: &[u8] = &[0, 1, 2, 0xff, 0xfe, b'{', 0];
    let binary = EventData::binary("Blob", Bytes::from_static(binary_data))
        .id(ids[2])
        .metadata(Bytes::from_static(&[9, 8, 0, 7]));
    client
        .append_to_stream(
            "integration-fields",
            &expecting(ExpectedRevision::NoStream),
            vec![canonical, spaced, binary],
        )
        .await
        .expect("an append of three events");

    let events = read_stream(&client, "integration-fields")
        .await
        .expect("a read");
    assert_eq!(events.len(), 3);
    let recorded: Vec<_> = events.iter().map(|e| e.get_original_event()).collect();
    assert_eq!(recorded.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        recorded
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["Canonical", "Spaced", "Blob"]
    );
    assert!(recorded[0].is_json && recorded[1].is_json);
    assert!(!recorded[2].is_json);
    assert_eq!(recorded[0].data.as_ref(), br#"{"a":1,"b":"x"}"#);
    assert_eq!(recorded[0].custom_metadata.as_ref(), br#"{"trace":"t-1"}"#);
    assert_eq!(recorded[1].data.as_ref(), reordered_text.as_slice());
    assert_eq!(
        recorded[1].custom_metadata.as_ref(),
        b"{ \"b\":1, \"a\":2 }"
    );
    assert_eq!(recorded[2].data.as_ref(), binary_data);
    assert_eq!(recorded[2].custom_metadata.as_ref(), &[9, 8, 0, 7]);
    assert_eq!(
        recorded.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    for (event, stored) in recorded.iter().zip(
        app.store()
            .read_stream("integration-fields", 1, eventstore::Direction::Forward, 10)
            .await
            .expect("the log"),
    ) {
        assert_eq!(event.position.commit, stored.position);
        assert_eq!(event.position.prepare, stored.position);
        assert_eq!(event.stream_id, stored.stream_id);
        assert_eq!(event.revision + 1, stored.version);
        assert_eq!(stored.metadata.actor.as_deref(), Some("esdb:ops"));
        // The protocol's ticks keep whole seconds through the client.
        assert_eq!(event.created.timestamp(), stored.recorded_at.timestamp());
        assert!(event.created.timestamp() >= before.timestamp() - 1);
    }
    // Canonical JSON is stored as JSON in the log, queryable like the engine's own.
    let stored = app
        .store()
        .read_stream("integration-fields", 1, eventstore::Direction::Forward, 1)
        .await
        .expect("the log");
    assert_eq!(stored[0].data, json!({"a": 1, "b": "x"}));
}

#[tokio::test]
async fn batch_append_writes_each_batch_with_its_own_expected_revision() {
    let app = spawn().await;
    let client = app.admin();
    let batch = client
        .batch_append(&Default::default())
        .await
        .expect("the server says it supports batch append");
    let first = batch
        .append_to_stream(
            "integration-batch",
            ExpectedRevision::NoStream,
            vec![
                json_event("A", json!({"n": 0})),
                json_event("A", json!({"n": 1})),
            ],
        )
        .await
        .expect("a first batch");
    assert_eq!(first.current_revision(), Some(1));
    assert_eq!(first.stream_name(), "integration-batch");
    let second = batch
        .append_to_stream(
            "integration-batch",
            ExpectedRevision::Exact(1),
            vec![json_event("A", json!({"n": 2}))],
        )
        .await
        .expect("a second batch");
    assert_eq!(second.current_revision(), Some(2));
    assert!(
        second.current_position().expect("a position").commit
            > first.current_position().expect("a position").commit
    );
    let refused = batch
        .append_to_stream(
            "integration-batch",
            ExpectedRevision::Exact(0),
            vec![json_event("A", json!({"n": 3}))],
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::Grpc {
                code: tonic::Code::FailedPrecondition,
                ..
            })
        ),
        "{refused:?}"
    );

    let options = ReadStreamOptions::default().position(StreamPosition::Start);
    let mut read = client
        .read_stream("integration-batch", &options)
        .await
        .expect("a read");
    let events = read_all_of(&mut read).await.expect("events");
    assert_eq!(revisions(&events), [0, 1, 2]);
}
