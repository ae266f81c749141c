ALTER TABLE refunds DROP COLUMN received_account;
ALTER TABLE refunds DROP COLUMN origin;
ALTER TABLE refunds DROP COLUMN notify_url;
