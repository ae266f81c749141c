-- Fails while any refund is ABNORMAL: settle those first.
ALTER TABLE refunds DROP CONSTRAINT refunds_state_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_state_check
    CHECK (state IN ('PENDING', 'PROCESSING', 'SUCCESS', 'FAILED', 'CLOSED'));
