-- A long stream's state is large (an SKU's inventory keeps every reservation id it
-- has used) and rewritten every thousand or so events. PostgreSQL's own compression
-- (pglz) took most of the server's time for such a write; lz4 compresses the same
-- JSON several times faster, at a similar size. A server built without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE aggregate_snapshots ALTER COLUMN state SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available; snapshots stay compressed with pglz';
END
$$;
