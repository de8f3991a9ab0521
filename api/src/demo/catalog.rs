//! Seeds the demo shop's catalog through the public command API, as a shop's admin
//! would: products with SKUs, prices in two currencies, stock in three warehouses,
//! published. Nothing is written to a table directly.

use anyhow::Result;
use futures::stream::{self, StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use super::client::Client;
use super::progress::Progress;

pub const WAREHOUSES: [&str; 3] = ["berlin", "lyon", "porto"];
const BRANDS: [&str; 8] = [
    "Acme",
    "Northwind",
    "Fjord",
    "Solis",
    "Kestrel",
    "Umber",
    "Vantage",
    "Pell",
];
const KINDS: [(&str, &str, &str); 8] = [
    ("shoes", "running", "Running shoe"),
    ("shoes", "trail", "Trail shoe"),
    ("apparel", "jackets", "Rain jacket"),
    ("apparel", "shirts", "Merino shirt"),
    ("outdoor", "tents", "Two-person tent"),
    ("outdoor", "packs", "Daypack"),
    ("home", "kitchen", "Espresso cup set"),
    ("home", "lighting", "Desk lamp"),
];
const COLOURS: [&str; 6] = ["red", "blue", "black", "green", "sand", "white"];
const SIZES: [&str; 2] = ["M", "L"];

/// One SKU a shopper can buy, as the catalog seeded it.
#[derive(Debug, Clone)]
pub struct SkuOnSale {
    pub product_id: Uuid,
    pub sku: String,
}

/// What was seeded: every SKU on sale, and the flash-sale SKU with its stock.
pub struct Catalog {
    pub skus: Vec<SkuOnSale>,
    pub flash: SkuOnSale,
    pub units_received: u64,
}

/// Seeds `products` products (two SKUs each) and the flash-sale product, with
/// `concurrency` admin requests in flight.
pub async fn seed(
    client: &Client,
    products: usize,
    flash_units: u32,
    concurrency: usize,
    seed: u64,
) -> Result<Catalog> {
    // A team of admins, one per request in flight: each stays within the engine's
    // per-principal rate limit, as staff importing a catalog would.
    let admins = (0..concurrency.max(1))
        .map(|k| client.token(crate::http::Role::Admin, format!("demo-admin-{k}")))
        .collect::<Result<Vec<_>>>()?;
    let admin = admins[0].clone();
    let progress = Progress::start("seeding the catalog", products as u64 + 1);
    let seeded: Vec<(Vec<SkuOnSale>, u64)> = stream::iter(0..products)
        .map(|i| {
            let admin = admins[i % admins.len()].clone();
            let progress = progress.clone();
            async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9));
                let seeded = seed_product(client, &admin, i, &mut rng).await?;
                progress.advance();
                Ok::<_, anyhow::Error>(seeded)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    let flash = seed_flash_product(client, &admin, flash_units).await?;
    progress.advance();
    progress.finish();
    let units_received =
        seeded.iter().map(|(_, units)| units).sum::<u64>() + u64::from(flash_units);
    Ok(Catalog {
        skus: seeded.into_iter().flat_map(|(skus, _)| skus).collect(),
        flash,
        units_received,
    })
}

async fn seed_product(
    client: &Client,
    admin: &str,
    i: usize,
    rng: &mut StdRng,
) -> Result<(Vec<SkuOnSale>, u64)> {
    let (department, line, noun) = KINDS[i % KINDS.len()];
    let brand = BRANDS[rng.random_range(0..BRANDS.len())];
    let colour = COLOURS[rng.random_range(0..COLOURS.len())];
    let title = format!("{brand} {noun} {colour} {}", i + 1);
    let product_id = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("demo-product-{i}").as_bytes());
    let skus: Vec<String> = SIZES
        .iter()
        .map(|size| format!("DEMO-{:05}-{size}", i + 1))
        .collect();
    let body = json!({
        "product_id": product_id,
        "title": title,
        "description": format!("A {colour} {} by {brand}, for everyday use.", noun.to_lowercase()),
        "brand": brand,
        "category": [department, line],
        "skus": skus.iter().zip(SIZES).map(|(sku, size)| json!({
            "sku": sku, "attributes": {"size": size, "colour": colour}
        })).collect::<Vec<_>>(),
    });
    client
        .must(admin, Method::POST, "/v1/products", Some(&body))
        .await?;
    let eur = rng.random_range(9..250) * 100 + 99;
    let prices_path = format!("/v1/products/{product_id}/prices");
    for price in [
        json!({"price": {"minor": eur, "currency": "EUR"}}),
        json!({"price": {"minor": eur * 108 / 100, "currency": "USD"}}),
    ] {
        client
            .must(admin, Method::PUT, &prices_path, Some(&price))
            .await?;
    }
    let mut units = 0;
    for sku in &skus {
        for warehouse in WAREHOUSES {
            // Some SKUs are out of stock in some warehouses, a few everywhere.
            let quantity: u64 = rng.random_range(0..=12);
            if quantity == 0 {
                continue;
            }
            let receipt = json!({"warehouse": warehouse, "quantity": quantity});
            client
                .must(
                    admin,
                    Method::POST,
                    &format!("/v1/inventory/{sku}/receipts"),
                    Some(&receipt),
                )
                .await?;
            units += quantity;
        }
    }
    client
        .must(
            admin,
            Method::POST,
            &format!("/v1/products/{product_id}/publish"),
            None,
        )
        .await?;
    let skus = skus
        .into_iter()
        .map(|sku| SkuOnSale { product_id, sku })
        .collect();
    Ok((skus, units))
}

/// The flash sale's product: one SKU, `units` units spread over the warehouses.
async fn seed_flash_product(client: &Client, admin: &str, units: u32) -> Result<SkuOnSale> {
    let product_id = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"demo-flash-product");
    let sku = "DEMO-FLASH-1".to_string();
    let body = json!({
        "product_id": product_id,
        "title": "Limited edition trail shoe",
        "description": "The flash sale's shoe: few pairs, many shoppers.",
        "brand": "Kestrel",
        "category": ["shoes", "trail"],
        "skus": [{"sku": sku, "attributes": {"size": "M", "edition": "limited"}}],
    });
    client
        .must(admin, Method::POST, "/v1/products", Some(&body))
        .await?;
    for price in [
        json!({"price": {"minor": 4_999, "currency": "EUR"}}),
        json!({"price": {"minor": 5_399, "currency": "USD"}}),
    ] {
        client
            .must(
                admin,
                Method::PUT,
                &format!("/v1/products/{product_id}/prices"),
                Some(&price),
            )
            .await?;
    }
    let mut left = units;
    for (n, warehouse) in WAREHOUSES.iter().enumerate() {
        let share = if n + 1 == WAREHOUSES.len() {
            left
        } else {
            units / WAREHOUSES.len() as u32
        };
        left -= share;
        if share == 0 {
            continue;
        }
        let receipt = json!({"warehouse": warehouse, "quantity": share});
        client
            .must(
                admin,
                Method::POST,
                &format!("/v1/inventory/{sku}/receipts"),
                Some(&receipt),
            )
            .await?;
    }
    client
        .must(
            admin,
            Method::POST,
            &format!("/v1/products/{product_id}/publish"),
            None,
        )
        .await?;
    Ok(SkuOnSale { product_id, sku })
}
