//! Stream metadata (`$$stream`), soft delete and tombstone, as the official client sees
//! them; the log keeps every event all the same.

use std::time::Duration;

use esdb::{
    AppendToStreamOptions, DeleteStreamOptions, Error, ExpectedRevision, ReadAllOptions,
    StreamMetadata, StreamMetadataResult, StreamPosition, TombstoneStreamOptions,
};
use eventstore::EventStore;
use serde_json::json;

use crate::support::{json_event, read_all_of, read_stream, revisions, spawn};

async fn append_n(client: &esdb::Client, stream: &str, count: u64) {
    for n in 0..count {
        client
            .append_to_stream(
                stream,
                &AppendToStreamOptions::default(),
                json_event("Tick", json!({"n": n})),
            )
            .await
            .expect("an append");
    }
}

#[tokio::test]
async fn metadata_is_set_read_back_and_max_count_and_truncate_before_hide_old_events() {
    let app = spawn().await;
    let client = app.admin();
    append_n(&client, "integration-meta", 6).await;

    let missing = client
        .get_stream_metadata("integration-meta", &Default::default())
        .await
        .expect("a metadata read");
    assert!(
        matches!(missing, StreamMetadataResult::NotFound),
        "{missing:?}"
    );

    let mut metadata = StreamMetadata::builder().max_count(4).build();
    metadata
        .custom_properties
        .insert("owner".into(), json!("team-sync"));
    client
        .set_stream_metadata("integration-meta", &Default::default(), &metadata)
        .await
        .expect("metadata is set");
    let StreamMetadataResult::Success(read) = client
        .get_stream_metadata("integration-meta", &Default::default())
        .await
        .expect("a metadata read")
    else {
        panic!("the metadata is there");
    };
    assert_eq!(read.metadata().max_count, Some(4));
    assert_eq!(
        read.metadata().custom_properties["owner"],
        json!("team-sync")
    );
    let events = read_stream(&client, "integration-meta")
        .await
        .expect("a read");
    assert_eq!(
        revisions(&events),
        [2, 3, 4, 5],
        "max count keeps the last four"
    );

    let truncate = StreamMetadata::builder().truncate_before(5).build();
    client
        .set_stream_metadata("integration-meta", &Default::default(), &truncate)
        .await
        .expect("metadata is set");
    let events = read_stream(&client, "integration-meta")
        .await
        .expect("a read");
    assert_eq!(
        revisions(&events),
        [5],
        "truncate before hides revisions below it"
    );

    // The log holds every event still, and $all shows them.
    let head = app.head().await;
    let mut all = client
        .read_all(
            &ReadAllOptions::default()
                .position(StreamPosition::Start)
                .max_count(head as usize),
        )
        .await
        .expect("a read of $all");
    let in_all = read_all_of(&mut all)
        .await
        .expect("events")
        .iter()
        .filter(|e| e.get_original_event().stream_id == "integration-meta")
        .count();
    assert_eq!(in_all, 6);
}

#[tokio::test]
async fn a_soft_deleted_stream_is_not_found_and_takes_appends_again_from_its_old_revision() {
    let app = spawn().await;
    let client = app.admin();
    append_n(&client, "integration-soft", 3).await;
    let deleted = client
        .delete_stream(
            "integration-soft",
            &DeleteStreamOptions::default().expected_revision(ExpectedRevision::Exact(2)),
        )
        .await
        .expect("a delete");
    assert!(deleted.is_some(), "the delete reports its position");
    let error = read_stream(&client, "integration-soft")
        .await
        .expect_err("deleted");
    assert!(matches!(error, Error::ResourceNotFound), "{error:?}");
    let StreamMetadataResult::Success(metadata) = client
        .get_stream_metadata("integration-soft", &Default::default())
        .await
        .expect("a metadata read")
    else {
        panic!("a delete sets the metadata");
    };
    assert_eq!(metadata.metadata().truncate_before, Some(3));

    let written = client
        .append_to_stream(
            "integration-soft",
            &AppendToStreamOptions::default().expected_revision(ExpectedRevision::NoStream),
            json_event("Tick", json!({"n": "again"})),
        )
        .await
        .expect("a deleted stream counts as no stream");
    assert_eq!(written.next_expected_version, 3);
    let events = read_stream(&client, "integration-soft")
        .await
        .expect("a read");
    assert_eq!(revisions(&events), [3]);
    let stored = app
        .store()
        .read_stream("integration-soft", 1, eventstore::Direction::Forward, 10)
        .await
        .expect("the log");
    assert_eq!(stored.len(), 4, "nothing was removed from the log");
}

#[tokio::test]
async fn a_wrong_expected_revision_on_delete_is_refused() {
    let app = spawn().await;
    let client = app.admin();
    append_n(&client, "integration-wrongdel", 2).await;
    let error = client
        .delete_stream(
            "integration-wrongdel",
            &DeleteStreamOptions::default().expected_revision(ExpectedRevision::Exact(7)),
        )
        .await
        .expect_err("revision 7 is wrong");
    assert!(
        matches!(
            error,
            Error::Grpc {
                code: tonic::Code::FailedPrecondition,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        revisions(
            &read_stream(&client, "integration-wrongdel")
                .await
                .expect("a read")
        ),
        [0, 1]
    );
}

#[tokio::test]
async fn a_tombstoned_stream_is_deleted_for_reads_and_appends() {
    let app = spawn().await;
    let client = app.admin();
    append_n(&client, "integration-gone", 2).await;
    let position = client
        .tombstone_stream("integration-gone", &TombstoneStreamOptions::default())
        .await
        .expect("a tombstone");
    assert!(position.is_some());

    let error = read_stream(&client, "integration-gone")
        .await
        .expect_err("tombstoned");
    assert!(matches!(error, Error::ResourceDeleted), "{error:?}");
    let head = app.head().await;
    for expected in [
        ExpectedRevision::Any,
        ExpectedRevision::NoStream,
        ExpectedRevision::Exact(1),
    ] {
        let error = client
            .append_to_stream(
                "integration-gone",
                &AppendToStreamOptions::default().expected_revision(expected),
                json_event("Tick", json!({})),
            )
            .await
            .expect_err("a tombstoned stream takes no events");
        assert!(
            matches!(error, Error::ResourceDeleted),
            "{expected:?}: {error:?}"
        );
    }
    let error = client
        .delete_stream("integration-gone", &DeleteStreamOptions::default())
        .await
        .expect_err("already gone");
    assert!(matches!(error, Error::ResourceDeleted), "{error:?}");
    assert_eq!(
        app.head().await,
        head,
        "nothing written after the tombstone"
    );

    // A subscription to it ends with the protocol's stream-deleted error.
    let mut subscription = client
        .subscribe_to_stream("integration-gone", &Default::default())
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Err(e) = subscription.next().await {
                return e;
            }
        }
    })
    .await
    .expect("the subscription ends");
    assert!(matches!(ended, Error::ResourceDeleted), "{ended:?}");
}
