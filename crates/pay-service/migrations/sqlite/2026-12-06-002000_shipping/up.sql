-- Shipping (issue 25): one row per order whose shipping information is (to be) uploaded to
-- WeChat (upload_shipping_info), and the order's shipping state after that.
-- PENDING_UPLOAD (due at next_attempt_at; a worker owns it while lease_until > now)
--   → SHIPPED (WeChat took it) → RECEIVED (user confirmed, push) → SETTLED (push);
-- SHIPPED → PENDING_UPLOAD once more for WeChat's one allowed modification (modifications = 1).
-- Every change is a conditional UPDATE; ORDER_SHIPPED/RECEIVED/SETTLED go to the outbox in the
-- same transaction.
CREATE TABLE shipments (
    order_no        TEXT    NOT NULL PRIMARY KEY,
    app_id          TEXT    NOT NULL,
    transaction_id  TEXT    NOT NULL,
    openid          TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('PENDING_UPLOAD', 'SHIPPED', 'RECEIVED', 'SETTLED')),
    logistics_type  INTEGER NOT NULL,
    delivery_mode   INTEGER NOT NULL,
    -- JSON: {"is_all_delivered": bool|null, "shipping_list": [...]} as WeChat takes it.
    request         TEXT    NOT NULL,
    modifications   INTEGER NOT NULL DEFAULT 0,
    uploads         INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    lease_until     BIGINT  NOT NULL DEFAULT 0,
    lease_token     TEXT    NOT NULL DEFAULT '',
    last_error      TEXT    NOT NULL DEFAULT '',
    requested_at    BIGINT  NOT NULL,
    shipped_at      BIGINT,
    received_at     BIGINT,
    settled_at      BIGINT,
    updated_at      BIGINT  NOT NULL
);

CREATE INDEX shipments_due_idx ON shipments (state, next_attempt_at);

-- Every message push routed to pay-service, once per dedup_key (WeChat retries a push it got
-- no "success" for; a replay of a captured push carries the same key): the unique key makes
-- the first one win, across replicas, in the transaction of the state change it causes.
CREATE TABLE message_pushes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key   TEXT    NOT NULL UNIQUE,
    app_id      TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    verdict     TEXT    NOT NULL,
    received_at BIGINT  NOT NULL
);

CREATE INDEX message_pushes_received_at_idx ON message_pushes (received_at);
