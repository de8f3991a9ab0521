-- Read model `carts`: every cart with its current lines and totals. Fed by `cart-*`
-- streams. Cart events carry no business time, so times are when they were recorded.
CREATE TABLE carts (
    cart_id               uuid        PRIMARY KEY,
    -- guest | customer; exactly one of customer_id and guest_token is set.
    owner_kind            text        NOT NULL,
    customer_id           uuid,
    guest_token           uuid,
    currency              text        NOT NULL,
    -- open | checked_out | abandoned | closed
    status                text        NOT NULL,
    line_count            integer     NOT NULL,
    item_count            bigint      NOT NULL,
    total_minor           bigint      NOT NULL,
    -- The total the cart was last checked out with, and the order that closed it.
    checked_out_total_minor bigint,
    order_id              uuid,
    created_at            timestamptz NOT NULL,
    checked_out_at        timestamptz,
    -- When it was abandoned or closed.
    ended_at              timestamptz,
    updated_at            timestamptz NOT NULL,
    position              bigint      NOT NULL
);

CREATE TABLE cart_lines (
    cart_id          uuid    NOT NULL,
    sku              text    COLLATE "C" NOT NULL,
    -- Order of the lines as they were added, from 1.
    line_no          integer NOT NULL,
    quantity         bigint  NOT NULL,
    unit_price_minor bigint  NOT NULL,
    line_total_minor bigint  NOT NULL,
    PRIMARY KEY (cart_id, sku)
);

-- secondary indexes
CREATE INDEX ON carts (customer_id, updated_at);
CREATE INDEX ON carts (status, updated_at);
