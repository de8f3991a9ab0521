-- Every authentic callback of the payment provider, once: the provider delivers at
-- least once, so a redelivery of an event id already here is acknowledged and
-- otherwise ignored. The primary key is the dedupe across processes.
CREATE TABLE psp_webhook_events (
    event_id    text        PRIMARY KEY,
    event_type  text        NOT NULL,
    -- The provider's id of the object the event is about (authorization, refund).
    object_id   text,
    payload     jsonb       NOT NULL,
    signed_at   timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX psp_webhook_events_object_id ON psp_webhook_events (object_id);
