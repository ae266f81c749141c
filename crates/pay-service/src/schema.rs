//! The pay-service tables, written by hand to match both migrations folders.

diesel::table! {
    orders (id) {
        id -> BigInt,
        order_no -> Text,
        user_id -> BigInt,
        app_id -> Text,
        openid -> Text,
        client_ip -> Text,
        amount_fen -> BigInt,
        description -> Text,
        attach -> Text,
        product_id -> Text,
        state -> Text,
        prepay_id -> Text,
        prepay_expires_at -> BigInt,
        prepared_at -> BigInt,
        transaction_id -> Text,
        idempotency_key -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        paid_at -> Nullable<BigInt>,
        expires_at -> BigInt,
        closed_at -> Nullable<BigInt>,
        reconcile_lease_until -> BigInt,
        next_query_at -> BigInt,
        api -> Text,
    }
}

diesel::table! {
    pay_notifications (id) {
        id -> BigInt,
        received_at -> BigInt,
        out_trade_no -> Text,
        transaction_id -> Text,
        raw_body -> Text,
        verdict -> Text,
        accepted -> Bool,
    }
}
