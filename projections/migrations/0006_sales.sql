-- Read model `sales`: per day (UTC) and SKU and currency, units and revenue ordered,
-- sold (confirmed) and cancelled. Fed by `order-*` streams.
CREATE TABLE sales_daily (
    day                     date    NOT NULL,
    sku                     text    COLLATE "C" NOT NULL,
    currency                text    NOT NULL,
    -- Orders placed that day with this SKU, their units and revenue.
    orders_placed           integer NOT NULL,
    units_ordered           bigint  NOT NULL,
    revenue_ordered_minor   bigint  NOT NULL,
    -- Order lines confirmed that day: the sale.
    units_sold              bigint  NOT NULL,
    revenue_sold_minor      bigint  NOT NULL,
    -- Order lines cancelled or rejected that day (whether or not confirmed before).
    cancellations           integer NOT NULL,
    units_cancelled         bigint  NOT NULL,
    revenue_cancelled_minor bigint  NOT NULL,
    position                bigint  NOT NULL,
    PRIMARY KEY (day, sku, currency)
);

-- The projection's own memory: the lines of every order that may still be confirmed
-- or cancelled. A row goes when its order is delivered, cancelled or rejected.
CREATE TABLE sales_open_orders (
    order_id  uuid    PRIMARY KEY,
    currency  text    NOT NULL,
    -- [{"sku": ..., "quantity": n, "unit_price_minor": m}]
    lines     jsonb   NOT NULL,
    confirmed boolean NOT NULL
);

-- secondary indexes
CREATE INDEX ON sales_daily (sku, day);
