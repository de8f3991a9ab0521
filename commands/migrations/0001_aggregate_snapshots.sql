-- The latest snapshot of each long stream: the state after event `version`, as
-- JSON text in the aggregate's snapshot form `state_schema`. A cache of a replay,
-- never the truth: dropping this table only makes the next loads slower.
CREATE TABLE aggregate_snapshots (
    stream_id    text        PRIMARY KEY,
    version      bigint      NOT NULL CHECK (version > 0),
    state_schema integer     NOT NULL,
    state        bytea       NOT NULL,
    taken_at     timestamptz NOT NULL DEFAULT now()
);
