//! Catch-up after an outage: WeChat charged more orders than one reconciler page holds while
//! their notifies were lost; one reconcile pass repairs every one of them (page after page,
//! `PAY_RECONCILE_CONCURRENCY` WeChat queries at a time).

use futures::StreamExt;
use wxmp_proto::pay::v1::{
    self as pb, OrderState as PbState, prepare_jsapi_payment_request::Target,
};

use crate::helpers::*;

fn state(o: &pb::Order) -> PbState {
    PbState::try_from(o.state).unwrap()
}

/// More than two pages of the reconciler's scan (100 orders a page).
const BACKLOG: usize = 230;

async fn a_backlog_larger_than_a_page_is_repaired_in_one_pass(backend: Backend) {
    let env = Env::with_on(backend, Api::V2, |c| c.reconcile_concurrency = 4).await;
    let env = &env;
    // One buyer per order: a buyer's open order of a product would be reused.
    let orders: Vec<String> = futures::stream::iter(0..BACKLOG)
        .map(|n| async move {
            let buyer = principal(i64::try_from(n).unwrap() + 1);
            let prepared = env
                .prepare(&buyer, Target::ProductId("vip".into()))
                .await
                .unwrap();
            let paid = env
                .sandbox_pay(&prepared, Some(serde_json::json!({"drop_notify": true})))
                .await;
            assert_eq!(paid["notify_state"], "dropped");
            prepared.order.unwrap().order_no
        })
        .buffer_unordered(8)
        .collect()
        .await;

    let report = env.pay.reconcile_once().await.unwrap();
    assert_eq!(report.paid, BACKLOG, "{report:?}");
    assert_eq!(report.queried, BACKLOG, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.pages >= 3, "drained in pages: {report:?}");
    for no in &orders {
        assert_eq!(state(&env.get(no, 0).await.unwrap()), PbState::Paid, "{no}");
    }
    // Nothing left: the next pass asks WeChat about nothing.
    let again = env.pay.reconcile_once().await.unwrap();
    assert_eq!((again.queried, again.paid), (0, 0), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_backlog_larger_than_a_page_is_repaired_in_one_pass() {
    a_backlog_larger_than_a_page_is_repaired_in_one_pass(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_backlog_larger_than_a_page_is_repaired_in_one_pass() {
    a_backlog_larger_than_a_page_is_repaired_in_one_pass(Backend::Sqlite).await;
}
