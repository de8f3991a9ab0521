//! The catalog: admins create products, add SKUs, set prices and publish; anyone
//! signed in reads a product (rebuilt from its stream).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::{Currency, Money, PriceTarget, Product, ProductCommand, ProductId, Sku, SkuVariant};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::command::{CommandAccepted, CommandMeta};
use crate::http::extract::JsonBody;
use crate::http::problem::{ApiError, Problem};
use crate::http::views::{replay, ProductView};
use crate::http::{json_response, AppState, Principal, Role};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    /// Chosen by the client, or derived from the idempotency key if absent.
    #[schema(value_type = Option<Uuid>)]
    pub product_id: Option<ProductId>,
    /// 1..=200 characters.
    pub title: String,
    /// Up to 5,000 characters.
    #[serde(default)]
    pub description: String,
    /// 1..=100 characters.
    pub brand: String,
    /// The category path, 1..=8 levels, e.g. `["shoes", "running"]`.
    pub category: Vec<String>,
    /// 1..=100 SKUs.
    pub skus: Vec<SkuRequest>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkuRequest {
    /// 1..=64 characters of `A-Z a-z 0-9 . _ -`.
    #[schema(value_type = String, example = "SHOE-42-BLUE")]
    pub sku: Sku,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl From<SkuRequest> for SkuVariant {
    fn from(r: SkuRequest) -> Self {
        SkuVariant {
            sku: r.sku,
            attributes: r.attributes,
        }
    }
}

/// An amount in minor units (cents) and an ISO-4217 currency.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyRequest {
    pub minor: i64,
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPriceRequest {
    /// The SKU whose price this is; absent for the product-wide price.
    #[schema(value_type = Option<String>)]
    pub sku: Option<Sku>,
    pub price: MoneyRequest,
}

fn product_id(raw: &str) -> Result<ProductId, ApiError> {
    ProductId::parse(raw).map_err(|e| ApiError::bad_parameter("product_id", e.to_string()))
}

/// The catalog's commands on one product: an admin's, with a well-formed id.
fn admin_product_id(meta: &CommandMeta, raw: &str) -> Result<ProductId, ApiError> {
    meta.principal
        .require(&[Role::Admin])
        .and_then(|()| product_id(raw))
}

/// Creates a product (draft) with its SKUs. Admins only.
#[utoipa::path(post, path = "/v1/products", tag = "catalog", request_body = CreateProductRequest,
    params(("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 201, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    meta: CommandMeta,
    body: JsonBody<CreateProductRequest>,
) -> Response {
    if let Err(e) = meta.principal.require(&[Role::Admin]) {
        return e.into_response();
    }
    let fingerprint = body.fingerprint;
    let request = body.value;
    meta.run(
        state.clone(),
        "CreateProduct",
        Some(&fingerprint),
        |context| async move {
            let product_id = request.product_id.unwrap_or_else(|| {
                ProductId::from_uuid(Uuid::new_v5(&context.command_id, b"product"))
            });
            let command = ProductCommand::CreateProduct {
                product_id,
                title: request.title,
                description: request.description,
                brand: request.brand,
                category: request.category,
                skus: request.skus.into_iter().map(SkuVariant::from).collect(),
            };
            let committed = state
                .commands()
                .products()
                .execute(command, &context)
                .await?;
            Ok((
                StatusCode::CREATED,
                CommandAccepted::new()
                    .id("product_id", product_id)
                    .wrote(&committed),
            ))
        },
    )
    .await
}

/// Adds a SKU to a product. Admins only.
#[utoipa::path(post, path = "/v1/products/{product_id}/skus", tag = "catalog", request_body = SkuRequest,
    params(("product_id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn add_sku(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    meta: CommandMeta,
    body: JsonBody<SkuRequest>,
) -> Response {
    let product_id = match admin_product_id(&meta, &raw_id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let fingerprint = body.fingerprint;
    let request = body.value;
    meta.run(
        state.clone(),
        "AddSku",
        Some(&fingerprint),
        |context| async move {
            let sku = request.sku.clone();
            let command = ProductCommand::AddSku {
                product_id,
                variant: request.into(),
            };
            let committed = state
                .commands()
                .products()
                .execute(command, &context)
                .await?;
            Ok((
                StatusCode::ACCEPTED,
                CommandAccepted::new()
                    .id("product_id", product_id)
                    .id("sku", sku)
                    .wrote(&committed),
            ))
        },
    )
    .await
}

/// Sets the price of a product (all its SKUs) or of one SKU, in one currency.
/// Admins only.
#[utoipa::path(put, path = "/v1/products/{product_id}/prices", tag = "catalog", request_body = SetPriceRequest,
    params(("product_id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn set_price(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    meta: CommandMeta,
    body: JsonBody<SetPriceRequest>,
) -> Response {
    let product_id = match admin_product_id(&meta, &raw_id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let fingerprint = body.fingerprint;
    let request = body.value;
    meta.run(
        state.clone(),
        "SetPrice",
        Some(&fingerprint),
        |context| async move {
            let command = ProductCommand::SetPrice {
                product_id,
                target: match request.sku {
                    Some(sku) => PriceTarget::Sku(sku),
                    None => PriceTarget::Product,
                },
                price: Money::new(request.price.minor, request.price.currency),
            };
            let committed = state
                .commands()
                .products()
                .execute(command, &context)
                .await?;
            Ok((
                StatusCode::ACCEPTED,
                CommandAccepted::new()
                    .id("product_id", product_id)
                    .wrote(&committed),
            ))
        },
    )
    .await
}

/// Which status change a bodiless product command asks for.
#[derive(Clone, Copy)]
enum StatusChange {
    Publish,
    Unpublish,
    Discontinue,
}

async fn change_status(
    state: AppState,
    raw_id: String,
    meta: CommandMeta,
    change: StatusChange,
) -> Response {
    let product_id = match admin_product_id(&meta, &raw_id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let (name, command) = match change {
        StatusChange::Publish => ("PublishProduct", ProductCommand::Publish { product_id }),
        StatusChange::Unpublish => ("UnpublishProduct", ProductCommand::Unpublish { product_id }),
        StatusChange::Discontinue => (
            "DiscontinueProduct",
            ProductCommand::Discontinue { product_id },
        ),
    };
    meta.run(state.clone(), name, None, |context| async move {
        let committed = state
            .commands()
            .products()
            .execute(command, &context)
            .await?;
        Ok((
            StatusCode::ACCEPTED,
            CommandAccepted::new()
                .id("product_id", product_id)
                .wrote(&committed),
        ))
    })
    .await
}

/// Puts a product on sale (every SKU needs a price). Admins only.
#[utoipa::path(post, path = "/v1/products/{product_id}/publish", tag = "catalog",
    params(("product_id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn publish(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    meta: CommandMeta,
) -> Response {
    change_status(state, raw_id, meta, StatusChange::Publish).await
}

/// Takes a product off sale. Admins only.
#[utoipa::path(post, path = "/v1/products/{product_id}/unpublish", tag = "catalog",
    params(("product_id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn unpublish(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    meta: CommandMeta,
) -> Response {
    change_status(state, raw_id, meta, StatusChange::Unpublish).await
}

/// Ends a product for good. Admins only.
#[utoipa::path(post, path = "/v1/products/{product_id}/discontinue", tag = "catalog",
    params(("product_id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn discontinue(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    meta: CommandMeta,
) -> Response {
    change_status(state, raw_id, meta, StatusChange::Discontinue).await
}

/// A product as its stream says now. Any role.
#[utoipa::path(get, path = "/v1/products/{product_id}", tag = "catalog",
    params(("product_id" = Uuid, Path)),
    responses((status = 200, body = ProductView),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _principal: Principal,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let product_id = product_id(&raw_id)?;
    let replayed = replay::<Product>(state.store(), &Product::stream_id(&product_id)).await?;
    let view = ProductView::of(&replayed.state, replayed.version)
        .ok_or_else(|| ApiError::not_found("product"))?;
    Ok(json_response(StatusCode::OK, &view))
}
