-- Bills (issue 27): WeChat's daily statement per (China-time day, API), its parsed lines and
-- the differences found against orders and refunds.

-- One row per day and API: the job's state, its lease (one replica works a day at a time),
-- and where it got to, so that a run that died resumes instead of starting over.
CREATE TABLE bill_days (
    bill_date        TEXT    NOT NULL,              -- yyyy-MM-dd, China time
    api              TEXT    NOT NULL CHECK (api IN ('v2', 'v3')),
    -- WAITING (no bill yet, or a retry is due) → LOADING (bill stored, lines being parsed)
    -- → MATCHING → DONE
    state            TEXT    NOT NULL CHECK (state IN ('WAITING', 'LOADING', 'MATCHING', 'DONE')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL DEFAULT 0,
    lease_owner      TEXT    NOT NULL DEFAULT '',
    lease_until      BIGINT  NOT NULL DEFAULT 0,
    last_error       TEXT    NOT NULL DEFAULT '',
    -- The bill as downloaded (decompressed text) and the SHA1 it was checked against.
    raw              TEXT    NOT NULL DEFAULT '',
    raw_sha1         TEXT    NOT NULL DEFAULT '',
    raw_gzip         BOOLEAN NOT NULL DEFAULT FALSE,
    no_bill          BOOLEAN NOT NULL DEFAULT FALSE,
    lines_total      BIGINT  NOT NULL DEFAULT 0,
    lines_done       BIGINT  NOT NULL DEFAULT 0,
    -- Totals (fen; fees in thousandths of a fen), filled when DONE.
    wechat_paid_fen      BIGINT NOT NULL DEFAULT 0,
    wechat_refunded_fen  BIGINT NOT NULL DEFAULT 0,
    wechat_fee_millifen  BIGINT NOT NULL DEFAULT 0,
    ledger_paid_fen      BIGINT NOT NULL DEFAULT 0,
    ledger_refunded_fen  BIGINT NOT NULL DEFAULT 0,
    matched              BIGINT NOT NULL DEFAULT 0,
    mismatches           BIGINT NOT NULL DEFAULT 0,
    summary_json     TEXT    NOT NULL DEFAULT '',
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    completed_at     BIGINT,
    PRIMARY KEY (bill_date, api)
);

CREATE INDEX bill_days_due_idx ON bill_days (state, next_attempt_at);

-- The bill's detail rows, parsed (amounts in fen, fee in thousandths of a fen).
CREATE TABLE bill_lines (
    bill_date       TEXT   NOT NULL,
    api             TEXT   NOT NULL,
    line_no         BIGINT NOT NULL,
    kind            TEXT   NOT NULL,               -- PAYMENT, REFUND, REVOKED, OTHER
    trade_time      TEXT   NOT NULL,
    out_trade_no    TEXT   NOT NULL,
    transaction_id  TEXT   NOT NULL,
    out_refund_no   TEXT   NOT NULL,
    refund_id       TEXT   NOT NULL,
    amount_fen      BIGINT NOT NULL,
    fee_millifen    BIGINT NOT NULL,
    trade_state     TEXT   NOT NULL,
    PRIMARY KEY (bill_date, api, line_no)
);

CREATE INDEX bill_lines_out_trade_no_idx ON bill_lines (out_trade_no);
CREATE INDEX bill_lines_out_refund_no_idx ON bill_lines (out_refund_no);

-- Every difference, once per day, kind and key: a re-run writes nothing twice.
CREATE TABLE bill_mismatches (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    bill_date      TEXT   NOT NULL,
    api            TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    key            TEXT   NOT NULL,
    order_no       TEXT   NOT NULL,
    out_refund_no  TEXT   NOT NULL,
    wechat_fen     BIGINT,
    ledger_fen     BIGINT,
    detail         TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    UNIQUE (bill_date, kind, key)
);
