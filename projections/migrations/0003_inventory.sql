-- Read model `inventory`: stock per SKU and warehouse. Fed by `inventory-*` streams.
CREATE TABLE inventory_levels (
    sku        text        COLLATE "C" NOT NULL,
    warehouse  text        COLLATE "C" NOT NULL,
    -- Allocation priority, lower first (100 until set).
    priority   integer     NOT NULL,
    on_hand    bigint      NOT NULL,
    reserved   bigint      NOT NULL,
    available  bigint      GENERATED ALWAYS AS (on_hand - reserved) STORED,
    updated_at timestamptz NOT NULL,
    position   bigint      NOT NULL,
    PRIMARY KEY (sku, warehouse)
);

-- secondary indexes
CREATE INDEX ON inventory_levels (warehouse, sku);
