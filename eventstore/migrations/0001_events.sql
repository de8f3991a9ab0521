-- The event log. `position` is global and gapless: it is assigned under the lock on
-- the single `log_head` row, so commit order equals position order and a reader of
-- `position > checkpoint` can never skip an event that commits later.
CREATE TABLE events (
    position       bigint      PRIMARY KEY,
    stream_id      text        COLLATE "C" NOT NULL,
    version        bigint      NOT NULL,
    event_id       uuid        NOT NULL UNIQUE,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    data           jsonb       NOT NULL,
    metadata       jsonb       NOT NULL,
    recorded_at    timestamptz NOT NULL,
    hash           bytea       NOT NULL,
    -- Idempotency, on the first event of an append that carried a command id: the
    -- command, a fingerprint of what it appended, and how many events it wrote.
    -- Kept in this row rather than a table of its own: one heap insert per append
    -- less on the hot path.
    command_id     uuid,
    fingerprint    bytea,
    append_size    integer,
    -- Serves stream reads, the current version of a stream (one descent to its
    -- last entry), and reads by category (a range of stream ids).
    UNIQUE (stream_id, version)
);
CREATE UNIQUE INDEX events_command_id ON events (command_id) WHERE command_id IS NOT NULL;

-- The one row every append locks: the last position, the last hash of the chain, and
-- the last event's time (so `recorded_at` never goes back, whatever the clock does).
CREATE TABLE log_head (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    position    bigint      NOT NULL,
    hash        bytea       NOT NULL,
    recorded_at timestamptz NOT NULL
);
INSERT INTO log_head (singleton, position, hash, recorded_at)
VALUES (true, 0, decode(repeat('00', 32), 'hex'), '1970-01-01 00:00:00+00');
