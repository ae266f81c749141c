//! The `users` table, written by hand to match both migrations folders.

diesel::table! {
    users (id) {
        id -> BigInt,
        app_id -> Text,
        openid -> Text,
        unionid -> Text,
        nickname -> Text,
        avatar_url -> Text,
        gender -> Integer,
        language -> Text,
        city -> Text,
        province -> Text,
        country -> Text,
        phone -> Text,
        phone_country_code -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        phone_number -> Text,
    }
}
