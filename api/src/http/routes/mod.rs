//! The routes, one module per part of the shop. Registration is in one place so the
//! served table can be checked against the OpenAPI document.

pub(crate) mod audit;
pub(crate) mod carts;
pub(crate) mod checkouts;
pub(crate) mod health;
pub(crate) mod inventory;
pub(crate) mod orders;
pub(crate) mod privacy;
pub(crate) mod products;
pub(crate) mod read_side;
pub(crate) mod reads;
pub(crate) mod search;
pub(crate) mod webhooks;

use super::RouteTable;

pub(super) fn register(table: RouteTable) -> RouteTable {
    table
        .get("/health", health::health)
        .get("/ready", health::ready)
        .get("/metrics", health::prometheus)
        .get("/openapi.json", health::openapi)
        // Catalog and stock (admins change them).
        .post("/v1/products", products::create)
        .get("/v1/products", reads::products)
        .get("/v1/products/{product_id}", products::get)
        .post("/v1/products/{product_id}/skus", products::add_sku)
        .put("/v1/products/{product_id}/prices", products::set_price)
        .post("/v1/products/{product_id}/publish", products::publish)
        .post("/v1/products/{product_id}/unpublish", products::unpublish)
        .post(
            "/v1/products/{product_id}/discontinue",
            products::discontinue,
        )
        // Product search (any role).
        .get("/v1/search", search::search)
        .get("/v1/search/suggest", search::suggest)
        .get("/v1/inventory", reads::stock_levels)
        .get("/v1/inventory/{sku}", inventory::get)
        .post("/v1/inventory/{sku}/receipts", inventory::receive)
        .post("/v1/inventory/{sku}/adjustments", inventory::adjust)
        // Carts and orders (customers, their own).
        .post("/v1/carts", carts::create)
        .get("/v1/carts", reads::carts)
        .get("/v1/carts/{cart_id}", carts::get)
        .post("/v1/carts/{cart_id}/lines", carts::add_line)
        .put("/v1/carts/{cart_id}/lines/{sku}", carts::change_quantity)
        .delete("/v1/carts/{cart_id}/lines/{sku}", carts::remove_line)
        .post("/v1/carts/{cart_id}/merge", carts::merge)
        .post("/v1/carts/{cart_id}/checkout", carts::checkout)
        .get("/v1/checkouts/{checkout_id}", checkouts::get)
        .get("/v1/checkouts/{checkout_id}/events", checkouts::events)
        .get("/v1/orders", reads::orders)
        .get("/v1/orders/{order_id}", orders::get)
        .get(
            "/v1/customers/{customer_id}/history",
            reads::customer_history,
        )
        // Analytics over the read models (staff).
        .get("/v1/sales/daily", reads::sales_daily)
        .get("/v1/sales/top-skus", reads::top_skus)
        // The read side: status and rebuilds (operators, analysts).
        .get("/v1/admin/projections", read_side::status)
        .post("/v1/admin/projections/rebuild", read_side::rebuild)
        .post("/v1/orders/{order_id}/cancel", orders::cancel)
        // Audit reads of the log (auditors, admins).
        .get("/v1/streams/{stream_id}/events", audit::stream_events)
        .get("/v1/events", audit::log)
        .get("/v1/events.ndjson", audit::log_ndjson)
        // The payment provider's callbacks (signed, no bearer token).
        .post("/v1/payments/webhooks", webhooks::receive)
        .get("/v1/audit/aggregates/{stream_id}", audit::aggregate)
        .get("/v1/audit/verify", audit::verify)
        .get("/v1/audit/trail", privacy::trail)
        // Erasure of a customer's personal data (admins).
        .post("/v1/admin/customers/{customer_id}/forget", privacy::forget)
}
