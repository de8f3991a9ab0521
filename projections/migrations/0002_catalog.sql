-- Read model `catalog`: products, their SKUs, the price of every SKU per currency,
-- and the stock of every SKU summed over warehouses. Fed by `product-*` and
-- `inventory-*` streams.
CREATE TABLE catalog_products (
    product_id  uuid        PRIMARY KEY,
    title       text        NOT NULL,
    description text        NOT NULL,
    brand       text        NOT NULL,
    -- Category path from the root, e.g. {Shoes,Running}.
    category    text[]      NOT NULL,
    -- draft | published | unpublished | discontinued
    status      text        NOT NULL,
    -- Product-wide prices by currency, in minor units: {"EUR": 1999}. Every SKU
    -- without a price of its own in a currency uses these (see catalog_prices).
    base_prices jsonb       NOT NULL,
    sku_count   integer     NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    -- Log position of the last event that changed the row.
    position    bigint      NOT NULL
);

CREATE TABLE catalog_skus (
    product_id uuid    NOT NULL,
    sku        text    COLLATE "C" NOT NULL,
    -- Order of the SKUs within the product, from 1.
    line_no    integer NOT NULL,
    attributes jsonb   NOT NULL,
    PRIMARY KEY (product_id, sku)
);

-- The price a cart pays for a SKU in a currency: the SKU's own price (own = true)
-- or else the product-wide one.
CREATE TABLE catalog_prices (
    product_id  uuid    NOT NULL,
    sku         text    COLLATE "C" NOT NULL,
    currency    text    NOT NULL,
    price_minor bigint  NOT NULL,
    own         boolean NOT NULL,
    PRIMARY KEY (product_id, sku, currency)
);

CREATE TABLE catalog_stock (
    sku        text        COLLATE "C" PRIMARY KEY,
    on_hand    bigint      NOT NULL,
    reserved   bigint      NOT NULL,
    available  bigint      GENERATED ALWAYS AS (on_hand - reserved) STORED,
    updated_at timestamptz NOT NULL,
    position   bigint      NOT NULL
);

-- secondary indexes
CREATE INDEX ON catalog_products (status, title);
CREATE INDEX ON catalog_products (brand);
CREATE INDEX ON catalog_skus (sku);
