-- Per-subject data keys for personal data in events (crypto-shredding). Kept outside
-- the log: deleting a subject's row makes every field sealed with its key unreadable,
-- while the events (and their hash chain) stay as they are.
CREATE TABLE privacy_keys (
    subject    text        PRIMARY KEY,
    -- Named in every sealed field, so a field sealed under an older key of the same
    -- subject is told apart from one sealed under the current key.
    key_id     uuid        NOT NULL,
    data_key   bytea       NOT NULL CHECK (octet_length(data_key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
