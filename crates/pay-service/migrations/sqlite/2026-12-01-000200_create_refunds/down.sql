DROP TABLE refund_notifications;
DROP TABLE refunds;
ALTER TABLE orders DROP COLUMN refunded_fen;
ALTER TABLE orders DROP COLUMN refunding_fen;
