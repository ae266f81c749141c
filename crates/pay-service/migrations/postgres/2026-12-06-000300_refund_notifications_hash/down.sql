DROP INDEX refund_notifications_received_at_idx;
ALTER TABLE refund_notifications DROP COLUMN body_len;
ALTER TABLE refund_notifications DROP COLUMN body_sha256;
