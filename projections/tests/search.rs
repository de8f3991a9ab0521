//! The search read model against a real PostgreSQL log: relevance on a fixed
//! catalog (exact, misspelled and partial words), visibility and freshness of
//! updates, filters and facets against SQL counts over the catalog read model,
//! stable paging, and an index that resumes from its commit or is rebuilt when it
//! cannot be used.

#[path = "read_side/support.rs"]
#[allow(dead_code)] // The read side's helpers; this binary uses some of them.
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::{
    Currency, InventoryEvent, Money, ProductEvent, ProductId, Quantity, Sku, SkuVariant,
    WarehouseId,
};
use projections::search::{
    SearchConfig, SearchError, SearchIndex, SearchProgress, SearchRequest, SearchSort, SearchTask,
};
use support::{quick_runner, TestDb, TestResult};
use uuid::Uuid;

/// A folder under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        TempDir(std::env::temp_dir().join(format!("commerce-search-{}", Uuid::new_v4())))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const WAIT: Duration = Duration::from_secs(20);

fn quick_config(dir: &Path) -> SearchConfig {
    SearchConfig {
        writer_heap_bytes: 32 * 1024 * 1024,
        writer_threads: 1,
        idle_poll_interval: Duration::from_millis(50),
        retry_backoff_max: Duration::from_millis(200),
        catch_up_min_gap_events: 100,
        ..SearchConfig::new(dir)
    }
}

async fn start(db: &TestDb, dir: &Path) -> anyhow::Result<(SearchIndex, SearchTask)> {
    let (index, task) = SearchIndex::start(db.store.clone(), quick_config(dir), None).await?;
    caught_up(db, &index).await?;
    Ok((index, task))
}

async fn caught_up(db: &TestDb, index: &SearchIndex) -> TestResult {
    use eventstore::EventStore;
    let head = db.store.head().await?;
    anyhow::ensure!(
        index.wait_for(head, WAIT).await,
        "the index did not reach {head}: {:?}",
        index.status()
    );
    Ok(())
}

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

struct Item {
    title: &'static str,
    brand: &'static str,
    category: &'static [&'static str],
    description: &'static str,
    price: i64,
    colour: &'static str,
}

/// The fixed catalog of the relevance tests.
const CATALOG: &[Item] = &[
    Item {
        title: "Trail Running Shoe",
        brand: "Northwind",
        category: &["Shoes", "Running"],
        description: "Grippy sole for muddy trails.",
        price: 12_999,
        colour: "red",
    },
    Item {
        title: "Road Running Shoe",
        brand: "Acme",
        category: &["Shoes", "Running"],
        description: "Light and fast on asphalt.",
        price: 9_999,
        colour: "blue",
    },
    Item {
        title: "Leather Hiking Boot",
        brand: "Globex",
        category: &["Shoes", "Hiking"],
        description: "Waterproof leather for long walks.",
        price: 17_999,
        colour: "brown",
    },
    Item {
        title: "Waterproof Rain Jacket",
        brand: "Umbrella",
        category: &["Clothing", "Jackets"],
        description: "Sealed seams keep you dry.",
        price: 8_999,
        colour: "yellow",
    },
    Item {
        title: "Merino Wool Sweater",
        brand: "Initech",
        category: &["Clothing", "Knitwear"],
        description: "Soft and warm merino wool.",
        price: 7_499,
        colour: "grey",
    },
    Item {
        title: "Canvas Backpack",
        brand: "Hooli",
        category: &["Bags"],
        description: "Twenty litres with a laptop sleeve.",
        price: 5_999,
        colour: "green",
    },
    Item {
        title: "Espresso Machine",
        brand: "Acme",
        category: &["Kitchen", "Coffee"],
        description: "Fifteen bar pump, steam wand for milk.",
        price: 24_999,
        colour: "silver",
    },
    Item {
        title: "Chef Knife",
        brand: "Globex",
        category: &["Kitchen", "Knives"],
        description: "Forged steel blade, twenty centimetres.",
        price: 4_999,
        colour: "black",
    },
    Item {
        title: "Yoga Mat",
        brand: "Northwind",
        category: &["Sports"],
        description: "Non-slip mat for yoga and pilates.",
        price: 2_999,
        colour: "purple",
    },
    Item {
        title: "Bluetooth Headphones",
        brand: "Hooli",
        category: &["Electronics", "Audio"],
        description: "Noise cancelling over-ear headphones.",
        price: 19_999,
        colour: "black",
    },
];

struct Seeded {
    ids: Vec<ProductId>,
    skus: Vec<Sku>,
}

/// Creates, prices, stocks and publishes every item of `CATALOG`.
async fn seed(db: &TestDb) -> anyhow::Result<Seeded> {
    let mut seeded = Seeded {
        ids: Vec::new(),
        skus: Vec::new(),
    };
    for (n, item) in CATALOG.iter().enumerate() {
        let id = ProductId::from_uuid(Uuid::new_v4());
        let sku = Sku::parse(format!("CAT-{n}")).unwrap();
        let events = vec![
            ProductEvent::ProductCreated {
                product_id: id,
                title: item.title.into(),
                description: item.description.into(),
                brand: item.brand.into(),
                category: item.category.iter().map(|s| s.to_string()).collect(),
                skus: vec![SkuVariant {
                    sku: sku.clone(),
                    attributes: BTreeMap::from([("colour".to_owned(), item.colour.to_owned())]),
                }],
            },
            ProductEvent::PriceSet {
                sku: None,
                price: Money::new(item.price, eur()),
            },
            ProductEvent::ProductPublished {},
        ];
        db.append(&format!("product-{id}"), &events).await?;
        receive(db, &sku, 5).await?;
        seeded.ids.push(id);
        seeded.skus.push(sku);
    }
    Ok(seeded)
}

async fn receive(db: &TestDb, sku: &Sku, units: u32) -> anyhow::Result<u64> {
    db.append(
        &format!("inventory-{sku}"),
        &[InventoryEvent::StockReceived {
            warehouse: WarehouseId::parse("WH1").unwrap(),
            quantity: Quantity::new(units).unwrap(),
        }],
    )
    .await
}

fn titles(index: &SearchIndex, request: &SearchRequest) -> Vec<String> {
    index
        .search(request)
        .expect("the search runs")
        .hits
        .into_iter()
        .map(|h| h.title)
        .collect()
}

fn top(index: &SearchIndex, text: &str) -> Option<String> {
    titles(index, &SearchRequest::new(text)).into_iter().next()
}

#[tokio::test]
async fn exact_misspelled_and_partial_queries_find_the_expected_products_first() -> TestResult {
    let db = TestDb::new().await?;
    seed(&db).await?;
    let dir = TempDir::new();
    let (index, task) = start(&db, dir.path()).await?;
    let cases = [
        // Exact words, the title weighing more than the description.
        ("trail running shoe", "Trail Running Shoe"),
        ("espresso machine", "Espresso Machine"),
        ("hiking boot", "Leather Hiking Boot"),
        ("merino", "Merino Wool Sweater"),
        // Typos: one edit in words up to seven letters, two beyond.
        ("espreso", "Espresso Machine"),
        ("backpak", "Canvas Backpack"),
        ("hedphones", "Bluetooth Headphones"),
        ("bluetoth headphnes", "Bluetooth Headphones"),
        ("waterprof jaket", "Waterproof Rain Jacket"),
        // Partial last words, as typed.
        ("espr", "Espresso Machine"),
        ("leather hik", "Leather Hiking Boot"),
        ("yoga m", "Yoga Mat"),
    ];
    for (query, expected) in cases {
        assert_eq!(
            top(&index, query).as_deref(),
            Some(expected),
            "query {query:?}"
        );
    }
    // A brand finds its products; words match across fields.
    let acme = titles(&index, &SearchRequest::new("acme"));
    assert_eq!(acme.len(), 2, "{acme:?}");
    assert!(acme.contains(&"Espresso Machine".to_owned()));
    let running = titles(&index, &SearchRequest::new("running northwind"));
    assert_eq!(running, ["Trail Running Shoe"]);
    // Short words must be exact: "mat" does not find "hat" or "cat".
    assert_eq!(titles(&index, &SearchRequest::new("mat")), ["Yoga Mat"]);
    assert!(titles(&index, &SearchRequest::new("zzzzzz")).is_empty());
    // Suggestions complete the last word.
    let suggestions = index.suggest("run", 5)?;
    let suggested: Vec<_> = suggestions.iter().map(|s| s.title.as_str()).collect();
    assert_eq!(suggested.len(), 2, "{suggested:?}");
    assert!(suggested.contains(&"Trail Running Shoe") && suggested.contains(&"Road Running Shoe"));
    task.stop().await;
    Ok(())
}

#[tokio::test]
async fn updates_show_within_a_second_and_hidden_products_are_never_returned() -> TestResult {
    let db = TestDb::new().await?;
    let seeded = seed(&db).await?;
    let dir = TempDir::new();
    let (index, task) = start(&db, dir.path()).await?;
    let knife = seeded.ids[7];
    let stream = format!("product-{knife}");
    let visible = |index: &SearchIndex| top(index, "chef knife").is_some();
    assert!(visible(&index));

    let fresh = Duration::from_secs(1);
    for (event, shown) in [
        (ProductEvent::ProductUnpublished {}, false),
        (ProductEvent::ProductPublished {}, true),
        (ProductEvent::ProductDiscontinued {}, false),
    ] {
        let position = db.append(&stream, std::slice::from_ref(&event)).await?;
        assert!(
            index.wait_for(position, fresh).await,
            "{event:?} not applied within 1 s"
        );
        assert_eq!(visible(&index), shown, "after {event:?}");
    }
    // Discontinued products stay out, whatever the query or filter.
    let everything = SearchRequest {
        limit: 100,
        ..SearchRequest::new("")
    };
    let all = titles(&index, &everything);
    assert_eq!(all.len(), CATALOG.len() - 1);
    assert!(!all.contains(&"Chef Knife".to_owned()));

    // A price change moves the product between price ranges.
    let mat = seeded.ids[8];
    let cheap = SearchRequest {
        currency: Some("EUR".into()),
        price_max: Some(3_000),
        ..SearchRequest::new("")
    };
    assert_eq!(titles(&index, &cheap), ["Yoga Mat"]);
    let position = db
        .append(
            &format!("product-{mat}"),
            &[ProductEvent::PriceSet {
                sku: None,
                price: Money::new(3_500, eur()),
            }],
        )
        .await?;
    assert!(index.wait_for(position, fresh).await);
    assert!(titles(&index, &cheap).is_empty());

    // Stock crossing zero: out of the in-stock results, then back.
    let in_stock = SearchRequest {
        in_stock_only: true,
        ..SearchRequest::new("yoga")
    };
    assert_eq!(titles(&index, &in_stock), ["Yoga Mat"]);
    let sku = &seeded.skus[8];
    let position = db
        .append(
            &format!("inventory-{sku}"),
            &[InventoryEvent::StockAdjusted {
                warehouse: WarehouseId::parse("WH1").unwrap(),
                delta: -5,
                reason: "count".into(),
            }],
        )
        .await?;
    assert!(index.wait_for(position, fresh).await);
    assert!(titles(&index, &in_stock).is_empty());
    assert_eq!(titles(&index, &SearchRequest::new("yoga")), ["Yoga Mat"]);
    let position = receive(&db, sku, 1).await?;
    assert!(index.wait_for(position, fresh).await);
    assert_eq!(titles(&index, &in_stock), ["Yoga Mat"]);
    task.stop().await;
    Ok(())
}

#[tokio::test]
async fn filters_and_facet_counts_agree_with_sql_over_the_catalog() -> TestResult {
    let db = TestDb::new().await?;
    let mut shop = support::shop(11);
    db.append_workload(&mut shop, 3_000).await?;
    db.project(quick_runner(500)).await?;
    let dir = TempDir::new();
    let (index, task) = start(&db, dir.path()).await?;
    let client = db.client().await?;
    let count = |sql: &'static str| {
        let client = &client;
        async move { anyhow::Ok(client.query_one(sql, &[]).await?.get::<_, i64>(0) as u64) }
    };

    let all = index.search(&SearchRequest {
        currency: Some("EUR".into()),
        ..SearchRequest::new("")
    })?;
    let published =
        count("SELECT count(*) FROM read_models.catalog_products WHERE status = 'published'")
            .await?;
    assert!(published > 0);
    assert_eq!(all.total, published);

    let brands = client
        .query(
            "SELECT brand, count(*) FROM read_models.catalog_products \
             WHERE status = 'published' GROUP BY brand",
            &[],
        )
        .await?;
    let expected: BTreeMap<String, u64> = brands
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect();
    let found: BTreeMap<String, u64> = all
        .facets
        .brands
        .iter()
        .map(|f| (f.value.clone(), f.count))
        .collect();
    assert_eq!(found, expected);

    let categories = client
        .query(
            "SELECT category[1], count(*) FROM read_models.catalog_products \
             WHERE status = 'published' GROUP BY 1",
            &[],
        )
        .await?;
    let expected: BTreeMap<String, u64> = categories
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect();
    let found: BTreeMap<String, u64> = all
        .facets
        .categories
        .iter()
        .map(|f| (f.value.clone(), f.count))
        .collect();
    assert_eq!(found, expected);

    // Price buckets: each product's lowest EUR price over its SKUs.
    let prices = client
        .query(
            "SELECT min(c.price_minor) FROM read_models.catalog_prices c \
             JOIN read_models.catalog_products p USING (product_id) \
             WHERE p.status = 'published' AND c.currency = 'EUR' GROUP BY c.product_id",
            &[],
        )
        .await?;
    let mut expected = vec![0u64; projections::search::PRICE_BUCKET_EDGES.len()];
    for row in &prices {
        let minor = row.get::<_, i64>(0) as u64;
        let bucket = projections::search::PRICE_BUCKET_EDGES.partition_point(|&e| e <= minor) - 1;
        expected[bucket] += 1;
    }
    let found: Vec<u64> = all.facets.price_buckets.iter().map(|b| b.count).collect();
    assert_eq!(found, expected);

    let in_stock = count(
        "SELECT count(*) FROM read_models.catalog_products p WHERE p.status = 'published' \
         AND EXISTS (SELECT 1 FROM read_models.catalog_skus k JOIN read_models.catalog_stock s \
         ON s.sku = k.sku WHERE k.product_id = p.product_id AND s.available > 0)",
    )
    .await?;
    assert_eq!(all.facets.in_stock, in_stock);
    let filtered = index.search(&SearchRequest {
        in_stock_only: true,
        ..SearchRequest::new("")
    })?;
    assert_eq!(filtered.total, in_stock);

    // Filters together: a brand, a category prefix and a price range.
    let filtered = index.search(&SearchRequest {
        brand: Some("Acme".into()),
        category: vec!["Shoes".into()],
        currency: Some("EUR".into()),
        price_min: Some(1_000),
        price_max: Some(10_000),
        ..SearchRequest::new("")
    })?;
    let expected = count(
        "SELECT count(*) FROM read_models.catalog_products p WHERE p.status = 'published' \
         AND p.brand = 'Acme' AND p.category[1] = 'Shoes' AND (SELECT min(price_minor) \
         FROM read_models.catalog_prices c WHERE c.product_id = p.product_id \
         AND c.currency = 'EUR') BETWEEN 1000 AND 10000",
    )
    .await?;
    assert_eq!(filtered.total, expected);
    let attribute = index.search(&SearchRequest {
        attributes: vec![("size".into(), "41".into())],
        ..SearchRequest::new("")
    })?;
    let expected = count(
        "SELECT count(DISTINCT k.product_id) FROM read_models.catalog_skus k \
         JOIN read_models.catalog_products p USING (product_id) \
         WHERE p.status = 'published' AND k.attributes->>'size' = '41'",
    )
    .await?;
    assert_eq!(attribute.total, expected);
    task.stop().await;
    Ok(())
}

#[tokio::test]
async fn pages_follow_one_stable_order() -> TestResult {
    let db = TestDb::new().await?;
    let mut shop = support::shop(5);
    db.append_workload(&mut shop, 1_000).await?;
    // More products than the relevance window, all with the word "model" (a shop
    // of its own: other SKUs).
    let mut catalog = projections::workload::Shop::new(projections::workload::ShopConfig {
        seed: 5,
        shard: 1,
        products: 0,
        ..projections::workload::ShopConfig::default()
    });
    let appends = catalog.catalog_appends(150);
    for result in eventstore::EventStore::append_batch(&db.store, appends).await {
        result?;
    }
    let dir = TempDir::new();
    let (index, task) = start(&db, dir.path()).await?;
    for sort in [
        SearchSort::Relevance,
        SearchSort::PriceAscending,
        SearchSort::PriceDescending,
        SearchSort::Newest,
    ] {
        let request = |offset, limit| SearchRequest {
            currency: Some("EUR".into()),
            sort,
            offset,
            limit,
            ..SearchRequest::new("model")
        };
        // Two pages of 100: by relevance, the first is the window ranked again by
        // field (see `RESCORE_WINDOW`), and pages of 7 cross its end.
        let mut whole = index.search(&request(0, 100))?;
        whole.hits.extend(index.search(&request(100, 100))?.hits);
        assert!(whole.hits.len() > 100);
        let mut paged = Vec::new();
        for page in 0..whole.hits.len().div_ceil(7) {
            paged.extend(index.search(&request(page * 7, 7))?.hits);
        }
        let ids = |hits: &[projections::search::SearchHit]| {
            hits.iter().map(|h| h.product_id).collect::<Vec<_>>()
        };
        assert_eq!(ids(&paged), ids(&whole.hits), "{sort:?}");
        if sort == SearchSort::PriceAscending {
            let prices: Vec<i64> = whole.hits.iter().map(|h| h.price_from["EUR"]).collect();
            assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}");
        }
    }
    task.stop().await;
    Ok(())
}

#[test]
fn bad_requests_are_refused() {
    let bad = [
        SearchRequest {
            limit: 0,
            ..SearchRequest::new("x")
        },
        SearchRequest {
            limit: 101,
            ..SearchRequest::new("x")
        },
        SearchRequest {
            offset: 10_000,
            ..SearchRequest::new("x")
        },
        SearchRequest {
            sort: SearchSort::PriceAscending,
            ..SearchRequest::new("x")
        },
        SearchRequest {
            price_min: Some(5),
            ..SearchRequest::new("x")
        },
        SearchRequest {
            currency: Some("EUR".into()),
            price_min: Some(9),
            price_max: Some(5),
            ..SearchRequest::new("x")
        },
        SearchRequest {
            currency: Some("euro".into()),
            ..SearchRequest::new("x")
        },
        SearchRequest::new("x".repeat(201)),
    ];
    for request in bad {
        assert!(
            matches!(request.validate(), Err(SearchError::InvalidQuery { .. })),
            "{request:?} was accepted"
        );
    }
    assert!(SearchSort::parse("cheapest").is_err());
}

#[tokio::test]
async fn an_index_resumes_from_its_commit_and_is_rebuilt_when_unusable() -> TestResult {
    let db = TestDb::new().await?;
    let seeded = seed(&db).await?;
    let dir = TempDir::new();
    let reports = Arc::new(Mutex::new(Vec::<SearchProgress>::new()));
    let progress = {
        let reports = reports.clone();
        Arc::new(move |p: SearchProgress| reports.lock().unwrap().push(p))
    };
    let start_with_progress = || async {
        reports.lock().unwrap().clear();
        let (index, task) = SearchIndex::start(
            db.store.clone(),
            quick_config(dir.path()),
            Some(progress.clone()),
        )
        .await?;
        caught_up(&db, &index).await?;
        anyhow::Ok((index, task))
    };
    let (index, task) = start_with_progress().await?;
    let built = index.status().position;
    assert!(reports
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.done && p.position == built));
    task.stop().await;

    // Restarted: it goes on from its commit, not from the start.
    let id = seeded.ids[0];
    db.append(
        &format!("product-{id}"),
        &[ProductEvent::ProductUnpublished {}],
    )
    .await?;
    let (index, task) = start_with_progress().await?;
    assert!(top(&index, "trail running").is_none());
    let status = index.status();
    assert_eq!(status.catch_up_head, status.position, "{status:?}");
    let applied: Vec<u64> = reports.lock().unwrap().iter().map(|p| p.position).collect();
    assert!(applied.iter().all(|&p| p > built), "{applied:?}");
    task.stop().await;

    // Damaged: rebuilt from the log, with the same answers.
    std::fs::write(dir.path().join("meta.json"), b"{ not json")?;
    let (index, task) = start_with_progress().await?;
    assert!(reports.lock().unwrap().iter().any(|p| p.done));
    assert!(top(&index, "trail running").is_none());
    assert_eq!(top(&index, "espresso").as_deref(), Some("Espresso Machine"));
    task.stop().await;

    // Another log under the same folder: its checkpoint is not in that log.
    let other = TestDb::new().await?;
    seed(&other).await?;
    let (index, task) =
        SearchIndex::start(other.store.clone(), quick_config(dir.path()), None).await?;
    caught_up(&other, &index).await?;
    assert_eq!(
        top(&index, "trail running").as_deref(),
        Some("Trail Running Shoe")
    );
    task.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_build_from_empty_is_merged_into_one_segment_per_search_thread_and_keeps_its_checkpoint(
) -> TestResult {
    let db = TestDb::new().await?;
    let seeded = seed(&db).await?;
    let dir = TempDir::new();
    // A commit every few products, each a segment of its own.
    let config = || SearchConfig {
        catch_up_batch_max_events: 4,
        catch_up_commit_max_held: 2,
        search_threads: 1,
        ..quick_config(dir.path())
    };
    let (index, task) = SearchIndex::start(db.store.clone(), config(), None).await?;
    caught_up(&db, &index).await?;
    assert_eq!(top(&index, "espresso").as_deref(), Some("Espresso Machine"));
    assert!(
        index.wait_for_merges(WAIT).await,
        "still merging: {:?}",
        index.status()
    );
    let merged = index.status();
    assert_eq!(merged.segments, 1, "{merged:?}");
    assert_eq!(top(&index, "espresso").as_deref(), Some("Espresso Machine"));
    let everything = index.search(&SearchRequest::new(""))?;
    assert_eq!(everything.total, seeded.ids.len() as u64);
    task.stop().await;

    // The merge kept the commit's checkpoint: a restart starts where the build
    // ended, on the merged segment, rather than rebuilding from the log.
    let (index, task) = SearchIndex::start(db.store.clone(), config(), None).await?;
    let restarted = index.status();
    assert_eq!(restarted.position, merged.position, "{restarted:?}");
    assert_eq!(restarted.segments, 1, "{restarted:?}");
    caught_up(&db, &index).await?;
    assert!(!index.status().merging);
    assert_eq!(
        index.search(&SearchRequest::new(""))?.total,
        everything.total
    );
    task.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_word_in_the_title_outranks_the_same_word_repeated_in_the_description() -> TestResult {
    let db = TestDb::new().await?;
    // Over all the text the cable says "lamp" five times and the lamp once; by
    // field, the title weighs three times the description.
    for (n, (title, description)) in [
        ("Desk Lamp", "Bright and adjustable."),
        ("Power Cable", "For a lamp: lamp, lamp, lamp or lamp."),
    ]
    .into_iter()
    .enumerate()
    {
        let id = ProductId::from_uuid(Uuid::new_v4());
        let sku = Sku::parse(format!("L-{n}")).unwrap();
        let mut events = listed(id, title, &sku);
        if let ProductEvent::ProductCreated {
            description: text, ..
        } = &mut events[0]
        {
            *text = description.to_owned();
        }
        db.append(&format!("product-{id}"), &events).await?;
    }
    let dir = TempDir::new();
    let (index, task) = start(&db, dir.path()).await?;
    let found = index.search(&SearchRequest::new("lamp"))?;
    let titles: Vec<&str> = found.hits.iter().map(|h| h.title.as_str()).collect();
    assert_eq!(titles, ["Desk Lamp", "Power Cable"]);
    assert!(
        found.hits[0].score > found.hits[1].score,
        "{:?}",
        found.hits
    );
    task.stop().await;
    Ok(())
}

/// A published product with one SKU, priced in EUR.
fn listed(id: ProductId, title: &str, sku: &Sku) -> Vec<ProductEvent> {
    vec![
        ProductEvent::ProductCreated {
            product_id: id,
            title: title.into(),
            description: String::new(),
            brand: "Acme".into(),
            category: vec!["Tools".into()],
            skus: vec![SkuVariant {
                sku: sku.clone(),
                attributes: BTreeMap::new(),
            }],
        },
        ProductEvent::PriceSet {
            sku: None,
            price: Money::new(1_000, eur()),
        },
        ProductEvent::ProductPublished {},
    ]
}

#[tokio::test]
async fn stock_received_before_its_product_exists_counts_once_the_product_does() -> TestResult {
    let db = TestDb::new().await?;
    let in_stock = |text: &str| SearchRequest {
        in_stock_only: true,
        ..SearchRequest::new(text)
    };
    // Received and committed on its own, before any product has the SKU.
    let early = Sku::parse("EARLY-1").unwrap();
    receive(&db, &early, 3).await?;
    let dir = TempDir::new();
    let (index, task) = start(&db, dir.path()).await?;
    let id = ProductId::from_uuid(Uuid::new_v4());
    let position = db
        .append(&format!("product-{id}"), &listed(id, "Early Lathe", &early))
        .await?;
    assert!(index.wait_for(position, WAIT).await);
    assert_eq!(titles(&index, &in_stock("lathe")), ["Early Lathe"]);
    // The product holds the stock now: taking it to zero takes the product out.
    let position = db
        .append(
            &format!("inventory-{early}"),
            &[InventoryEvent::StockAdjusted {
                warehouse: WarehouseId::parse("WH1").unwrap(),
                delta: -3,
                reason: "count".into(),
            }],
        )
        .await?;
    assert!(index.wait_for(position, WAIT).await);
    assert!(titles(&index, &in_stock("lathe")).is_empty());
    assert_eq!(
        titles(&index, &SearchRequest::new("lathe")),
        ["Early Lathe"]
    );
    task.stop().await;

    // The same history caught up in one pass, and a second such SKU added later.
    let late = Sku::parse("EARLY-2").unwrap();
    receive(&db, &late, 2).await?;
    db.append(
        &format!("product-{id}"),
        &[ProductEvent::SkuAdded {
            sku: late.clone(),
            attributes: BTreeMap::new(),
        }],
    )
    .await?;
    let other = Sku::parse("EARLY-3").unwrap();
    receive(&db, &other, 4).await?;
    let other_id = ProductId::from_uuid(Uuid::new_v4());
    db.append(
        &format!("product-{other_id}"),
        &listed(other_id, "Early Drill", &other),
    )
    .await?;
    for dir in [dir, TempDir::new()] {
        // Resumed from its commit, then rebuilt from the start.
        let (index, task) = start(&db, dir.path()).await?;
        assert_eq!(titles(&index, &in_stock("lathe")), ["Early Lathe"]);
        assert_eq!(titles(&index, &in_stock("drill")), ["Early Drill"]);
        task.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_last_word_with_many_completions_matches_every_one() -> TestResult {
    let db = TestDb::new().await?;
    // 100 model numbers 1000..=1099: "10" completes to all of them (more than are
    // listed as terms: the automaton query), "105" to ten (listed).
    for n in 1_000..1_100 {
        let id = ProductId::from_uuid(Uuid::new_v4());
        let sku = Sku::parse(format!("W-{n}")).unwrap();
        db.append(
            &format!("product-{id}"),
            &listed(id, &format!("Widget {n}"), &sku),
        )
        .await?;
    }
    let dir = TempDir::new();
    let (index, task) = start(&db, dir.path()).await?;
    let total = |text: &str| index.search(&SearchRequest::new(text)).map(|r| r.total);
    assert_eq!(total("widget 10")?, 100);
    assert_eq!(total("widget 105")?, 10);
    assert_eq!(total("widgets")?, 100, "one typo away");
    // Four digits allow one typo: 10x0, 105x and 1005 (a swap) are all near 1050,
    // but the exact number comes first.
    let near = index.search(&SearchRequest::new("widget 1050"))?;
    assert_eq!(near.total, 20);
    assert_eq!(near.hits[0].title, "Widget 1050");
    task.stop().await;
    Ok(())
}
