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
    -- Serves stream reads, the current version of a stream (one descent to its
    -- last entry), and reads by category (a range of stream ids).
    UNIQUE (stream_id, version)
);

-- The one row every append locks: the last position and the last hash of the chain.
CREATE TABLE log_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint  NOT NULL,
    hash      bytea   NOT NULL
);
INSERT INTO log_head (singleton, position, hash)
VALUES (true, 0, decode(repeat('00', 32), 'hex'));

-- Idempotency: the first result of every append that carried a command id, written
-- in the same transaction as its events.
CREATE TABLE appended_commands (
    command_id     uuid        PRIMARY KEY,
    stream_id      text        COLLATE "C" NOT NULL,
    fingerprint    bytea       NOT NULL,
    first_position bigint      NOT NULL,
    last_position  bigint      NOT NULL,
    stream_version bigint      NOT NULL,
    recorded_at    timestamptz NOT NULL
);
