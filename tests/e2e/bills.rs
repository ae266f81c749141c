//! Bills on a whole stack (issue 27): a day of the embedded stack (`wxmp up`'s wiring), with a
//! payment and a partial refund, reconciled through the operator client `wxmp bills` uses, is a
//! clean match; and the CSV for finance has only its header.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use wxmp_tests::{Backend, TestStack, request_payment};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stack_day_reconciles_cleanly() {
    let t = TestStack::start(Backend::Sqlite).await;
    let (token, _) = t.login(None).await;
    let (status, answer) = t
        .post(
            &t.gateway("/pay/"),
            json!({ "token": token, "product_id": "coffee" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let params = &answer["data"];
    let order_no = params["order_no"].as_str().unwrap().to_owned();
    t.sandbox_pay(&request_payment(params).unwrap(), "success", None)
        .await;
    t.wait_for_order_state(&token, &order_no, "PAID", Duration::from_secs(20))
        .await;

    let mut pay = wxmp::operator::Pay::connect(&wxmp::operator::PayTarget {
        url: t.stack.pay_url.clone(),
        internal_token: None,
    })
    .await
    .unwrap();
    pay.refund(&order_no, 300, "e2e bills", "e2e-bills-r1")
        .await
        .unwrap();

    // Today in China time: the sandbox dates its bill rows by China-time day.
    let today = china_today();
    let report = pay.reconcile_bills(&today).await.unwrap();
    let lines = wxmp::operator::describe_bills(&report);
    assert!(!report.days.is_empty(), "{lines:?}");
    for day in &report.days {
        assert_eq!(day.state, "DONE", "{lines:?}");
        assert_eq!((day.lines, day.matched), (2, 2), "{lines:?}");
        assert_eq!(day.wechat_paid_fen, 1800, "{lines:?}");
        assert_eq!(day.wechat_refunded_fen, 300, "{lines:?}");
    }
    assert!(report.mismatches.is_empty(), "{lines:?}");
    assert!(
        lines.last().unwrap().ends_with("no differences"),
        "{lines:?}"
    );
    assert_eq!(wxmp::operator::bills_csv(&report).lines().count(), 1);
}

/// Today's China-time date, `yyyy-MM-dd` (civil from days, H. Hinnant's algorithm).
fn china_today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 8 * 3600;
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
