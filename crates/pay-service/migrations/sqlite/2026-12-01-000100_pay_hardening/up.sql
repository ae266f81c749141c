-- What the first unifiedorder of an order was placed with: every retry sends the same
-- notify_url and signs with the same algorithm, whatever the configuration says now, and the
-- order's notify is verified with that algorithm (WeChat's notify carries no sign_type).
-- '' on orders placed before this migration: the live configuration is used for them.
ALTER TABLE orders ADD COLUMN notify_url TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN sign_type TEXT NOT NULL DEFAULT '';
-- The random value of the current reconcile claim: a replica releases only its own lease.
ALTER TABLE orders ADD COLUMN reconcile_lease_owner TEXT NOT NULL DEFAULT '';
-- POST /pay/ without an idempotency key reuses the caller's recent open order of a product.
CREATE INDEX orders_user_product_idx ON orders (user_id, product_id, created_at);

-- Unverified notifies keep only a hash and a short prefix of their body (anyone can post
-- them); verified ones keep the whole body. Rows are pruned by age.
ALTER TABLE pay_notifications ADD COLUMN body_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE pay_notifications ADD COLUMN body_len BIGINT NOT NULL DEFAULT 0;
CREATE INDEX pay_notifications_received_at_idx ON pay_notifications (received_at);
