//! Carts: a customer (or a guest) creates one and changes its lines, a signed-in
//! customer merges a guest cart into theirs and checks out. Unit prices come from
//! the catalog, never from the request: a `price` in a body is an unknown field.
//! Another customer's cart is a 404.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use commands::{CartAction, CommandError};
use domain::{
    AddressInput, Cart, CartId, CartOwner, Checkout, CheckoutCommand, CheckoutId, Currency,
    DomainError, GuestToken, ProductId, Quantity, ShippingAddress, MAX_PAYMENT_METHOD_CHARS,
};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::inventory::sku;
use crate::http::command::{CommandAccepted, CommandMeta};
use crate::http::extract::JsonBody;
use crate::http::problem::{ApiError, Problem};
use crate::http::views::{replay, CartView};
use crate::http::{json_response, AppState, Principal, Role};

const CART_WRITERS: &[Role] = &[Role::Customer, Role::Admin];
const CART_READERS: &[Role] = &[Role::Customer, Role::Admin, Role::Auditor];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCartRequest {
    /// Chosen by the client, or derived from the idempotency key if absent.
    #[schema(value_type = Option<Uuid>)]
    pub cart_id: Option<CartId>,
    /// The cart's currency for good (ISO 4217).
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddLineRequest {
    #[schema(value_type = Uuid)]
    pub product_id: ProductId,
    #[schema(value_type = String, example = "SHOE-42-BLUE")]
    pub sku: domain::Sku,
    /// 1..=1,000,000 units; a SKU already in the cart grows its line.
    #[schema(value_type = u32, minimum = 1, maximum = 1000000)]
    pub quantity: Quantity,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuantityRequest {
    /// 1..=1,000,000 units (remove the line to drop it).
    #[schema(value_type = u32, minimum = 1, maximum = 1000000)]
    pub quantity: Quantity,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeCartRequest {
    /// The open guest cart to fold into this one.
    #[schema(value_type = Uuid)]
    pub guest_cart_id: CartId,
    /// The guest token that owns it (the `sub` of the guest's token without
    /// `guest:`): proof that the caller held the guest cart.
    #[schema(value_type = Uuid)]
    pub guest_token: GuestToken,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressRequest {
    pub name: String,
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, e.g. `DE`.
    pub country: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// Chosen by the client, or derived from the idempotency key if absent. The
    /// order the checkout places gets the same id.
    #[schema(value_type = Option<Uuid>)]
    pub checkout_id: Option<CheckoutId>,
    pub shipping_address: AddressRequest,
    /// The payment provider's token for the customer's payment method (never card
    /// data), 1..=200 characters.
    pub payment_method: String,
}

pub(crate) fn cart_id(raw: &str) -> Result<CartId, ApiError> {
    CartId::parse(raw).map_err(|e| ApiError::bad_parameter("cart_id", e.to_string()))
}

/// The cart's owner, if the principal may change the cart; another customer's cart
/// (or none) is a 404, so ids cannot be probed.
async fn writable_cart(
    state: &AppState,
    principal: &Principal,
    cart_id: CartId,
) -> Result<Option<CartOwner>, ApiError> {
    principal.require(CART_WRITERS)?;
    let owner = state
        .commands()
        .cart_facts(cart_id)
        .await?
        .map(|facts| facts.owner);
    if principal.may_see_cart(owner) {
        Ok(owner)
    } else {
        Err(ApiError::not_found("cart"))
    }
}

/// A product named in a request body that does not exist is the body's fault (422
/// on `product_id`), not a missing resource.
fn unknown_product(error: CommandError) -> ApiError {
    match error {
        CommandError::Rejected(DomainError::NotFound {
            aggregate: "product",
        }) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-product",
            "no such product",
        )
        .with_field("product_id"),
        other => other.into(),
    }
}

/// Opens a cart for the caller (a customer, or a guest: `sub` = `guest:<uuid>`).
#[utoipa::path(post, path = "/v1/carts", tag = "carts", request_body = CreateCartRequest,
    params(("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 201, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    meta: CommandMeta,
    body: JsonBody<CreateCartRequest>,
) -> Response {
    let owner = match meta
        .principal
        .require(&[Role::Customer])
        .map(|()| meta.principal.cart_owner())
    {
        Ok(Some(owner)) => owner,
        Ok(None) => {
            return ApiError::forbidden("only customers and guests own carts").into_response()
        }
        Err(e) => return e.into_response(),
    };
    let fingerprint = body.fingerprint;
    let request = body.value;
    meta.run(
        state.clone(),
        "CreateCart",
        Some(&fingerprint),
        |context| async move {
            let cart_id = request
                .cart_id
                .unwrap_or_else(|| CartId::from_uuid(Uuid::new_v5(&context.command_id, b"cart")));
            let action = CartAction::Create {
                cart_id,
                owner,
                currency: request.currency,
            };
            let committed = state.commands().cart(action, &context).await?;
            Ok((
                StatusCode::CREATED,
                CommandAccepted::new()
                    .id("cart_id", cart_id)
                    .wrote(&committed),
            ))
        },
    )
    .await
}

/// Adds units of a SKU at the catalog's price in the cart's currency.
#[utoipa::path(post, path = "/v1/carts/{cart_id}/lines", tag = "carts", request_body = AddLineRequest,
    params(("cart_id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn add_line(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    meta: CommandMeta,
    body: JsonBody<AddLineRequest>,
) -> Response {
    let cart_id = match cart_id(&raw_id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let fingerprint = body.fingerprint;
    let request = body.value;
    let principal = meta.principal.clone();
    // Adding a line is one append to the cart, which carries the key: see
    // `CommandMeta::guarded`.
    meta.guarded()
        .run(
            state.clone(),
            "AddCartLine",
            Some(&fingerprint),
            |context| async move {
                writable_cart(&state, &principal, cart_id).await?;
                let sku = request.sku.clone();
                let action = CartAction::AddItem {
                    cart_id,
                    product_id: request.product_id,
                    sku: request.sku,
                    quantity: request.quantity,
                };
                let committed = state
                    .commands()
                    .cart(action, &context)
                    .await
                    .map_err(unknown_product)?;
                Ok(line_accepted(cart_id, sku, &committed))
            },
        )
        .await
}

/// The answer to a command on one line of a cart.
fn line_accepted<E>(
    cart_id: CartId,
    sku: impl ToString,
    committed: &commands::Committed<E>,
) -> (StatusCode, CommandAccepted) {
    (
        StatusCode::ACCEPTED,
        CommandAccepted::new()
            .id("cart_id", cart_id)
            .id("sku", sku)
            .wrote(committed),
    )
}

/// Sets a line's quantity.
#[utoipa::path(put, path = "/v1/carts/{cart_id}/lines/{sku}", tag = "carts", request_body = ChangeQuantityRequest,
    params(("cart_id" = Uuid, Path), ("sku" = String, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn change_quantity(
    State(state): State<AppState>,
    Path((raw_id, raw_sku)): Path<(String, String)>,
    meta: CommandMeta,
    body: JsonBody<ChangeQuantityRequest>,
) -> Response {
    let (cart_id, sku) = match cart_id(&raw_id).and_then(|c| Ok((c, sku(&raw_sku)?))) {
        Ok(ids) => ids,
        Err(e) => return e.into_response(),
    };
    let fingerprint = body.fingerprint;
    let request = body.value;
    let principal = meta.principal.clone();
    meta.run(
        state.clone(),
        "ChangeCartLine",
        Some(&fingerprint),
        |context| async move {
            writable_cart(&state, &principal, cart_id).await?;
            let action = CartAction::ChangeQuantity {
                cart_id,
                sku: sku.clone(),
                quantity: request.quantity,
            };
            let committed = state.commands().cart(action, &context).await?;
            Ok(line_accepted(cart_id, sku, &committed))
        },
    )
    .await
}

/// Removes a line.
#[utoipa::path(delete, path = "/v1/carts/{cart_id}/lines/{sku}", tag = "carts",
    params(("cart_id" = Uuid, Path), ("sku" = String, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn remove_line(
    State(state): State<AppState>,
    Path((raw_id, raw_sku)): Path<(String, String)>,
    meta: CommandMeta,
) -> Response {
    let (cart_id, sku) = match cart_id(&raw_id).and_then(|c| Ok((c, sku(&raw_sku)?))) {
        Ok(ids) => ids,
        Err(e) => return e.into_response(),
    };
    let principal = meta.principal.clone();
    meta.run(
        state.clone(),
        "RemoveCartLine",
        None,
        |context| async move {
            writable_cart(&state, &principal, cart_id).await?;
            let action = CartAction::RemoveLine {
                cart_id,
                sku: sku.clone(),
            };
            let committed = state.commands().cart(action, &context).await?;
            Ok(line_accepted(cart_id, sku, &committed))
        },
    )
    .await
}

/// Folds a guest cart into the caller's cart (same SKU: the larger quantity wins);
/// the guest cart is abandoned.
#[utoipa::path(post, path = "/v1/carts/{cart_id}/merge", tag = "carts", request_body = MergeCartRequest,
    params(("cart_id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn merge(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    meta: CommandMeta,
    body: JsonBody<MergeCartRequest>,
) -> Response {
    let cart_id = match cart_id(&raw_id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let fingerprint = body.fingerprint;
    let request = body.value;
    let principal = meta.principal.clone();
    meta.run(
        state.clone(),
        "MergeCarts",
        Some(&fingerprint),
        |context| async move {
            writable_cart(&state, &principal, cart_id).await?;
            let guest = state
                .commands()
                .load_cart(request.guest_cart_id)
                .await?
                .state;
            if guest.owner() != Some(CartOwner::Guest(request.guest_token)) {
                return Err(ApiError::not_found("guest cart"));
            }
            let action = CartAction::MergeGuestCart {
                cart_id,
                guest_cart_id: request.guest_cart_id,
            };
            let committed = state.commands().cart(action, &context).await?;
            Ok((
                StatusCode::ACCEPTED,
                CommandAccepted::new()
                    .id("cart_id", cart_id)
                    .id("guest_cart_id", request.guest_cart_id)
                    .wrote(&committed),
            ))
        },
    )
    .await
}

fn shipping_address(request: AddressRequest) -> Result<ShippingAddress, ApiError> {
    ShippingAddress::parse(AddressInput {
        name: request.name,
        line1: request.line1,
        line2: request.line2,
        city: request.city,
        postal_code: request.postal_code,
        country: request.country,
        email: request.email,
        phone: request.phone,
    })
    .map_err(|e| {
        let mut error = ApiError::from(e);
        error.field = error.field.map(|f| format!("shipping_address.{f}"));
        error
    })
}

/// Checks the cart out and starts its checkout: the saga places the order, reserves
/// the stock, authorizes and captures the payment, or undoes what it did. Answers 202
/// with the checkout's id at once; `GET /v1/checkouts/{checkout_id}` (or its event
/// stream) tells how it ends.
#[utoipa::path(post, path = "/v1/carts/{cart_id}/checkout", tag = "carts", request_body = CheckoutRequest,
    params(("cart_id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn checkout(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    meta: CommandMeta,
    body: JsonBody<CheckoutRequest>,
) -> Response {
    let cart_id = match cart_id(&raw_id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let fingerprint = body.fingerprint;
    let request = body.value;
    let principal = meta.principal.clone();
    meta.run(state.clone(), "CheckOut", Some(&fingerprint), |context| async move {
        let shipping_address = shipping_address(request.shipping_address)?;
        if request.payment_method.trim().is_empty()
            || request.payment_method.chars().count() > MAX_PAYMENT_METHOD_CHARS
        {
            return Err(ApiError::from(DomainError::Invalid {
                field: "payment_method",
                reason: format!("must be 1..={MAX_PAYMENT_METHOD_CHARS} characters"),
            }));
        }
        let owner = writable_cart(&state, &principal, cart_id).await?;
        let customer_id = match owner {
            Some(CartOwner::Customer(customer_id)) => customer_id,
            Some(CartOwner::Guest(_)) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "guest-cart",
                    "a guest cart is merged into a customer's cart before it is checked out",
                ))
            }
            None => return Err(ApiError::not_found("cart")),
        };
        let checkout_id = request.checkout_id.unwrap_or_else(|| {
            CheckoutId::from_uuid(Uuid::new_v5(&context.command_id, b"checkout"))
        });
        let commands = state.commands();
        // The cart is locked here, not in the saga, so a second checkout of the same
        // cart is refused at once instead of racing the first.
        let checked_out = commands
            .cart(CartAction::CheckOut { cart_id }, &context)
            .await?;
        let now = Utc::now();
        let start = CheckoutCommand::Start {
            checkout_id,
            cart_id,
            customer_id,
            shipping_address,
            payment_method: request.payment_method,
            started_at: now,
            deadline: now + state.config().saga.checkout_timeout,
        };
        // Both steps carry command ids derived from the key, so a retry after a
        // failure in between finishes the start instead of repeating it.
        let started = match commands
            .checkouts()
            .execute(start, &context.follow_up("start-checkout"))
            .await
        {
            Ok(started) => started,
            Err(e) => {
                if e.rejection().is_some() {
                    // Refused for good: give the customer the cart back.
                    let reopen = CartAction::Reopen { cart_id };
                    if let Err(reopen_error) = commands
                        .cart(reopen, &context.follow_up("reopen-after-refused-checkout"))
                        .await
                    {
                        tracing::warn!(%cart_id, error = %reopen_error, "cannot reopen the cart");
                    }
                }
                return Err(e.into());
            }
        };
        Ok((
            StatusCode::ACCEPTED,
            CommandAccepted::new()
                .id("cart_id", cart_id)
                .id("checkout_id", checkout_id)
                .id("order_id", Checkout::order_id(checkout_id))
                .wrote(&checked_out)
                .wrote(&started),
        ))
    })
    .await
}

/// A cart as its stream says now: the owner, staff (admin, auditor), else 404.
#[utoipa::path(get, path = "/v1/carts/{cart_id}", tag = "carts",
    params(("cart_id" = Uuid, Path)),
    responses((status = 200, body = CartView),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(CART_READERS)?;
    let cart_id = cart_id(&raw_id)?;
    let replayed = replay::<Cart>(state.store(), &Cart::stream_id(&cart_id)).await?;
    if !principal.may_see_cart(replayed.state.owner()) {
        return Err(ApiError::not_found("cart"));
    }
    let view = CartView::of(&replayed.state, replayed.version)
        .ok_or_else(|| ApiError::not_found("cart"))?;
    Ok(json_response(StatusCode::OK, &view))
}
