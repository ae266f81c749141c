//! The test Redis and a key prefix per test, so tests share one server and never each
//! other's keys.

/// Where tests find Redis: `WXMP_TEST_REDIS_URL`, default the local server.
pub fn url() -> String {
    std::env::var("WXMP_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A fresh key prefix under `label`: `<label>:<32 hex>:`.
pub fn fresh_prefix(label: &str) -> String {
    format!("{label}:{}:", uuid::Uuid::new_v4().simple())
}
