-- The "order paid" subscribe message of each order (subscribe.rs): one row per order, so the
-- message is sent at most once; every state change is a conditional UPDATE.
-- PENDING (due at next_attempt_at) → SENDING (claimed) → SENT | REFUSED (43101) | FAILED
-- (given up or rejected) | UNKNOWN (timed out mid-send: never resent) ; SENDING → PENDING on
-- a transient error that WeChat answered (-1, 5xx) or a failure before the send.
CREATE TABLE paid_messages (
    order_no        TEXT    NOT NULL PRIMARY KEY,
    app_id          TEXT    NOT NULL,
    openid          TEXT    NOT NULL,
    template_id     TEXT    NOT NULL,
    -- The rendered keyword → value map as JSON, fixed when the row is made.
    data            TEXT    NOT NULL,
    page            TEXT    NOT NULL DEFAULT '',
    state           TEXT    NOT NULL CHECK (state IN ('PENDING', 'SENDING', 'SENT', 'REFUSED', 'FAILED', 'UNKNOWN')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    last_error      TEXT    NOT NULL DEFAULT '',
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL
);

CREATE INDEX paid_messages_due_idx ON paid_messages (state, next_attempt_at);
