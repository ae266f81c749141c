-- Coin mode (代币, issue 26): one row per spend of a user's coins at WeChat (currency_pay),
-- made for a shop service under its idempotency key. The row is written before WeChat is
-- asked, and its spend_no is the order_id WeChat dedups on, so a retry or a second replica
-- never spends twice: PENDING (asked, answer unknown) → SPENT | REFUSED (not enough coins);
-- SPENT → CANCELLED (cancel_currency_pay under cancel_no). Every change is a conditional UPDATE.
CREATE TABLE coin_spends (
    spend_no        TEXT    NOT NULL PRIMARY KEY,
    user_id         BIGINT  NOT NULL,
    app_id          TEXT    NOT NULL,
    openid          TEXT    NOT NULL,
    env             INTEGER NOT NULL,
    idempotency_key TEXT    NOT NULL,
    amount          BIGINT  NOT NULL CHECK (amount > 0),
    state           TEXT    NOT NULL CHECK (state IN ('PENDING', 'SPENT', 'REFUSED', 'CANCELLED')),
    balance_after   BIGINT  NOT NULL DEFAULT 0,
    cancel_no       TEXT    NOT NULL DEFAULT '',
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    UNIQUE (user_id, idempotency_key)
);
