//! Simulated shoppers, each a customer of the public HTTP API with a real token:
//! browse, fill a guest cart, log in and merge it, check out with a good, declining
//! or flaky card, sometimes cancel; and the flash sale, where many shoppers compete
//! for a few units of one SKU.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use super::catalog::{Catalog, SkuOnSale};
use super::client::{Answer, Client};
use super::progress::Progress;
use crate::http::Role;

/// Cards of the sandbox payment provider, with the share of shoppers paying with
/// each: most cards work, some are declined, some fail now and then.
/// (`tok_flaky` answers 503 now and then; `tok_lost_response` acts but drops its
/// answer, so the engine's retry with the same idempotency key finds the result.)
const CARDS: [(&str, u32); 4] = [
    ("tok_visa", 75),
    ("tok_decline", 10),
    ("tok_flaky", 10),
    ("tok_lost_response", 5),
];
/// What shoppers type into the search box: plain words, a misspelling, a prefix.
const SEARCHES: [&str; 8] = [
    "running shoe",
    "trail",
    "rain jaket",
    "merino shirt",
    "tent",
    "espreso cup",
    "desk lamp",
    "daypak",
];
/// Share of confirmed orders (in percent) that their customer cancels afterwards.
const CANCEL_PERCENT: u32 = 10;
/// Longest a shopper waits for a checkout to finish.
const CHECKOUT_WAIT_MAX: Duration = Duration::from_secs(60);
/// Pause between looks at a checkout's status.
const CHECKOUT_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How a checkout ended, as its status said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Confirmed,
    Cancelled,
    Rejected,
    /// Refused before it started (e.g. an empty cart), or never finished in time.
    Failed,
}

/// What the shoppers saw, counted on the client side.
#[derive(Debug, Default)]
pub struct Tally {
    pub checkouts: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub rejected: u64,
    pub failed: u64,
    pub cancelled_by_customer: u64,
    pub merges: u64,
    pub browsed: u64,
    pub searches: u64,
    /// Milliseconds from the checkout request to its final status, per checkout.
    pub checkout_ms: Vec<u32>,
    pub first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, elapsed: Duration) {
        self.checkouts += 1;
        match outcome {
            Outcome::Confirmed => self.confirmed += 1,
            Outcome::Cancelled => self.cancelled += 1,
            Outcome::Rejected => self.rejected += 1,
            Outcome::Failed => self.failed += 1,
        }
        self.checkout_ms
            .push(u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX));
    }
}

/// Runs `shoppers` shopping journeys, `concurrency` at a time.
pub async fn shop(
    client: &Client,
    catalog: &Catalog,
    shoppers: usize,
    concurrency: usize,
    seed: u64,
) -> Tally {
    let tally = Mutex::new(Tally::default());
    let progress = Progress::start("shoppers", shoppers as u64);
    stream::iter(0..shoppers)
        .for_each_concurrent(concurrency.max(1), |n| {
            let tally = &tally;
            let progress = progress.clone();
            async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(n as u64 * 7_919));
                if let Err(e) = journey(client, catalog, n, &mut rng, tally).await {
                    let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
                    tally.failed += 1;
                    tally.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                progress.advance();
            }
        })
        .await;
    progress.finish();
    tally.into_inner().unwrap_or_else(|p| p.into_inner())
}

async fn journey(
    client: &Client,
    catalog: &Catalog,
    n: usize,
    rng: &mut StdRng,
    tally: &Mutex<Tally>,
) -> Result<()> {
    let pick = |rng: &mut StdRng| catalog.skus[rng.random_range(0..catalog.skus.len())].clone();
    // Browse as a guest: search (typos included), filter by brand with the facets,
    // look at a few products.
    let guest_token = Uuid::new_v4();
    let guest = client.token(Role::Customer, format!("guest:{guest_token}"))?;
    let words = SEARCHES[rng.random_range(0..SEARCHES.len())].replace(' ', "+");
    let found = client
        .get(
            &guest,
            &format!("/v1/search?q={words}&in_stock=true&limit=10"),
        )
        .await?;
    ensure_ok(&found, "searching")?;
    let brand = found.body["facets"]["brands"][0]["value"]
        .as_str()
        .map(str::to_string);
    if let Some(brand) = brand {
        let filtered = client
            .get(
                &guest,
                &format!("/v1/search?q={words}&brand={brand}&currency=EUR&sort=price_asc"),
            )
            .await?;
        ensure_ok(&filtered, "filtering a search")?;
    }
    let prefix: String = words.chars().take(3).collect();
    let suggested = client
        .get(&guest, &format!("/v1/search/suggest?q={prefix}"))
        .await?;
    ensure_ok(&suggested, "suggestions")?;
    lock(tally).searches += 3;
    for _ in 0..3 {
        let item = pick(rng);
        let answer = client
            .get(&guest, &format!("/v1/products/{}", item.product_id))
            .await?;
        ensure_ok(&answer, "browsing a product")?;
    }
    lock(tally).browsed += 3;
    // A guest cart with one line, then log in and merge it.
    let guest_cart = create_cart(client, &guest).await?;
    add_line(client, &guest, &guest_cart, &pick(rng), 1).await?;
    let customer = client.token(Role::Customer, format!("demo-shopper-{n}"))?;
    let cart = create_cart(client, &customer).await?;
    for _ in 0..rng.random_range(1..=2) {
        add_line(
            client,
            &customer,
            &cart,
            &pick(rng),
            rng.random_range(1..=2),
        )
        .await?;
    }
    let merge = json!({"guest_cart_id": guest_cart, "guest_token": guest_token});
    let merged = client
        .command(
            &customer,
            Method::POST,
            &format!("/v1/carts/{cart}/merge"),
            Some(&merge),
        )
        .await?;
    ensure_ok(&merged, "merging the guest cart")?;
    lock(tally).merges += 1;
    // Check out with a card from the mix.
    let card = choose_card(rng);
    let started = Instant::now();
    let (outcome, order_id) = checkout(client, &customer, &cart, card, n).await?;
    lock(tally).record(outcome, started.elapsed());
    if outcome == Outcome::Confirmed && rng.random_range(0..100) < CANCEL_PERCENT {
        if let Some(order_id) = order_id {
            let reason = json!({"reason": "changed my mind"});
            let cancelled = client
                .command(
                    &customer,
                    Method::POST,
                    &format!("/v1/orders/{order_id}/cancel"),
                    Some(&reason),
                )
                .await?;
            if cancelled.is_success() {
                lock(tally).cancelled_by_customer += 1;
            }
        }
    }
    Ok(())
}

/// The flash sale: `shoppers` customers each try to buy one unit of the flash SKU,
/// all at once. Returns the tally and how long the sale took.
pub async fn flash_sale(
    client: &Client,
    item: &SkuOnSale,
    shoppers: usize,
    concurrency: usize,
) -> (Tally, Duration) {
    let tally = Mutex::new(Tally::default());
    let progress = Progress::start("flash sale", shoppers as u64);
    let started = Instant::now();
    stream::iter(0..shoppers)
        .for_each_concurrent(concurrency.max(1), |n| {
            let tally = &tally;
            let progress = progress.clone();
            async move {
                let attempt = async {
                    let customer = client.token(Role::Customer, format!("flash-shopper-{n}"))?;
                    let cart = create_cart(client, &customer).await?;
                    add_line(client, &customer, &cart, item, 1).await?;
                    let begun = Instant::now();
                    let (outcome, _) =
                        checkout(client, &customer, &cart, CARDS[0].0, 1_000_000 + n).await?;
                    lock(tally).record(outcome, begun.elapsed());
                    Ok::<_, anyhow::Error>(())
                };
                if let Err(e) = attempt.await {
                    let mut tally = lock(tally);
                    tally.failed += 1;
                    tally.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                progress.advance();
            }
        })
        .await;
    let elapsed = started.elapsed();
    progress.finish();
    (
        tally.into_inner().unwrap_or_else(|p| p.into_inner()),
        elapsed,
    )
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|p| p.into_inner())
}

fn choose_card(rng: &mut StdRng) -> &'static str {
    let total: u32 = CARDS.iter().map(|(_, weight)| weight).sum();
    let mut roll = rng.random_range(0..total);
    for (card, weight) in CARDS {
        if roll < weight {
            return card;
        }
        roll -= weight;
    }
    CARDS[0].0
}

fn ensure_ok(answer: &Answer, what: &str) -> Result<()> {
    anyhow::ensure!(
        answer.is_success(),
        "{what}: {} {}",
        answer.status,
        answer.body
    );
    Ok(())
}

async fn create_cart(client: &Client, token: &str) -> Result<String> {
    let answer = client
        .command(
            token,
            Method::POST,
            "/v1/carts",
            Some(&json!({"currency": "EUR"})),
        )
        .await?;
    ensure_ok(&answer, "creating a cart")?;
    answer
        .id("cart_id")
        .map(str::to_string)
        .context("a created cart without its id")
}

async fn add_line(
    client: &Client,
    token: &str,
    cart: &str,
    item: &SkuOnSale,
    quantity: u32,
) -> Result<()> {
    let line = json!({"product_id": item.product_id, "sku": item.sku, "quantity": quantity});
    let answer = client
        .command(
            token,
            Method::POST,
            &format!("/v1/carts/{cart}/lines"),
            Some(&line),
        )
        .await?;
    ensure_ok(&answer, "adding a line")
}

fn shipping_address(n: usize) -> Value {
    json!({
        "name": format!("Shopper {n}"),
        "line1": format!("{} Harbour Street", n % 200 + 1),
        "city": "Lyon",
        "postal_code": "69002",
        "country": "FR",
        "email": format!("shopper{n}@example.com"),
    })
}

/// Starts a checkout and waits for its final status. Returns the outcome and the
/// order's id.
async fn checkout(
    client: &Client,
    token: &str,
    cart: &str,
    card: &str,
    n: usize,
) -> Result<(Outcome, Option<String>)> {
    let body = json!({"shipping_address": shipping_address(n), "payment_method": card});
    let started = client
        .command(
            token,
            Method::POST,
            &format!("/v1/carts/{cart}/checkout"),
            Some(&body),
        )
        .await?;
    if !started.is_success() {
        return Ok((Outcome::Failed, None));
    }
    let order_id = started.id("order_id").map(str::to_string);
    let Some(checkout_id) = started.id("checkout_id").map(str::to_string) else {
        // A checkout that finished within the request.
        return Ok((Outcome::Confirmed, order_id));
    };
    let deadline = Instant::now() + CHECKOUT_WAIT_MAX;
    while Instant::now() < deadline {
        let status = client
            .get(token, &format!("/v1/checkouts/{checkout_id}"))
            .await?;
        let order_id = status
            .body
            .get("order_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| order_id.clone());
        match status.body.get("status").and_then(Value::as_str) {
            Some("completed") => return Ok((Outcome::Confirmed, order_id)),
            Some("cancelled") => return Ok((Outcome::Cancelled, order_id)),
            Some("rejected") => return Ok((Outcome::Rejected, order_id)),
            _ => tokio::time::sleep(CHECKOUT_POLL_INTERVAL).await,
        }
    }
    Ok((Outcome::Failed, order_id))
}
