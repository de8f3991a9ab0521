//! Reading a stream and `$all`, forwards and backwards, from a point, with a count.

use esdb::{
    AppendToStreamOptions, Error, ExpectedRevision, Position, ReadAllOptions, ReadStreamOptions,
    StreamPosition,
};
use serde_json::json;

use crate::support::{json_event, read_all_of, revisions, spawn};

async fn append_numbered(client: &esdb::Client, stream: &str, count: u64) -> Vec<u64> {
    let mut positions = Vec::new();
    for n in 0..count {
        let written = client
            .append_to_stream(
                stream,
                &AppendToStreamOptions::default().expected_revision(if n == 0 {
                    ExpectedRevision::NoStream
                } else {
                    ExpectedRevision::Exact(n - 1)
                }),
                json_event("Numbered", json!({"n": n})),
            )
            .await
            .expect("an append");
        positions.push(written.position.commit);
    }
    positions
}

async fn read(
    client: &esdb::Client,
    stream: &str,
    options: ReadStreamOptions,
) -> Result<Vec<u64>, Error> {
    let mut read = client.read_stream(stream, &options).await?;
    Ok(revisions(&read_all_of(&mut read).await?))
}

#[tokio::test]
async fn a_stream_reads_forwards_and_backwards_from_a_revision_with_a_count() {
    let app = spawn().await;
    let client = app.admin();
    append_numbered(&client, "integration-reads", 10).await;

    let all = read(&client, "integration-reads", ReadStreamOptions::default())
        .await
        .expect("a read");
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    let forwards = ReadStreamOptions::default()
        .forwards()
        .position(StreamPosition::Position(3))
        .max_count(4);
    assert_eq!(
        read(&client, "integration-reads", forwards)
            .await
            .expect("a read"),
        [3, 4, 5, 6]
    );
    let from_end = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(3);
    assert_eq!(
        read(&client, "integration-reads", from_end)
            .await
            .expect("a read"),
        [9, 8, 7]
    );
    let backwards = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::Position(5))
        .max_count(2);
    assert_eq!(
        read(&client, "integration-reads", backwards)
            .await
            .expect("a read"),
        [5, 4]
    );
    let past_the_end = ReadStreamOptions::default()
        .forwards()
        .position(StreamPosition::Position(10));
    assert!(read(&client, "integration-reads", past_the_end)
        .await
        .expect("a read")
        .is_empty());
}

#[tokio::test]
async fn a_stream_that_does_not_exist_is_not_found() {
    let app = spawn().await;
    let client = app.admin();
    let error = read(&client, "integration-nothing", ReadStreamOptions::default())
        .await
        .expect_err("no such stream");
    assert!(matches!(error, Error::ResourceNotFound), "{error:?}");
}

#[tokio::test]
async fn all_reads_forwards_and_backwards_from_a_position() {
    let app = spawn().await;
    let client = app.admin();
    let mut positions = append_numbered(&client, "integration-a", 3).await;
    positions.extend(append_numbered(&client, "integration-b", 3).await);
    let head = app.head().await;
    assert_eq!(*positions.last().expect("positions"), head);

    let read_all = |options: ReadAllOptions| {
        let client = client.clone();
        async move {
            let mut read = client.read_all(&options).await.expect("a read of $all");
            read_all_of(&mut read)
                .await
                .expect("events")
                .iter()
                .map(|e| {
                    let event = e.get_original_event();
                    assert_eq!(event.position.commit, event.position.prepare);
                    assert_eq!(e.commit_position, Some(event.position.commit));
                    event.position.commit
                })
                .collect::<Vec<_>>()
        }
    };
    let everything = read_all(
        ReadAllOptions::default()
            .forwards()
            .position(StreamPosition::Start),
    )
    .await;
    assert_eq!(
        everything,
        (1..=head).collect::<Vec<_>>(),
        "the whole log, gapless"
    );

    let at = Position {
        commit: positions[2],
        prepare: positions[2],
    };
    let forwards = read_all(
        ReadAllOptions::default()
            .forwards()
            .position(StreamPosition::Position(at))
            .max_count(2),
    )
    .await;
    assert_eq!(
        forwards,
        [positions[2], positions[2] + 1],
        "from a position includes it"
    );

    let backwards = read_all(
        ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::Position(at))
            .max_count(2),
    )
    .await;
    assert_eq!(
        backwards,
        [positions[2] - 1, positions[2] - 2],
        "backwards goes before it"
    );

    let from_end = read_all(
        ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(3),
    )
    .await;
    assert_eq!(from_end, [head, head - 1, head - 2]);
    let past_the_end = read_all(
        // `position(End)` turns the read backwards: forwards comes after it.
        ReadAllOptions::default()
            .position(StreamPosition::End)
            .forwards(),
    )
    .await;
    assert!(past_the_end.is_empty());
}

#[tokio::test]
async fn an_auditor_reads_but_may_not_write() {
    let app = spawn().await;
    append_numbered(&app.admin(), "integration-audited", 2).await;
    let auditor = app.client_as(crate::support::AUDITOR);
    let events = read(
        &auditor,
        "integration-audited",
        ReadStreamOptions::default(),
    )
    .await
    .expect("an auditor reads");
    assert_eq!(events, [0, 1]);
    let head = app.head().await;
    let error = auditor
        .append_to_stream(
            "integration-audited",
            &AppendToStreamOptions::default(),
            json_event("X", json!({})),
        )
        .await
        .expect_err("read only");
    assert!(matches!(error, Error::AccessDenied), "{error:?}");
    assert_eq!(app.head().await, head);
}
