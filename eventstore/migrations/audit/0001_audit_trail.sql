-- Who did what to the log and the read models outside of appends (appends carry
-- their actor in their metadata): rebuilds, exports, verifications, erasures.
CREATE TABLE audit_trail (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    -- `role:subject` of a token, or `cli:<user>` for the command line.
    actor       text        NOT NULL,
    action      text        NOT NULL,
    details     jsonb       NOT NULL DEFAULT '{}'
);
