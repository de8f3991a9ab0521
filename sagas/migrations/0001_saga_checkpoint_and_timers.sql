-- The checkout saga's runner: the last log position whose steps all ran. The runner
-- moves it with `WHERE position = <where it left it>`, so a stale runner that lost
-- its lease cannot move it back or skip.
CREATE TABLE saga_checkpoints (
    name text PRIMARY KEY,
    position bigint NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Durable deadlines: checkout deadlines, payment retries and reservation expiries.
-- Ids are derived from what the timer is for, so scheduling one twice keeps one row.
CREATE TABLE saga_timers (
    id uuid PRIMARY KEY,
    due_at timestamptz NOT NULL,
    action jsonb NOT NULL
);
CREATE INDEX saga_timers_due ON saga_timers (due_at, id);
