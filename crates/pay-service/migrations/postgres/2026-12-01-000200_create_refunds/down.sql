DROP TABLE refund_notifications;
DROP TABLE refunds;
ALTER TABLE orders DROP CONSTRAINT orders_refund_totals_check;
ALTER TABLE orders DROP COLUMN refunded_fen;
ALTER TABLE orders DROP COLUMN refunding_fen;
