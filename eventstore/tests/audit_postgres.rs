//! Auditors' tools against PostgreSQL: a row changed behind the store's back is found
//! at its exact position; exports verify line by line; moments map to positions.

use std::sync::Arc;

use eventstore::audit::{export, position_at, verify_log, verify_log_postgres};
use eventstore::hash::{expected_hash, GENESIS_HASH};
use eventstore::testing::test_database;
use eventstore::{
    AppendRequest, EventStore, ExpectedVersion, NewEvent, PostgresConfig, PostgresStore,
    RecordedEvent, ScratchDatabase,
};
use serde_json::json;

async fn store_with_events(count: u64) -> (Arc<dyn EventStore>, PostgresStore, ScratchDatabase) {
    let db = test_database().await.expect("a test database");
    let store = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
        .await
        .expect("store");
    let requests: Vec<AppendRequest> = (0..count)
        .map(|i| AppendRequest {
            stream_id: if i % 3 == 0 {
                format!("cart-{}", i % 7)
            } else {
                format!("order-{}", i % 5)
            },
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new(
                "Noted",
                json!({ "i": i, "email": "a@example.com" }),
            )],
            command_id: None,
            preconditions: Vec::new(),
            guards: Vec::new(),
        })
        .collect();
    for chunk in requests.chunks(500) {
        for result in store.append_batch(chunk.to_vec()).await {
            result.expect("append");
        }
    }
    (Arc::new(store.clone()), store, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_an_untouched_log_finds_it_intact() {
    let (store, _pg, _db) = store_with_events(2_345).await;
    let mut calls = 0;
    let report = verify_log(store.clone(), 1, |_, _| calls += 1)
        .await
        .expect("verify");
    assert!(report.intact(), "{report:?}");
    assert_eq!((report.checked, report.last_position), (2_345, 2_345));
    assert!(calls >= 1);
    let tail = verify_log(store, 2_000, |_, _| {})
        .await
        .expect("verify tail");
    assert_eq!(
        (tail.from, tail.checked, tail.first_break),
        (2_000, 346, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_changed_through_sql_is_found_at_its_position() {
    let (store, pg, _db) = store_with_events(1_500).await;
    let client = pg.connection().await.expect("connection");
    // Only someone who can switch the append-only triggers off can forge a row.
    client
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER events_no_update_or_delete;
             UPDATE events SET data = '{\"i\": 1, \"email\": \"forged@example.com\"}' WHERE position = 1234;
             ALTER TABLE events ENABLE TRIGGER events_no_update_or_delete;",
        )
        .await
        .expect("tamper");
    let report = verify_log(store.clone(), 1, |_, _| {})
        .await
        .expect("verify");
    assert_eq!(report.first_break, Some(1234));
    assert_eq!(report.last_position, 1234);
    let before = verify_log(store, 1_300, |_, _| {})
        .await
        .expect("verify after it");
    assert!(
        before.intact(),
        "the chain after the forged row still links: {before:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_verification_agrees_with_the_generic_one() {
    let (store, pg, _db) = store_with_events(25_123).await;
    let report = verify_log_postgres(&pg, 1, |_, _| {})
        .await
        .expect("verify");
    assert!(report.intact(), "{report:?}");
    assert_eq!((report.checked, report.last_position), (25_123, 25_123));
    let tail = verify_log_postgres(&pg, 20_001, |_, _| {})
        .await
        .expect("verify the tail");
    assert_eq!((tail.checked, tail.first_break), (5_123, None));
    let client = pg.connection().await.expect("connection");
    client
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER events_no_update_or_delete;
             UPDATE events SET metadata = '{\"actor\": \"forger\"}' WHERE position = 17345;
             ALTER TABLE events ENABLE TRIGGER events_no_update_or_delete;",
        )
        .await
        .expect("tamper");
    let copy = verify_log_postgres(&pg, 1, |_, _| {})
        .await
        .expect("verify");
    let generic = verify_log(store, 1, |_, _| {}).await.expect("verify");
    assert_eq!(copy.first_break, Some(17_345));
    assert_eq!(
        (copy.checked, copy.last_position),
        (generic.checked, generic.last_position)
    );
    assert_eq!(generic.first_break, Some(17_345));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_line_by_line_with_or_without_a_category() {
    let (store, _pg, _db) = store_with_events(600).await;
    let mut out = Vec::new();
    let written = export(store.as_ref(), 101, 400, None, &mut out)
        .await
        .expect("export");
    assert_eq!(written, 300);
    let mut carts = Vec::new();
    let cart_lines = export(store.as_ref(), 1, 600, Some("cart"), &mut carts)
        .await
        .expect("export carts");
    assert_eq!(cart_lines, 200);
    for (text, first) in [(out, 101u64), (carts, 1)] {
        let mut last_position = first - 1;
        for line in String::from_utf8(text).expect("utf8").lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("json line");
            let previous =
                hex::decode(value["previous_hash"].as_str().expect("previous")).expect("hex");
            let event: RecordedEvent = serde_json::from_value(value).expect("envelope");
            let previous: [u8; 32] = previous.try_into().expect("32 bytes");
            assert_eq!(
                expected_hash(&previous, &event),
                event.hash,
                "line {}",
                event.position
            );
            assert!(event.position > last_position);
            last_position = event.position;
            if event.position == 1 {
                assert_eq!(previous, GENESIS_HASH);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moment_maps_to_the_first_position_recorded_at_or_after_it() {
    let (store, _pg, _db) = store_with_events(50).await;
    let log = store.read_all(0, 100, None).await.expect("log");
    let at = log[20].recorded_at;
    let position = position_at(store.as_ref(), at).await.expect("position");
    assert!(log[(position - 1) as usize].recorded_at >= at);
    assert!(position == 1 || log[(position - 2) as usize].recorded_at < at);
    let later = log[49].recorded_at + chrono::Duration::seconds(1);
    assert_eq!(
        position_at(store.as_ref(), later).await.expect("position"),
        51
    );
    let earlier = log[0].recorded_at - chrono::Duration::seconds(1);
    assert_eq!(
        position_at(store.as_ref(), earlier)
            .await
            .expect("position"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_to_update_delete_or_truncate_events() {
    let (store, pg, _db) = store_with_events(100).await;
    let client = pg.connection().await.expect("connection");
    for statement in [
        "UPDATE events SET data = '{}' WHERE position = 10",
        "DELETE FROM events WHERE position = 10",
        "TRUNCATE events",
    ] {
        let err = client.batch_execute(statement).await.expect_err(statement);
        let db = err.as_db_error().expect("a database error");
        assert!(
            db.message().contains("append-only"),
            "{statement}: {}",
            db.message()
        );
    }
    let report = verify_log(store.clone(), 1, |_, _| {})
        .await
        .expect("verify");
    assert!(report.intact() && report.checked == 100, "{report:?}");
    let result = store
        .append(AppendRequest {
            stream_id: "order-9".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new("Noted", json!({}))],
            command_id: None,
            preconditions: Vec::new(),
            guards: Vec::new(),
        })
        .await
        .expect("appends still work");
    assert_eq!(result.first_position, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_verification_hashes_every_kind_of_json_as_the_store_did() {
    let db = test_database().await.expect("a test database");
    let pg = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
        .await
        .expect("store");
    // Text the verification copies as it is and text it has to parse, side by side.
    let data = [
        json!({"sku": "SHOE-42", "quantity": 3, "reservation_id": uuid::Uuid::now_v7()}),
        json!({"price": 19.99, "rate": 1e-7, "big": 1e20, "zero": -0.0}),
        json!({"max": u64::MAX, "min": i64::MIN, "list": [[], {}, [1, [2, {"b": null, "a": true}]]]}),
        json!({"say": "\"hi\"\\ \u{8}\u{c}\n\r\t \u{1} \u{1f} \u{7f} caf\u{e9} \u{2028} \u{1F600} a/b"}),
        json!({"line\nbreak": 1, "tab\tkey": 2, "": 3, "\u{e9}": 4, "z": 5, "aa": 6}),
        json!([1, "two", null, false]),
        json!("just a string"),
        json!(null),
    ];
    let custom = json!({"source": "import", "batch": 7, "tags": ["a", "b"]});
    let events = data
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let mut event = NewEvent::new("Shaped", data.clone());
            event.metadata.actor = Some(format!("admin:\"quoted\" {i}"));
            event.metadata.correlation_id = Some(uuid::Uuid::new_v4());
            if i % 2 == 0 {
                event.metadata.command_id = Some(uuid::Uuid::now_v7());
                event.metadata.custom = custom.clone();
            }
            event
        })
        .collect();
    pg.append(AppendRequest {
        stream_id: "order-shapes".into(),
        expected: ExpectedVersion::NoStream,
        events,
        command_id: None,
        preconditions: Vec::new(),
        guards: Vec::new(),
    })
    .await
    .expect("append");
    let report = verify_log_postgres(&pg, 1, |_, _| {})
        .await
        .expect("verify");
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.checked, data.len() as u64);

    // A changed string in the middle of the escapes is still a break.
    let client = pg.connection().await.expect("connection");
    client
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER events_no_update_or_delete;
             UPDATE events SET data = jsonb_set(data::jsonb, '{say}', '\"\\\"hi\\\"\\\\ \\b\"')::json WHERE position = 4;
             ALTER TABLE events ENABLE TRIGGER events_no_update_or_delete;",
        )
        .await
        .expect("tamper");
    let report = verify_log_postgres(&pg, 1, |_, _| {})
        .await
        .expect("verify");
    assert_eq!((report.first_break, report.checked), (Some(4), 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_row_is_a_break_at_its_position_on_either_side_of_a_copy_range() {
    let range = eventstore::audit::VERIFY_COPY_RANGE_EVENTS;
    let (_store, pg, _db) = store_with_events(2 * range + 5).await;
    let client = pg.connection().await.expect("connection");
    for missing in [range + 1, range] {
        client
            .batch_execute(&format!(
                "ALTER TABLE events DISABLE TRIGGER events_no_update_or_delete;
                 DELETE FROM events WHERE position = {missing};
                 ALTER TABLE events ENABLE TRIGGER events_no_update_or_delete;"
            ))
            .await
            .expect("delete a row");
        let report = verify_log_postgres(&pg, 1, |_, _| {})
            .await
            .expect("verify");
        assert_eq!(
            (report.first_break, report.checked, report.last_position),
            (Some(missing), missing - 1, missing - 1),
            "{report:?}"
        );
    }
    let tail = verify_log_postgres(&pg, range + 3, |_, _| {})
        .await
        .expect("verify after the gap");
    assert_eq!((tail.first_break, tail.checked), (None, range + 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_stored_as_jsonb_reads_and_verifies_the_same_once_migrated_to_json() {
    let (store, pg, db) = store_with_events(1_200).await;
    let before = store.read_all(0, 2_000, None).await.expect("read");
    assert_eq!(before.len(), 1_200);

    // The log as migrations 1-3 left it: `jsonb` columns, printed with keys by length
    // and spaces, not in the canonical order the hash uses ("email" < "i").
    let client = pg.connection().await.expect("connection");
    client
        .batch_execute(
            "ALTER TABLE events ALTER COLUMN data TYPE jsonb USING data::jsonb, \
                                ALTER COLUMN metadata TYPE jsonb USING metadata::jsonb;
             DELETE FROM schema_migrations WHERE component = 'eventstore' AND version = 4;",
        )
        .await
        .expect("back to jsonb");
    let text: String = client
        .query_one("SELECT data::text FROM events WHERE position = 1", &[])
        .await
        .expect("text")
        .get(0);
    assert_eq!(text, r#"{"i": 0, "email": "a@example.com"}"#);
    drop(client);

    let migrated = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
        .await
        .expect("store, migrating");
    let client = migrated.connection().await.expect("connection");
    let types: Vec<String> = client
        .query(
            "SELECT data_type FROM information_schema.columns \
             WHERE table_name = 'events' AND column_name IN ('data', 'metadata')",
            &[],
        )
        .await
        .expect("column types")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(types, ["json", "json"]);
    let after = migrated.read_all(0, 2_000, None).await.expect("read");
    assert_eq!(after, before);
    let report = verify_log_postgres(&migrated, 1, |_, _| {})
        .await
        .expect("verify");
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.checked, 1_200);

    // New appends chain on from the converted rows.
    migrated
        .append(AppendRequest {
            stream_id: "cart-99".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent::new("Noted", json!({ "zz": 1, "a": [1, 2] }))],
            command_id: None,
            preconditions: Vec::new(),
            guards: Vec::new(),
        })
        .await
        .expect("append");
    let report = verify_log_postgres(&migrated, 1, |_, _| {})
        .await
        .expect("verify");
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.checked, 1_201);
}
