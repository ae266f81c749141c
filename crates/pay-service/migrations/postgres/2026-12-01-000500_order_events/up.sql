-- The outbox: one row per state change of an order (or refund), inserted by the transaction
-- that makes the change. Ids are taken in commit order (events.rs holds a transaction-scoped
-- advisory lock around the INSERT), so "every event after id N" never skips one that commits
-- late; BIGSERIAL never hands out an id twice, even after pruning.
CREATE TABLE order_events (
    id         BIGSERIAL PRIMARY KEY,
    order_no   TEXT   NOT NULL,
    kind       TEXT   NOT NULL,
    -- JSON: the order (or refund) as the change left it.
    payload    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX order_events_created_at_idx ON order_events (created_at);
CREATE INDEX order_events_order_no_idx ON order_events (order_no);

-- How far each webhook endpoint's deliveries have been planned (the fan-out cursor).
CREATE TABLE webhook_cursors (
    endpoint      TEXT   PRIMARY KEY,
    after_id      BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- One delivery of one event to one endpoint; a replica owns it while lease_until > now.
CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    event_id        BIGINT  NOT NULL,
    endpoint        TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('PENDING', 'DELIVERED', 'DEAD')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    lease_until     BIGINT  NOT NULL DEFAULT 0,
    lease_token     TEXT    NOT NULL DEFAULT '',
    last_error      TEXT    NOT NULL DEFAULT '',
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    UNIQUE (endpoint, event_id)
);

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (state, next_attempt_at);
