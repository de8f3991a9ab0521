//! `commerce bench search`: a generated catalog (1,000,000 products by default) in
//! the log, the search index built from it, then a mix of keyword, typo, filter and
//! facet queries. Reports the build rate (products/s from the log to an index that
//! answers searches; the merge of its segments that follows in the background is
//! timed apart, and the queries run after it) and query latency p50/p99, against
//! one-word queries of the catalog's own words in the same run (the same path: typo
//! and prefix expansion of the word, facets).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use eventstore::{AppendRequest, EventStore, PostgresConfig, PostgresStore, ScratchDatabase};
use projections::search::{SearchConfig, SearchIndex, SearchRequest, SearchSort};
use projections::workload::{Shop, ShopConfig};
use serde_json::json;

use super::{round2, Percentiles};

/// Shops appending side by side (disjoint streams).
const SHOPS: u32 = 2;
/// Products per generated chunk of a shop.
const CHUNK_PRODUCTS: usize = 2_000;
/// Appends per `append_batch` call (one group commit each).
const APPEND_BATCH_APPENDS: usize = 1_000;
/// Longest the index build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Queries run untimed first, so caches are warm.
const WARM_UP_QUERIES: usize = 200;

const BRANDS: [&str; 6] = [
    "Acme",
    "Northwind",
    "Umbrella",
    "Globex",
    "Initech",
    "Hooli",
];
const WORDS: [&str; 16] = [
    "sneaker",
    "runner",
    "boot",
    "backpack",
    "tote",
    "shirt",
    "polo",
    "beanie",
    "cap",
    "waterproof",
    "vintage",
    "leather",
    "canvas",
    "winter",
    "trail",
    "premium",
];
/// One typo each (a letter dropped, doubled, swapped or replaced).
const TYPOS: [&str; 12] = [
    "sneeker",
    "runer",
    "bakpack",
    "waterprof",
    "vintaeg",
    "lether",
    "canvass",
    "wintr",
    "premuim",
    "shrit",
    "beanei",
    "northwnd",
];
const CATEGORIES: [&str; 4] = ["Shoes", "Shirts", "Bags", "Hats"];

pub async fn run(
    database_url: &str,
    products: usize,
    queries: usize,
    keep_log: bool,
    writer_threads: Option<usize>,
) -> Result<()> {
    let (url, _scratch) = if keep_log {
        (kept_log_database(database_url, products).await?, None)
    } else {
        let db = ScratchDatabase::create(database_url, "bench_search").await?;
        (db.url.clone(), Some(db))
    };
    let store = PostgresStore::connect(PostgresConfig::new(url)).await?;
    println!("search benchmark: {products} products in the log, indexed, then queried");

    let started = Instant::now();
    let kept = store.head().await?;
    let published = if kept > 0 {
        // The log of an earlier run with this many products: the same seeded
        // catalog, checked below against what the index finds published.
        println!("  log: kept from an earlier run ({kept} events), not appended again");
        published_of(products)
    } else {
        let published = generate(&store, products).await?;
        let head = store.head().await?;
        let generate_secs = started.elapsed().as_secs_f64();
        println!(
            "  log: {products} products ({published} published) in {head} events, appended \
             in {generate_secs:.1}s"
        );
        let settling = Instant::now();
        settle_log(&store).await?;
        println!(
            "  log vacuumed and checkpointed in {:.1}s",
            settling.elapsed().as_secs_f64()
        );
        published
    };
    let head = store.head().await?;

    let dir = std::env::temp_dir().join(format!("commerce-bench-search-{}", uuid::Uuid::new_v4()));
    let _cleanup = RemoveOnDrop(dir.clone());
    let progress = Arc::new(|p: projections::search::SearchProgress| {
        eprintln!(
            "  .. indexing: position {}/{}, {} products, {:.0} events/s",
            p.position, p.head, p.products, p.events_per_sec
        );
    });
    let mut config = SearchConfig::new(&dir);
    if let Some(threads) = writer_threads {
        config.writer_threads = threads.max(1);
    }
    let writer_threads = config.writer_threads;
    let started = Instant::now();
    let (index, task) = SearchIndex::start(store.clone(), config, Some(progress))
        .await
        .context("starting the search index")?;
    ensure!(
        index.wait_for(head, BUILD_TIMEOUT).await,
        "the index did not reach the head within {BUILD_TIMEOUT:?}"
    );
    let build_secs = started.elapsed().as_secs_f64();
    let index_rate = products as f64 / build_secs;
    let segments_built = index.status().segments;
    println!(
        "  index built from the log and searchable: {products} products ({head} events) in \
         {build_secs:.1}s, {index_rate:.0} products/s, {:.0} events/s; {segments_built} \
         segment(s)",
        head as f64 / build_secs,
    );
    // Correctness, as soon as it is searchable and again once its segments are
    // merged: every published product and no other is found.
    check_published(&index, published)?;
    ensure!(
        index.wait_for_merges(BUILD_TIMEOUT).await,
        "the index's segments were not merged within {BUILD_TIMEOUT:?}"
    );
    let merge_secs = started.elapsed().as_secs_f64() - build_secs;
    check_published(&index, published)?;
    let index_bytes = folder_bytes(&dir);
    let segments = index.status().segments;
    println!(
        "  segments merged in the background: {segments} segment(s), {merge_secs:.1}s after \
         the build; {:.0} MB on disk",
        index_bytes as f64 / 1e6
    );

    let mix = query_mix(queries.max(1));
    let blocking_index = index.clone();
    let (mut latencies, kinds, matched) =
        tokio::task::spawn_blocking(move || run_queries(&blocking_index, &mix)).await??;
    let baseline_mix: Vec<(&'static str, SearchRequest)> = (0..queries.max(1))
        .map(|i| ("exact", SearchRequest::new(WORDS[i % WORDS.len()])))
        .collect();
    let blocking_index = index.clone();
    let (mut baseline_latencies, _, _) =
        tokio::task::spawn_blocking(move || run_queries(&blocking_index, &baseline_mix)).await??;
    let all = Percentiles::of(&mut latencies);
    let baseline = Percentiles::of(&mut baseline_latencies);
    for (kind, mut samples) in kinds {
        let p = Percentiles::of(&mut samples);
        println!(
            "  {kind:<8} queries: {} run, p50 {:.2} ms, p99 {:.2} ms",
            samples.len(),
            p.p50_ms,
            p.p99_ms
        );
    }
    println!(
        "  all {} queries (mean {:.0} matches): p50 {:.2} ms, p99 {:.2} ms; baseline (one \
         catalog word, same path): p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        matched as f64 / latencies.len() as f64,
        all.p50_ms,
        all.p99_ms,
        baseline.p50_ms,
        baseline.p99_ms
    );
    task.stop().await;

    let line = json!({
        "bench": "search",
        "unit": "ms",
        "value": round2(all.p99_ms),
        "p50_ms": round2(all.p50_ms),
        "baseline": round2(baseline.p99_ms),
        "baseline_p50_ms": round2(baseline.p50_ms),
        "docs": products,
        "published": published,
        "events": head,
        "index_rate": index_rate.round(),
        "index_events_per_sec": (head as f64 / build_secs).round(),
        "build_seconds": round2(build_secs),
        "merge_seconds": round2(merge_secs),
        "segments_built": segments_built,
        "index_mb": (index_bytes as f64 / 1e6).round(),
        "segments": segments,
        "writer_threads": writer_threads,
        "queries": latencies.len(),
        "verified": true,
    });
    println!("{line}");
    Ok(())
}

/// The URL of the database `bench_search_log_{products}` on the server of
/// `admin_url`, created (empty) when missing.
async fn kept_log_database(admin_url: &str, products: usize) -> Result<String> {
    let name = format!("bench_search_log_{products}");
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    drop(client);
    let _ = driver.await;
    if !exists {
        return Ok(eventstore::recreate_database(admin_url, &name).await?);
    }
    let (server, _) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    let (server, _) = server
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("://") && !server.ends_with('/'))
        .with_context(|| format!("{admin_url:?} names no database to replace"))?;
    Ok(format!("{server}/{name}"))
}

/// Puts the freshly appended log at rest, as a rebuild finds a log in production:
/// its rows vacuumed (hint bits and visibility map set) and its pages written out.
/// Otherwise the first read of each row, autovacuum and the checkpointer do that
/// work during the timed build (26.2 s without this against 22.7 s with it, in one
/// pair of runs).
async fn settle_log(store: &PostgresStore) -> Result<()> {
    let client = store.connection().await?;
    client
        .batch_execute("VACUUM (ANALYZE) events")
        .await
        .context("vacuuming the log")?;
    client
        .batch_execute("CHECKPOINT")
        .await
        .context("checkpointing the log (the benchmark needs a superuser)")?;
    Ok(())
}

/// The products of shop `shard` when `products` are spread over `SHOPS`.
fn shop_products(products: usize, shard: u32) -> usize {
    let per_shop = products.div_ceil(SHOPS as usize);
    per_shop.min(products - (shard as usize * per_shop).min(products))
}

/// Every published product and no other is searchable.
fn check_published(index: &SearchIndex, published: u64) -> Result<()> {
    let everything = index.search(&SearchRequest::new(""))?;
    ensure!(
        everything.total == published,
        "{} products searchable, {published} published",
        everything.total
    );
    Ok(())
}

/// How many of `products` generated products are published (the workload leaves
/// one product in ten a draft: numbers ending in 9, counted per shop).
fn published_of(products: usize) -> u64 {
    (0..SHOPS)
        .map(|shard| {
            (0..shop_products(products, shard))
                .filter(|p| p % 10 != 9)
                .count() as u64
        })
        .sum()
}

/// Appends `products` products from `SHOPS` shops at once; returns how many are
/// published.
async fn generate(store: &PostgresStore, products: usize) -> Result<u64> {
    let store: Arc<dyn EventStore> = Arc::new(store.clone());
    let mut tasks = Vec::new();
    for shard in 0..SHOPS {
        let store = store.clone();
        let count = shop_products(products, shard);
        tasks.push(tokio::spawn(async move {
            let mut shop = Shop::new(ShopConfig {
                seed: 7,
                shard,
                products: 0,
                warehouses: 2,
                ..ShopConfig::default()
            });
            let mut done = 0;
            let mut published = 0u64;
            while done < count {
                let chunk = CHUNK_PRODUCTS.min(count - done);
                // The workload leaves one product in ten a draft (numbers ending in 9).
                published += (done..done + chunk).filter(|p| p % 10 != 9).count() as u64;
                let appends = one_append_per_stream_run(shop.catalog_appends(chunk));
                for batch in appends.chunks(APPEND_BATCH_APPENDS) {
                    for result in store.append_batch(batch.to_vec()).await {
                        result.context("appending the catalog")?;
                    }
                }
                done += chunk;
            }
            ensure!(
                shop.stats().refused_commands == 0,
                "the catalog had commands refused"
            );
            anyhow::Ok(published)
        }));
    }
    let mut published = 0;
    for task in tasks {
        published += task.await??;
    }
    ensure!(
        published == published_of(products),
        "{published} products published, {} expected",
        published_of(products)
    );
    Ok(published)
}

/// Consecutive appends to one stream (a product's creation, prices and publishing;
/// a SKU's receipts) as one append of all their events, expecting the first one's
/// version: the same events in the same order, in fewer, larger appends.
fn one_append_per_stream_run(appends: Vec<AppendRequest>) -> Vec<AppendRequest> {
    let mut merged: Vec<AppendRequest> = Vec::with_capacity(appends.len());
    for append in appends {
        match merged.last_mut() {
            Some(last)
                if last.stream_id == append.stream_id
                    && last.command_id.is_none()
                    && append.command_id.is_none()
                    && last.preconditions.is_empty()
                    && append.preconditions.is_empty() =>
            {
                last.events.extend(append.events);
            }
            _ => merged.push(append),
        }
    }
    merged
}

/// Keyword, typo, filter and facet queries in equal parts, seeded.
fn query_mix(count: usize) -> Vec<(&'static str, SearchRequest)> {
    // A multiplicative hash of the query number picks the words: seeded and the
    // same on every run.
    let pick = |list: &[&'static str], i: usize, salt: u32| {
        list[((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> salt) as usize % list.len()]
    };
    let mut mix = Vec::with_capacity(count + WARM_UP_QUERIES);
    for i in 0..count + WARM_UP_QUERIES {
        let request = match i % 4 {
            0 => (
                "keyword",
                SearchRequest::new(format!("{} {}", pick(&WORDS, i, 7), pick(&WORDS, i, 29))),
            ),
            1 => (
                "typo",
                SearchRequest::new(format!("{} {}", pick(&TYPOS, i, 7), pick(&BRANDS, i, 29))),
            ),
            2 => {
                let min = (i as u64 * 37) % 15_000;
                (
                    "filter",
                    SearchRequest {
                        brand: Some(pick(&BRANDS, i, 7).to_owned()),
                        category: vec![pick(&CATEGORIES, i, 17).to_owned()],
                        currency: Some("EUR".to_owned()),
                        price_min: Some(min),
                        price_max: Some(min + 2_500),
                        in_stock_only: true,
                        sort: SearchSort::PriceAscending,
                        ..SearchRequest::new(pick(&WORDS, i, 29))
                    },
                )
            }
            _ => (
                "facet",
                SearchRequest {
                    currency: Some("EUR".to_owned()),
                    ..SearchRequest::new(pick(&WORDS, i, 7))
                },
            ),
        };
        mix.push(request);
    }
    mix
}

type Latencies = (Vec<u32>, Vec<(&'static str, Vec<u32>)>, u64);

/// Runs the queries one after another, timing each (microseconds); the first
/// `WARM_UP_QUERIES` are not counted.
fn run_queries(index: &SearchIndex, mix: &[(&'static str, SearchRequest)]) -> Result<Latencies> {
    let mut all = Vec::with_capacity(mix.len());
    let mut kinds: Vec<(&'static str, Vec<u32>)> = Vec::new();
    let mut matched = 0u64;
    for (i, (kind, request)) in mix.iter().enumerate() {
        let started = Instant::now();
        let results = index.search(request)?;
        let micros = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        if i < WARM_UP_QUERIES.min(mix.len() / 2) {
            continue;
        }
        matched += results.total;
        all.push(micros);
        match kinds.iter_mut().find(|(k, _)| k == kind) {
            Some((_, samples)) => samples.push(micros),
            None => kinds.push((kind, vec![micros])),
        }
    }
    Ok((all, kinds, matched))
}

fn folder_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
