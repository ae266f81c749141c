//! `PAY_PAID_*`: the "order paid" subscribe message (sent by [`crate::subscribe`]); its
//! template data is parsed and checked there, where it is rendered.

/// `PAY_PAID_*`: the message to send when an order is paid. Off unless the template is set.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PaidMessageConfig {
    /// Subscribe message template id sent when an order is paid; unset = no message.
    #[arg(
        long,
        env = "PAY_PAID_TEMPLATE_ID",
        value_name = "PAY_PAID_TEMPLATE_ID"
    )]
    pub paid_template_id: Option<String>,

    /// The template's keywords, `key=value;key=value`; values may use {order_no}, {amount}
    /// (yuan, e.g. 9.90), {amount_fen}, {description}, {paid_at} (Beijing time), {transaction_id}.
    #[arg(
        long,
        env = "PAY_PAID_TEMPLATE_DATA",
        value_name = "PAY_PAID_TEMPLATE_DATA",
        default_value = ""
    )]
    pub paid_template_data: String,

    /// Mini program page the message opens (placeholders allowed), e.g. pages/order?no={order_no}.
    #[arg(
        long,
        env = "PAY_PAID_TEMPLATE_PAGE",
        value_name = "PAY_PAID_TEMPLATE_PAGE"
    )]
    pub paid_template_page: Option<String>,

    /// Attempts before a message that keeps failing transiently is given up.
    #[arg(long, env = "PAY_PAID_MESSAGE_MAX_ATTEMPTS", value_name = "PAY_PAID_MESSAGE_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub paid_message_max_attempts: u32,

    /// First retry delay in milliseconds (doubling per attempt).
    #[arg(long, env = "PAY_PAID_MESSAGE_RETRY_MS", value_name = "PAY_PAID_MESSAGE_RETRY_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub paid_message_retry_ms: u64,

    /// auth-service (GetAccessToken) for the message's access_token.
    #[arg(
        long,
        env = "PAY_AUTH_SERVICE_URL",
        value_name = "PAY_AUTH_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_service_url: String,
}
