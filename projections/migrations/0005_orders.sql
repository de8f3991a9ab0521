-- Read model `orders`: every order with its lines, the time of each transition, and
-- per customer and currency a summary of their order history. Fed by `order-*`
-- streams; times are the business times the events carry.
CREATE TABLE orders (
    order_id              uuid        PRIMARY KEY,
    customer_id           uuid        NOT NULL,
    cart_id               uuid        NOT NULL,
    -- placed | stock_reserved | payment_authorized | confirmed | shipped | delivered
    -- | cancelled | rejected
    status                text        NOT NULL,
    -- Why it was cancelled or rejected.
    status_reason         text,
    currency              text        NOT NULL,
    total_minor           bigint      NOT NULL,
    line_count            integer     NOT NULL,
    item_count            bigint      NOT NULL,
    payment_id            uuid,
    tracking_number       text,
    ship_country          text        NOT NULL,
    -- The whole address as the order carries it (personal data: name, email, phone).
    shipping_address      jsonb       NOT NULL,
    placed_at             timestamptz NOT NULL,
    stock_reserved_at     timestamptz,
    payment_authorized_at timestamptz,
    confirmed_at          timestamptz,
    shipped_at            timestamptz,
    delivered_at          timestamptz,
    cancelled_at          timestamptz,
    rejected_at           timestamptz,
    updated_at            timestamptz NOT NULL,
    position              bigint      NOT NULL
);

CREATE TABLE order_lines (
    order_id         uuid    NOT NULL,
    line_no          integer NOT NULL,
    sku              text    COLLATE "C" NOT NULL,
    quantity         bigint  NOT NULL,
    unit_price_minor bigint  NOT NULL,
    currency         text    NOT NULL,
    line_total_minor bigint  NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

-- A customer's order history in one currency.
CREATE TABLE customer_orders (
    customer_id           uuid        NOT NULL,
    currency              text        NOT NULL,
    orders_placed         integer     NOT NULL,
    orders_confirmed      integer     NOT NULL,
    orders_delivered      integer     NOT NULL,
    orders_cancelled      integer     NOT NULL,
    orders_rejected       integer     NOT NULL,
    -- Sum of the totals of every order placed.
    placed_total_minor    bigint      NOT NULL,
    -- Sum of the totals of confirmed orders not cancelled afterwards.
    confirmed_total_minor bigint      NOT NULL,
    first_order_at        timestamptz NOT NULL,
    last_order_at         timestamptz NOT NULL,
    position              bigint      NOT NULL,
    PRIMARY KEY (customer_id, currency)
);

-- secondary indexes
CREATE INDEX ON orders (customer_id, placed_at);
CREATE INDEX ON orders (status, placed_at);
CREATE INDEX ON orders (placed_at);
CREATE INDEX ON order_lines (sku);
