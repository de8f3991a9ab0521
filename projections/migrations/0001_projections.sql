-- Bookkeeping of the projection runner. Read models live in the schema `read_models`;
-- a rebuild fills a shadow schema `rebuild_<projection>` and swaps its tables in.
CREATE SCHEMA IF NOT EXISTS read_models;

-- One row per projection: how far its read model has applied the log. Moved in the
-- same transaction as the read model's rows, so the two never disagree.
CREATE TABLE projection_checkpoints (
    name           text             PRIMARY KEY,
    -- The last log position applied (0: nothing yet).
    position       bigint           NOT NULL DEFAULT 0,
    -- Bumped by every rebuild that swaps new tables in: a runner that finds another
    -- generation than it expects forgets its cached rows.
    generation     integer          NOT NULL DEFAULT 0,
    -- 'running', or 'failed' when an event could not be applied (see error).
    status         text             NOT NULL DEFAULT 'running'
                                    CHECK (status IN ('running', 'failed')),
    error          text,
    error_position bigint,
    -- The runner that applied the last batch, and how fast it was going.
    owner          text,
    events_per_sec double precision NOT NULL DEFAULT 0,
    updated_at     timestamptz      NOT NULL DEFAULT now()
);

-- One row per rebuild in progress: how far its shadow tables have applied the log.
CREATE TABLE projection_rebuilds (
    name           text             PRIMARY KEY,
    position       bigint           NOT NULL DEFAULT 0,
    -- The read model's schema version the shadow was created with; a rebuild that
    -- finds another one starts over instead of resuming.
    schema_version integer          NOT NULL,
    events_per_sec double precision NOT NULL DEFAULT 0,
    started_at     timestamptz      NOT NULL DEFAULT now(),
    updated_at     timestamptz      NOT NULL DEFAULT now()
);
