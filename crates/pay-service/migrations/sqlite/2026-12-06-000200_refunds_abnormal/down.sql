-- Fails while any refund is ABNORMAL: settle those first.
CREATE TABLE refunds_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    out_refund_no TEXT    NOT NULL UNIQUE,
    order_no      TEXT    NOT NULL REFERENCES orders (order_no),
    amount_fen    BIGINT  NOT NULL CHECK (amount_fen > 0),
    reason        TEXT    NOT NULL DEFAULT '',
    state         TEXT    NOT NULL CHECK (state IN ('PENDING', 'PROCESSING', 'SUCCESS', 'FAILED', 'CLOSED')),
    api           TEXT    NOT NULL DEFAULT 'v2',
    refund_id     TEXT    NOT NULL DEFAULT '',
    failure       TEXT    NOT NULL DEFAULT '',
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    settled_at    BIGINT,
    next_check_at BIGINT  NOT NULL DEFAULT 0
);

INSERT INTO refunds_new (id, out_refund_no, order_no, amount_fen, reason, state, api, refund_id,
                         failure, created_at, updated_at, settled_at, next_check_at)
SELECT id, out_refund_no, order_no, amount_fen, reason, state, api, refund_id,
       failure, created_at, updated_at, settled_at, next_check_at
FROM refunds;

DROP TABLE refunds;
ALTER TABLE refunds_new RENAME TO refunds;
CREATE INDEX refunds_order_no_idx ON refunds (order_no);
CREATE INDEX refunds_state_next_check_at_idx ON refunds (state, next_check_at);
