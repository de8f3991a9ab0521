//! Events the engine's HTTP commands wrote, read back through the official client:
//! the same events, byte for byte.

use esdb::{ReadAllOptions, StreamPosition};
use serde_json::Value;

use crate::http_support::SKU;
use crate::support::{read_all_of, read_stream, spawn};

#[tokio::test]
async fn events_written_by_http_commands_read_back_byte_for_byte_through_the_official_client() {
    let app = spawn().await;
    let product_id = app.http.seed_catalog().await;
    let over_http = app.http.events_after(0).await;
    assert!(
        over_http.len() >= 4,
        "the catalog and stock events: {over_http:?}"
    );

    let client = app.client_as(crate::support::AUDITOR);
    let product_stream = format!("product-{product_id}");
    let inventory_stream = format!("inventory-{SKU}");
    let mut checked = 0;
    for stream in [&product_stream, &inventory_stream] {
        let through_grpc = read_stream(&client, stream).await.expect("a read");
        let expected: Vec<&Value> = over_http
            .iter()
            .filter(|e| e["stream_id"] == stream.as_str())
            .collect();
        assert_eq!(through_grpc.len(), expected.len(), "{stream}");
        for (event, http) in through_grpc.iter().zip(expected) {
            let event = event.get_original_event();
            assert_eq!(
                event.id.to_string(),
                http["event_id"].as_str().expect("an id")
            );
            assert_eq!(
                event.event_type,
                http["event_type"].as_str().expect("a type")
            );
            assert_eq!(
                event.revision + 1,
                http["version"].as_u64().expect("a version")
            );
            assert_eq!(
                event.position.commit,
                http["position"].as_u64().expect("a position")
            );
            assert!(event.is_json);
            // The data bytes are the log's canonical JSON: what the HTTP API serves,
            // compact with keys in order.
            let canonical = serde_json::to_vec(&http["data"]).expect("JSON");
            assert_eq!(event.data.as_ref(), canonical.as_slice(), "{stream}");
            let metadata: Value =
                serde_json::from_slice(&event.custom_metadata).expect("JSON custom metadata");
            assert_eq!(metadata, http["metadata"], "the envelope's metadata");
            checked += 1;
        }
    }
    assert!(checked >= 4);

    // And through $all, the whole log in the same order with the same bytes.
    let mut all = client
        .read_all(&ReadAllOptions::default().position(StreamPosition::Start))
        .await
        .expect("a read of $all");
    let all = read_all_of(&mut all).await.expect("events");
    assert_eq!(all.len(), over_http.len());
    for (event, http) in all.iter().zip(&over_http) {
        let event = event.get_original_event();
        assert_eq!(
            event.position.commit,
            http["position"].as_u64().expect("a position")
        );
        assert_eq!(
            event.data.as_ref(),
            serde_json::to_vec(&http["data"]).expect("JSON").as_slice()
        );
    }
}
