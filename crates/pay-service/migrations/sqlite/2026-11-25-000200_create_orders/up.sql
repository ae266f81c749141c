-- Orders of pay-service. Money is integer fen, times are unix seconds. Text columns that may be
-- unknown use '' rather than NULL, so conditional UPDATEs compare them with plain `=`.
CREATE TABLE orders (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    -- out_trade_no sent to WeChat: yyyyMMdd + 16 random base62 characters.
    order_no              TEXT    NOT NULL UNIQUE,
    user_id               BIGINT  NOT NULL,
    -- Bound by the first PrepareJsapiPayment: every unifiedorder of the order is identical.
    app_id                TEXT    NOT NULL DEFAULT '',
    openid                TEXT    NOT NULL DEFAULT '',
    client_ip             TEXT    NOT NULL DEFAULT '',
    amount_fen            BIGINT  NOT NULL CHECK (amount_fen > 0),
    description           TEXT    NOT NULL,
    attach                TEXT    NOT NULL DEFAULT '',
    product_id            TEXT    NOT NULL DEFAULT '',
    state                 TEXT    NOT NULL CHECK (state IN ('CREATED', 'PAYING', 'PAID', 'CLOSED', 'REFUNDING', 'REFUNDED')),
    prepay_id             TEXT    NOT NULL DEFAULT '',
    prepay_expires_at     BIGINT  NOT NULL DEFAULT 0,
    prepared_at           BIGINT  NOT NULL DEFAULT 0,
    transaction_id        TEXT    NOT NULL DEFAULT '',
    -- NULL when the caller gave none: NULLs never collide in a unique index.
    idempotency_key       TEXT,
    created_at            BIGINT  NOT NULL,
    updated_at            BIGINT  NOT NULL,
    paid_at               BIGINT,
    expires_at            BIGINT  NOT NULL,
    closed_at             BIGINT,
    -- A reconciler replica owns the row until then (see reconciler.rs).
    reconcile_lease_until BIGINT  NOT NULL DEFAULT 0,
    -- The reconciler asks WeChat about this PAYING order again no earlier than this.
    next_query_at         BIGINT  NOT NULL DEFAULT 0,
    UNIQUE (user_id, idempotency_key)
);

-- One WeChat transaction pays at most one order.
CREATE UNIQUE INDEX orders_transaction_id_idx ON orders (transaction_id) WHERE transaction_id <> '';
CREATE INDEX orders_user_id_idx ON orders (user_id);
-- The reconciler's two scans.
CREATE INDEX orders_state_prepared_at_idx ON orders (state, prepared_at);
CREATE INDEX orders_state_expires_at_idx ON orders (state, expires_at);

-- Every payment notify received, with what we made of it.
CREATE TABLE pay_notifications (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at    BIGINT  NOT NULL,
    out_trade_no   TEXT    NOT NULL DEFAULT '',
    transaction_id TEXT    NOT NULL DEFAULT '',
    raw_body       TEXT    NOT NULL,
    verdict        TEXT    NOT NULL,
    accepted       BOOLEAN NOT NULL
);

CREATE INDEX pay_notifications_out_trade_no_idx ON pay_notifications (out_trade_no);
CREATE INDEX pay_notifications_verdict_idx ON pay_notifications (verdict);
