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
        notify_url -> Text,
        sign_type -> Text,
        reconcile_lease_owner -> Text,
        refunding_fen -> BigInt,
        refunded_fen -> BigInt,
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
        body_sha256 -> Text,
        body_len -> BigInt,
    }
}

diesel::table! {
    order_events (id) {
        id -> BigInt,
        order_no -> Text,
        kind -> Text,
        payload -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_cursors (endpoint) {
        endpoint -> Text,
        after_id -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> BigInt,
        event_id -> BigInt,
        endpoint -> Text,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        lease_until -> BigInt,
        lease_token -> Text,
        last_error -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::joinable!(webhook_deliveries -> order_events (event_id));
diesel::allow_tables_to_appear_in_same_query!(order_events, webhook_deliveries);

diesel::table! {
    paid_messages (order_no) {
        order_no -> Text,
        app_id -> Text,
        openid -> Text,
        template_id -> Text,
        data -> Text,
        page -> Text,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        last_error -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    refunds (id) {
        id -> BigInt,
        out_refund_no -> Text,
        order_no -> Text,
        amount_fen -> BigInt,
        reason -> Text,
        state -> Text,
        api -> Text,
        refund_id -> Text,
        failure -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        settled_at -> Nullable<BigInt>,
        next_check_at -> BigInt,
        notify_url -> Text,
        origin -> Text,
        received_account -> Text,
    }
}

diesel::table! {
    refund_notifications (id) {
        id -> BigInt,
        received_at -> BigInt,
        out_refund_no -> Text,
        raw_body -> Text,
        verdict -> Text,
        accepted -> Bool,
        body_sha256 -> Text,
        body_len -> BigInt,
    }
}

diesel::table! {
    bill_days (bill_date, api) {
        bill_date -> Text,
        api -> Text,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        lease_owner -> Text,
        lease_until -> BigInt,
        last_error -> Text,
        raw -> Text,
        raw_sha1 -> Text,
        raw_gzip -> Bool,
        no_bill -> Bool,
        lines_total -> BigInt,
        lines_done -> BigInt,
        wechat_paid_fen -> BigInt,
        wechat_refunded_fen -> BigInt,
        wechat_fee_millifen -> BigInt,
        ledger_paid_fen -> BigInt,
        ledger_refunded_fen -> BigInt,
        matched -> BigInt,
        mismatches -> BigInt,
        summary_json -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        completed_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    shipments (order_no) {
        order_no -> Text,
        app_id -> Text,
        transaction_id -> Text,
        openid -> Text,
        state -> Text,
        logistics_type -> Integer,
        delivery_mode -> Integer,
        request -> Text,
        modifications -> Integer,
        uploads -> Integer,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        lease_until -> BigInt,
        lease_token -> Text,
        last_error -> Text,
        requested_at -> BigInt,
        shipped_at -> Nullable<BigInt>,
        received_at -> Nullable<BigInt>,
        settled_at -> Nullable<BigInt>,
        updated_at -> BigInt,
    }
}

diesel::table! {
    bill_lines (bill_date, api, line_no) {
        bill_date -> Text,
        api -> Text,
        line_no -> BigInt,
        kind -> Text,
        trade_time -> Text,
        out_trade_no -> Text,
        transaction_id -> Text,
        out_refund_no -> Text,
        refund_id -> Text,
        amount_fen -> BigInt,
        fee_millifen -> BigInt,
        trade_state -> Text,
    }
}

diesel::table! {
    bill_mismatches (id) {
        id -> BigInt,
        bill_date -> Text,
        api -> Text,
        kind -> Text,
        key -> Text,
        order_no -> Text,
        out_refund_no -> Text,
        wechat_fen -> Nullable<BigInt>,
        ledger_fen -> Nullable<BigInt>,
        detail -> Text,
        created_at -> BigInt,
        resolved_at -> Nullable<BigInt>,
        resolution -> Text,
    }
}

diesel::table! {
    event_relays (relay) {
        relay -> Text,
        after_id -> BigInt,
        holder -> Text,
        lease_until_ms -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    message_pushes (id) {
        id -> BigInt,
        dedup_key -> Text,
        app_id -> Text,
        event -> Text,
        message -> Text,
        verdict -> Text,
        received_at -> BigInt,
    }
}

diesel::table! {
    coin_spends (spend_no) {
        spend_no -> Text,
        user_id -> BigInt,
        app_id -> Text,
        openid -> Text,
        env -> Integer,
        idempotency_key -> Text,
        amount -> BigInt,
        state -> Text,
        balance_after -> BigInt,
        cancel_no -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}
