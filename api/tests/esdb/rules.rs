//! Who may do what: commerce streams are the command handlers' alone, credentials are
//! checked on every call, integrators write their own streams only.

use esdb::{
    AppendToStreamOptions, DeleteStreamOptions, Error, ReadStreamOptions, StreamMetadata,
    TombstoneStreamOptions,
};
use eventstore::EventStore;
use serde_json::json;

use crate::http_support::SKU;
use crate::support::{json_event, read_stream, spawn, INTEGRATOR};

#[tokio::test]
async fn commerce_streams_refuse_appends_deletes_tombstones_and_truncation_and_nothing_is_written()
{
    let app = spawn().await;
    let product_id = app.http.seed_catalog().await;
    let client = app.admin();
    let head = app.head().await;
    let product = format!("product-{product_id}");
    let inventory = format!("inventory-{SKU}");
    for stream in [
        product.as_str(),
        inventory.as_str(),
        "order-1",
        "cart-1",
        "payment-1",
        "checkout-1",
    ] {
        let error = client
            .append_to_stream(
                stream,
                &AppendToStreamOptions::default(),
                json_event("Forged", json!({})),
            )
            .await
            .expect_err("commerce streams are written by commands only");
        assert!(matches!(error, Error::AccessDenied), "{stream}: {error:?}");
    }
    let error = client
        .delete_stream(inventory.as_str(), &DeleteStreamOptions::default())
        .await
        .expect_err("no delete");
    assert!(matches!(error, Error::AccessDenied), "{error:?}");
    let error = client
        .tombstone_stream(product.as_str(), &TombstoneStreamOptions::default())
        .await
        .expect_err("no tombstone");
    assert!(matches!(error, Error::AccessDenied), "{error:?}");
    let error = client
        .set_stream_metadata(
            product.as_str(),
            &Default::default(),
            &StreamMetadata::builder().max_count(1).build(),
        )
        .await
        .expect_err("no truncation");
    assert!(matches!(error, Error::AccessDenied), "{error:?}");
    assert_eq!(app.head().await, head, "nothing was written");
    // And every commerce event still reads.
    let stored = app
        .store()
        .read_stream(&inventory, 1, eventstore::Direction::Forward, 1_000)
        .await
        .expect("the log");
    assert!(!stored.is_empty());
    assert_eq!(
        read_stream(&client, &inventory)
            .await
            .expect("a read")
            .len(),
        stored.len()
    );
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_refused_on_every_call() {
    let app = spawn().await;
    let head = app.head().await;
    for client in [
        app.client_as(("ops", "not-the-password")),
        app.client_as(("nobody", "whatever")),
        app.anonymous(),
    ] {
        let error = client
            .append_to_stream(
                "integration-x",
                &AppendToStreamOptions::default(),
                json_event("X", json!({})),
            )
            .await
            .expect_err("refused");
        assert!(matches!(error, Error::AccessDenied), "{error:?}");
        let error = client
            .read_stream("integration-x", &ReadStreamOptions::default())
            .await
            .expect_err("refused");
        assert!(matches!(error, Error::AccessDenied), "{error:?}");
    }
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn an_integrator_writes_its_own_category_only() {
    let app = spawn().await;
    let acme = app.client_as(INTEGRATOR);
    acme.append_to_stream(
        "acme-sync",
        &AppendToStreamOptions::default(),
        json_event("Synced", json!({})),
    )
    .await
    .expect("its own stream");
    acme.set_stream_metadata(
        "acme-sync",
        &Default::default(),
        &StreamMetadata::builder().max_count(10).build(),
    )
    .await
    .expect("its own stream's metadata");
    let error = acme
        .append_to_stream(
            "integration-other",
            &AppendToStreamOptions::default(),
            json_event("X", json!({})),
        )
        .await
        .expect_err("another category");
    assert!(matches!(error, Error::AccessDenied), "{error:?}");
    assert_eq!(
        read_stream(&acme, "acme-sync").await.expect("a read").len(),
        1
    );
}
