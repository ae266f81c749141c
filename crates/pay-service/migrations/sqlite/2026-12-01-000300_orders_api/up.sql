-- The WeChat Pay API that places (placed) the order: 'v2' (XML) or 'v3' (JSON, RSA). Set when
-- the order is created from WXMP_PAY_API; query, close and notifies of the order use the same
-- API, so switching WXMP_PAY_API does not strand orders in flight.
ALTER TABLE orders ADD COLUMN api TEXT NOT NULL DEFAULT 'v2' CHECK (api IN ('v2', 'v3'));
