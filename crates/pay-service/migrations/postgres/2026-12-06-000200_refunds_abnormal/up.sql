-- Abnormal refunds (issue 23): v2 CHANGE / v3 ABNORMAL is not a failure. WeChat holds the
-- money in its intermediate refund account until the merchant re-routes it, so the refund
-- stays in flight (its amount in the order's refunding_fen) as ABNORMAL.
ALTER TABLE refunds DROP CONSTRAINT refunds_state_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_state_check
    CHECK (state IN ('PENDING', 'PROCESSING', 'ABNORMAL', 'SUCCESS', 'FAILED', 'CLOSED'));
