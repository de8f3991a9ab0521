-- The first response to each Idempotency-Key, per principal (`role:sub`), with the
-- fingerprint of the request it answered (SHA-256 of method, path and canonical
-- body). Rows older than the configured TTL are purged by the server.
CREATE TABLE api_idempotency_keys (
    principal   text        NOT NULL,
    key         text        NOT NULL,
    fingerprint bytea       NOT NULL,
    status      smallint    NOT NULL,
    response    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

CREATE INDEX api_idempotency_keys_created_at ON api_idempotency_keys (created_at);
