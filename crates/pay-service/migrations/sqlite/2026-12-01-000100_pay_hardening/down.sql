DROP INDEX pay_notifications_received_at_idx;
ALTER TABLE pay_notifications DROP COLUMN body_len;
ALTER TABLE pay_notifications DROP COLUMN body_sha256;
DROP INDEX orders_user_product_idx;
ALTER TABLE orders DROP COLUMN reconcile_lease_owner;
ALTER TABLE orders DROP COLUMN sign_type;
ALTER TABLE orders DROP COLUMN notify_url;
