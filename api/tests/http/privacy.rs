//! Crypto-shredding: personal fields are sealed in the log, readable through the API
//! and the read models, and erased everywhere once the customer is forgotten, while
//! totals, SKUs and the hash chain stay intact.

use projections::{Projection, RebuildOptions};
use serde_json::{json, Value};

use crate::support::*;

const EMAIL: &str = "ada.secretmail@example.com";
const NAME: &str = "Ada Zyxwvutsname";
const PHONE: &str = "+44 20 7946 0991";

fn address() -> Value {
    json!({"name": NAME, "line1": "12 Hidden Lane", "city": "London",
           "postal_code": "SW1Y 4JH", "country": "GB", "email": EMAIL, "phone": PHONE})
}

/// Rows of every table of the database (read models, the log, keys, trails, ...)
/// whose text holds `needle`, as `schema.table` names.
async fn tables_containing(app: &TestApp, needle: &str) -> Vec<String> {
    let client = app.store.connection().await.expect("a connection");
    let tables = client
        .query(
            "SELECT table_schema, table_name FROM information_schema.tables \
             WHERE table_type = 'BASE TABLE' \
               AND table_schema NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .expect("the tables");
    assert!(tables.len() > 10, "every component's tables exist");
    let mut found = Vec::new();
    for row in tables {
        let (schema, table): (String, String) = (row.get(0), row.get(1));
        let sql = format!(
            "SELECT count(*) FROM \"{schema}\".\"{table}\" t WHERE t::text ILIKE '%' || $1 || '%'"
        );
        let count: i64 = client
            .query_one(&sql, &[&needle])
            .await
            .expect("a scan")
            .get(0);
        if count > 0 {
            found.push(format!("{schema}.{table}"));
        }
    }
    found
}

async fn rebuild_every_projection(app: &TestApp) {
    projections::rebuild(
        &app.store,
        &Projection::ALL,
        &RebuildOptions {
            fresh: true,
            ..RebuildOptions::default()
        },
        |_| {},
    )
    .await
    .expect("a rebuild");
}

#[tokio::test]
async fn a_forgotten_customer_is_erased_everywhere_and_the_chain_still_verifies() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let ada = customer("ada");
    // The saga places the order under the checkout's id, and pays for it.
    let (_cart, order) = app.complete_checkout(&ada, product, 2, address()).await;

    // Sealed in the log, open to the customer and in the read models.
    let view = app.get(&format!("/v1/orders/{order}"), &ada).await;
    let view = view.ok(200).clone();
    assert_eq!(view["shipping_address"]["email"], EMAIL);
    assert_eq!(view["shipping_address"]["name"], NAME);
    let customer_id = view["customer_id"].as_str().expect("a customer").to_owned();
    let stored = app.events_after(0).await;
    let placed_event = stored
        .iter()
        .find(|e| e["event_type"] == "OrderPlaced")
        .expect("the order's event");
    assert!(placed_event["data"]["shipping_address"]["$pii"].is_object());
    assert_eq!(placed_event["data"]["shipping_address"]["country"], "GB");
    assert_eq!(placed_event["data"]["total"]["minor"], 2 * PRICE_MINOR);
    rebuild_every_projection(&app).await;
    let client = app.store.connection().await.expect("a connection");
    let in_model: Value = client
        .query_one(
            "SELECT shipping_address FROM read_models.orders WHERE order_id = $1::text::uuid",
            &[&order],
        )
        .await
        .expect("the order's row")
        .get(0);
    assert_eq!(in_model["email"], EMAIL);
    assert_eq!(
        tables_containing(&app, EMAIL).await,
        ["read_models.orders"],
        "only the read model holds the e-mail in clear before the erasure"
    );

    // Only admins forget.
    app.post(
        &format!("/v1/admin/customers/{customer_id}/forget"),
        &ada,
        json!({}),
    )
    .await
    .problem(403, "forbidden");
    let forgotten = app
        .post(
            &format!("/v1/admin/customers/{customer_id}/forget"),
            &admin(),
            json!({}),
        )
        .await;
    let forgotten = forgotten.ok(200);
    assert_eq!(forgotten["key_destroyed"], true);
    assert_eq!(forgotten["orders_erased"], 1);

    rebuild_every_projection(&app).await;
    for needle in [EMAIL, NAME, PHONE, "Hidden Lane"] {
        assert_eq!(
            tables_containing(&app, needle).await,
            Vec::<String>::new(),
            "{needle} is still in clear"
        );
    }
    let in_model: Value = client
        .query_one(
            "SELECT shipping_address FROM read_models.orders WHERE order_id = $1::text::uuid",
            &[&order],
        )
        .await
        .expect("the order's row")
        .get(0);
    assert_eq!(in_model["email"], "[erased]");
    assert_eq!(in_model["country"], "GB");

    // Replays show the fields erased, the rest intact.
    let view = app.get(&format!("/v1/orders/{order}"), &ada).await;
    let view = view.ok(200);
    assert_eq!(view["shipping_address"]["name"], "[erased]");
    assert_eq!(view["shipping_address"]["email"], "[erased]");
    assert_eq!(view["shipping_address"]["country"], "GB");
    assert_eq!(view["total"]["minor"], 2 * PRICE_MINOR);
    assert_eq!(view["lines"][0]["sku"], SKU);
    let travelled = app
        .get(&format!("/v1/audit/aggregates/order-{order}"), &auditor())
        .await;
    let travelled = travelled.ok(200);
    assert_eq!(
        travelled["state"]["data"]["shipping_address"]["phone"],
        "[erased]"
    );

    let verified = app.get("/v1/audit/verify", &auditor()).await;
    let verified = verified.ok(200);
    assert_eq!(verified["intact"], true, "{verified}");
    assert_eq!(verified["checked"], app.head().await);

    let again = app
        .post(
            &format!("/v1/admin/customers/{customer_id}/forget"),
            &admin(),
            json!({}),
        )
        .await;
    assert_eq!(again.ok(200)["key_destroyed"], false);

    let trail = app.get("/v1/audit/trail", &auditor()).await;
    let trail = trail.ok(200);
    let forgets: Vec<&Value> = trail["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "privacy.forget")
        .collect();
    assert_eq!(forgets.len(), 2);
    assert_eq!(forgets[0]["actor"], "admin:ops");
    assert_eq!(forgets[0]["details"]["customer_id"], customer_id);
    assert!(trail["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .any(|e| e["action"] == "audit.verify" && e["actor"] == "auditor:audit"));
}

#[tokio::test]
async fn forgetting_refuses_a_bad_id_and_the_trail_is_for_staff() {
    let app = spawn_app().await;
    app.post("/v1/admin/customers/not-a-uuid/forget", &admin(), json!({}))
        .await
        .problem(400, "invalid-parameter");
    app.get("/v1/audit/trail", &customer("ada"))
        .await
        .problem(403, "forbidden");
    app.get("/v1/audit/trail?limit=0", &auditor())
        .await
        .problem(400, "invalid-parameter");
}
