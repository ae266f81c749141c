//! `GET /v3/certificates`: WeChat Pay's platform certificates, each sealed with the APIv3 key.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::state::Sandbox;
use crate::v3::V3;
use crate::v3::api::{authenticate, signed};
use crate::v3::crypto;
use crate::v3::keys;

pub(super) async fn certificates(
    req: HttpRequest,
    sandbox: web::Data<Sandbox>,
    body: web::Bytes,
) -> HttpResponse {
    if let Err(resp) = authenticate(&sandbox, &req, &body) {
        return *resp;
    }
    let v3 = &sandbox.v3;
    let (rotated, delay_ms) = {
        let mut s = v3.state();
        let key_use = &mut s.key_use;
        key_use.certificate_requests += 1;
        key_use.certificate_requests_in_flight += 1;
        key_use.certificate_requests_max_in_flight = key_use
            .certificate_requests_max_in_flight
            .max(key_use.certificate_requests_in_flight);
        (s.rotated, s.faults.certificates_delay_ms)
    };
    // Counted out however the request ends (a client that gives up drops this handler).
    struct InFlight<'a>(&'a V3);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            let key_use = &mut self.0.state().key_use;
            key_use.certificate_requests_in_flight =
                key_use.certificate_requests_in_flight.saturating_sub(1);
        }
    }
    let _in_flight = InFlight(v3);
    if delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    }
    let data: Vec<Value> = if v3.mode.lists_certificates() {
        keys::listed_certificates(rotated)
            .into_iter()
            .enumerate()
            .map(|(i, (serial, pem))| {
                let nonce = crypto::resource_nonce();
                json!({
                    "serial_no": serial,
                    "effective_time": "2026-01-01T00:00:00+08:00",
                    "expire_time": if i == 0 { "2031-01-01T00:00:00+08:00" } else { "2036-01-01T00:00:00+08:00" },
                    "encrypt_certificate": {
                        "algorithm": "AEAD_AES_256_GCM",
                        "nonce": String::from_utf8_lossy(&nonce),
                        "associated_data": "certificate",
                        "ciphertext": crypto::seal(&v3.apiv3_key, &nonce, b"certificate", pem.as_bytes()),
                    }
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    signed(v3, StatusCode::OK, json!({ "data": data }).to_string())
}
