-- Refunds (issue 12). An order's refund totals move only by conditional UPDATEs in the same
-- transaction as the refund row they follow (see store/refunds.rs):
--   refunding_fen: refunds in flight (PENDING, PROCESSING),
--   refunded_fen:  refunds settled SUCCESS,
-- and refunding_fen + refunded_fen <= amount_fen at all times.
-- (SQLite cannot add a table CHECK to an existing table: the sum is kept by the UPDATEs.)
ALTER TABLE orders ADD COLUMN refunding_fen BIGINT NOT NULL DEFAULT 0 CHECK (refunding_fen >= 0);
ALTER TABLE orders ADD COLUMN refunded_fen  BIGINT NOT NULL DEFAULT 0 CHECK (refunded_fen >= 0);

CREATE TABLE refunds (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Ours, sent to WeChat, which dedupes on it: the idempotency key of the refund.
    out_refund_no TEXT    NOT NULL UNIQUE,
    order_no      TEXT    NOT NULL REFERENCES orders (order_no),
    amount_fen    BIGINT  NOT NULL CHECK (amount_fen > 0),
    reason        TEXT    NOT NULL DEFAULT '',
    state         TEXT    NOT NULL CHECK (state IN ('PENDING', 'PROCESSING', 'SUCCESS', 'FAILED', 'CLOSED')),
    -- The WeChat Pay API that carries it ('v2').
    api           TEXT    NOT NULL DEFAULT 'v2',
    refund_id     TEXT    NOT NULL DEFAULT '',
    -- Why it FAILED / CLOSED (WeChat's err_code or refund_status).
    failure       TEXT    NOT NULL DEFAULT '',
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    settled_at    BIGINT,
    -- The reconciler looks at this PENDING/PROCESSING refund again no earlier than this; also
    -- its claim (a conditional UPDATE pushes it forward).
    next_check_at BIGINT  NOT NULL DEFAULT 0
);

CREATE INDEX refunds_order_no_idx ON refunds (order_no);
CREATE INDEX refunds_state_next_check_at_idx ON refunds (state, next_check_at);

-- Every refund notify received, with what we made of it (the body is encrypted as received).
CREATE TABLE refund_notifications (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at   BIGINT  NOT NULL,
    out_refund_no TEXT    NOT NULL DEFAULT '',
    raw_body      TEXT    NOT NULL,
    verdict       TEXT    NOT NULL,
    accepted      BOOLEAN NOT NULL
);

CREATE INDEX refund_notifications_out_refund_no_idx ON refund_notifications (out_refund_no);
