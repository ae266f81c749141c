-- Users of every mini program served; one row per (app_id, openid).
CREATE TABLE users (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id             TEXT    NOT NULL,
    openid             TEXT    NOT NULL,
    unionid            TEXT    NOT NULL DEFAULT '',
    nickname           TEXT    NOT NULL DEFAULT '',
    avatar_url         TEXT    NOT NULL DEFAULT '',
    gender             INTEGER NOT NULL DEFAULT 0,
    language           TEXT    NOT NULL DEFAULT '',
    city               TEXT    NOT NULL DEFAULT '',
    province           TEXT    NOT NULL DEFAULT '',
    country            TEXT    NOT NULL DEFAULT '',
    phone              TEXT    NOT NULL DEFAULT '',
    phone_country_code TEXT    NOT NULL DEFAULT '',
    created_at         BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL,
    UNIQUE (app_id, openid)
);

-- unionid links one person across the company's apps.
CREATE INDEX users_unionid_idx ON users (unionid) WHERE unionid <> '';
