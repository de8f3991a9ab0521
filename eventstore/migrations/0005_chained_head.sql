-- Moving the head from a batch the appender chained onto its previous one, before
-- that one had committed (docs/architecture.md, "Chained batches"). The batch's rows
-- are already in (positions after `expected`); this takes the head row's lock, which
-- waits for the previous batch's transaction to end, and moves the head only if it is
-- where that batch left it: position and hash. Otherwise the previous batch did not
-- commit, or another process appended, and the error rolls this batch back, so its
-- positions can never follow a gap or commit out of order.
--
-- The wait is bounded: a batch chained by one process can deadlock with another
-- process's batch that locked the head first and then meets these rows' positions;
-- the timeout ends it well before the deadlock detector would, and the appender
-- writes the batch again the ordinary way.
CREATE FUNCTION log_advance_head(
    expected_position bigint,
    expected_hash     bytea,
    new_position      bigint,
    new_hash          bytea,
    new_recorded_at   timestamptz,
    channel           text
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    lock_timeout_before text := current_setting('lock_timeout');
    head_position bigint;
    head_hash bytea;
BEGIN
    PERFORM set_config('lock_timeout', '500ms', true);
    -- Lock first, then compare: an UPDATE whose WHERE names the position would skip
    -- the row without waiting while the batch ahead's uncommitted move is on it
    -- (the committed version does not match yet). FOR UPDATE waits for that
    -- transaction and then reads the row as it committed it.
    SELECT position, hash INTO head_position, head_hash FROM log_head FOR UPDATE;
    PERFORM set_config('lock_timeout', lock_timeout_before, true);
    IF head_position <> expected_position OR head_hash <> expected_hash THEN
        RAISE EXCEPTION 'the log head is at position %, not %', head_position, expected_position
            USING ERRCODE = 'CMH01';
    END IF;
    UPDATE log_head SET position = new_position, hash = new_hash, recorded_at = new_recorded_at;
    IF new_position <> expected_position THEN
        PERFORM pg_notify(channel, new_position::text);
    END IF;
END;
$$;
