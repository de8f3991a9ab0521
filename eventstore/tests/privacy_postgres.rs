//! The key vault against PostgreSQL: keys created under concurrent demand, from one
//! vault and from two (two processes), are one key per subject.

use std::collections::{HashMap, HashSet};

use eventstore::privacy::{KeyVault, PersonalFields, SEALED_MARKER};
use eventstore::testing::test_database;
use eventstore::{NewEvent, PostgresConfig, PostgresStore};
use futures::future::join_all;
use serde_json::{json, Value};

const TABLE: &[PersonalFields] = &[PersonalFields {
    event_type: "AddressGiven",
    object: "/address",
    fields: &["name", "line1"],
    subject: "/customer",
}];

fn event(customer: usize, n: usize) -> NewEvent {
    NewEvent::new(
        "AddressGiven",
        json!({
            "customer": format!("customer-{customer}"),
            "address": {"name": format!("Name {customer}"), "line1": format!("{n} Main St"), "country": "DE"},
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_seals_create_one_key_per_subject() {
    let db = test_database().await.expect("a test database");
    let store = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
        .await
        .expect("store");
    let one = KeyVault::connect(store.pool().clone())
        .await
        .expect("vault");
    // Another process: its own vault and cache on the same table.
    let two = KeyVault::new(store.pool().clone());
    let subjects = 60;
    let seals = (0..subjects * 5).map(|i| {
        let vault = if i % 2 == 0 { one.clone() } else { two.clone() };
        async move {
            let mut sealed = event(i % subjects, i);
            vault.seal(TABLE, &mut sealed).await.expect("sealed");
            (i % subjects, i, sealed)
        }
    });
    let sealed = join_all(seals).await;

    let mut key_of: HashMap<usize, HashSet<String>> = HashMap::new();
    for (customer, _, event) in &sealed {
        let data = event.data.to_value();
        let marker = &data["address"][SEALED_MARKER];
        assert_eq!(marker["subject"], json!(format!("customer-{customer}")));
        assert!(!data.to_string().contains("Main St"), "sealed: {data}");
        key_of
            .entry(*customer)
            .or_default()
            .insert(marker["key_id"].as_str().expect("a key id").to_owned());
    }
    assert_eq!(key_of.len(), subjects);
    for (customer, keys) in &key_of {
        assert_eq!(
            keys.len(),
            1,
            "customer {customer} was sealed under {keys:?}"
        );
    }
    let client = store.pool().get().await.expect("client");
    let rows: i64 = client
        .query_one("SELECT count(*) FROM privacy_keys", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, subjects as i64);

    // A third vault, with nothing cached, opens every event with the stored keys.
    let reader = KeyVault::new(store.pool().clone());
    let mut values: Vec<Value> = sealed.iter().map(|(_, _, e)| e.data.to_value()).collect();
    let erased = reader.open_all(values.iter_mut()).await.expect("opened");
    assert_eq!(erased, 0);
    for ((customer, n, _), value) in sealed.iter().zip(&values) {
        assert_eq!(value["address"]["name"], json!(format!("Name {customer}")));
        assert_eq!(value["address"]["line1"], json!(format!("{n} Main St")));
        assert_eq!(value["address"]["country"], json!("DE"));
    }
}
