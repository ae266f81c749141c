-- Refunds (issue 23, the rest):
-- notify_url: the refund notify URL bound when the refund is created (as an order's is), so a
--   resend after PAY_REFUND_NOTIFY_URL changed is the same request; '' for refunds made before
--   this column (they use the configured URL, as they did).
-- origin: 'wxmp' for refunds asked for here, 'outside' for refunds made elsewhere (e.g. in the
--   merchant platform) that WeChat's refundquery of the order reported and wxmp recorded.
-- received_account: where WeChat says the money went (v3 user_received_account, v2
--   refund_recv_accout), e.g. '支付用户零钱', or '商户结算银行账户' after an abnormal refund was
--   re-routed to the merchant's bank account (then the payer still has to be paid otherwise).
ALTER TABLE refunds ADD COLUMN notify_url TEXT NOT NULL DEFAULT '';
ALTER TABLE refunds ADD COLUMN origin TEXT NOT NULL DEFAULT 'wxmp';
ALTER TABLE refunds ADD COLUMN received_account TEXT NOT NULL DEFAULT '';
