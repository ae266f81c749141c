-- Refund notifies (issue 23): anyone can post one, so a body that does not decrypt (v2) or
-- authenticate (v3) is kept as a short prefix with the SHA-256 and length of the whole body,
-- as pay notifies are; received_at is indexed for pruning by age.
ALTER TABLE refund_notifications ADD COLUMN body_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE refund_notifications ADD COLUMN body_len BIGINT NOT NULL DEFAULT 0;
CREATE INDEX refund_notifications_received_at_idx ON refund_notifications (received_at);
