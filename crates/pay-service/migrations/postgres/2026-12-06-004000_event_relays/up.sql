-- One row per relay of the outbox into a message bus (events/relay.rs): how far it has
-- published (after_id, moved only after the bus acknowledged every event up to it) and which
-- replica may publish (holder, until lease_until_ms, unix milliseconds; renewed while it runs).
CREATE TABLE event_relays (
    relay          TEXT   PRIMARY KEY,
    after_id       BIGINT NOT NULL,
    holder         TEXT   NOT NULL DEFAULT '',
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    updated_at     BIGINT NOT NULL
);
