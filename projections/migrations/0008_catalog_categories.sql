-- Products by category at any level of their path (`category @> ARRAY[...]`): a
-- listing by category no longer walks every product of the status to find the
-- few in a small one.

-- secondary indexes
CREATE INDEX ON catalog_products USING gin (category);
