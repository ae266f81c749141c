//! Bills: the parser against bills written by an independent tool (`fixtures/bills/make.py`,
//! python3, with the expected rows in integer fen and each bill's sha1sum), round trips, and
//! the v2 / v3 downloads against a local server playing WeChat.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use chrono::NaiveDate;
use serde_json::Value;
use wechat::pay::PayConfig;
use wechat::pay::bills::{
    BillError, BillLink, BillType, DownloadedBill, FundAccount, FundFlowBill, TradeBill, TradeRow,
    TradeSummary, gunzip, sha1_hex, write_all_bill,
};

use crate::helpers::{Reply, serve};
use crate::pay_v3::{PUB_KEY_ID, Wechat, client, public_key_mode, request_signature_verifies};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/wechat/fixtures/bills/");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}{name}")).unwrap()
}

fn expected() -> Value {
    serde_json::from_slice(&fixture("expected.json")).unwrap()
}

/// Compares a parsed row with the tool's expectation, field by field.
fn assert_row(row: &TradeRow, e: &Value, at: &str) {
    let s = |k: &str| e[k].as_str().unwrap().to_owned();
    let n = |k: &str| e[k].as_i64().unwrap();
    let opt = |k: &str| e[k].as_i64();
    let want = TradeRow {
        trade_time: s("trade_time"),
        appid: s("appid"),
        mch_id: s("mch_id"),
        sub_mch_id: s("sub_mch_id"),
        device_info: s("device_info"),
        transaction_id: s("transaction_id"),
        out_trade_no: s("out_trade_no"),
        openid: s("openid"),
        trade_type: s("trade_type"),
        trade_state: s("trade_state"),
        bank_type: s("bank_type"),
        currency: s("currency"),
        settlement_total_fen: n("settlement_total_fen"),
        coupon_fen: n("coupon_fen"),
        refund_id: s("refund_id"),
        out_refund_no: s("out_refund_no"),
        refund_fen: n("refund_fen"),
        recharge_coupon_refund_fen: n("recharge_coupon_refund_fen"),
        refund_type: s("refund_type"),
        refund_status: s("refund_status"),
        body: s("body"),
        attach: s("attach"),
        fee_millifen: n("fee_millifen"),
        rate: s("rate"),
        total_fen: opt("total_fen"),
        refund_request_fen: opt("refund_request_fen"),
        rate_note: s("rate_note"),
        refund_apply_time: s("refund_apply_time"),
        refund_success_time: s("refund_success_time"),
    };
    assert_eq!(row, &want, "{at}");
}

fn check_fixture(name: &str) -> TradeBill {
    let exp = &expected()[name];
    let text = fixture(name);
    // The tool's sha1sum is of the uncompressed bill; so is ours.
    assert_eq!(sha1_hex(&text), exp["sha1"].as_str().unwrap(), "{name}");
    assert_eq!(
        String::from_utf8(fixture(&format!("{name}.sha1")))
            .unwrap()
            .trim(),
        exp["sha1"].as_str().unwrap()
    );
    let bill = TradeBill::parse(&text).unwrap();
    let rows = exp["rows"].as_array().unwrap();
    assert_eq!(bill.rows.len(), rows.len(), "{name}");
    for (i, (row, e)) in bill.rows.iter().zip(rows).enumerate() {
        assert_row(row, e, &format!("{name} row {i}"));
    }
    match exp["summary_count"].as_i64() {
        Some(count) => assert_eq!(bill.summary.as_ref().unwrap().count, count, "{name}"),
        None => assert!(bill.summary.is_none(), "{name}"),
    }
    bill.check_summary().unwrap();
    // The gzip of the same bill reads the same.
    let gz = DownloadedBill::decode(fixture(&format!("{name}.gz"))).unwrap();
    assert!(gz.gzip);
    assert_eq!(gz.text, text);
    assert_eq!(gz.trade_bill().unwrap(), bill);
    bill
}

#[test]
fn v2_all_bill_reads_every_row_in_fen() {
    let bill = check_fixture("v2_all.csv");
    let s = bill.summary.unwrap();
    assert_eq!(s.settlement_total_fen, 100_012_445);
    assert_eq!(s.fee_total_millifen, 600_072_000);
    // A value with a comma and quotes, written double-quoted.
    assert_eq!(bill.rows[1].body, "wxmp, T-shirt \"blue\"");
    assert_eq!(bill.rows[4].out_refund_no, "R00000009");
    assert_eq!(bill.rows[4].requested_refund_fen(), 345);
}

#[test]
fn v2_success_bill_without_summary_and_refund_bill_read() {
    check_fixture("v2_success_nosummary.csv");
    let refunds = check_fixture("v2_refund.csv");
    assert_eq!(refunds.rows[0].refund_success_time, "2026-12-05 20:00:30");
}

#[test]
fn v3_bill_reads_like_v2() {
    check_fixture("v3_all.csv");
}

#[test]
fn an_empty_day_reads_as_no_rows() {
    let bill = check_fixture("empty_day.csv");
    assert_eq!(
        bill.summary.unwrap(),
        TradeSummary {
            order_total_fen: Some(0),
            refund_request_total_fen: Some(0),
            ..TradeSummary::default()
        }
    );
    check_fixture("empty_header_only.csv");
    // No bytes at all is an empty bill too.
    assert_eq!(TradeBill::parse(b"").unwrap(), TradeBill::default());
    assert_eq!(TradeBill::parse(b"\r\n\r\n").unwrap(), TradeBill::default());
}

#[test]
fn the_writer_round_trips_through_the_parser() {
    let bill = TradeBill::parse(&fixture("v2_all.csv")).unwrap();
    let text = write_all_bill(&bill.rows, bill.summary.as_ref());
    // Byte for byte what the independent tool wrote.
    assert_eq!(text.as_bytes(), fixture("v2_all.csv"));
    assert_eq!(TradeBill::parse(text.as_bytes()).unwrap(), bill);
    // A value with spaces at its ends is quoted so that it reads back the same.
    let mut spaced = bill.rows.clone();
    spaced[0].out_trade_no = " W 1 ".into();
    let again = TradeBill::parse(write_all_bill(&spaced, None).as_bytes()).unwrap();
    assert_eq!(again.rows[0].out_trade_no, " W 1 ");
    let no_summary = write_all_bill(&bill.rows, None);
    let again = TradeBill::parse(no_summary.as_bytes()).unwrap();
    assert_eq!(again.rows, bill.rows);
    assert!(again.summary.is_none());
}

#[test]
fn malformed_bills_are_errors_naming_the_line() {
    let good = String::from_utf8(fixture("v2_all.csv")).unwrap();
    // A float-looking amount with too many places, a short row, a count that disagrees.
    let cases = [
        good.replacen("`0.01,`0.00,`0,", "`0.011,`0.00,`0,", 1),
        good.replacen(",`JSAPI,`SUCCESS", ",`SUCCESS", 1),
        good.replacen("\n`6,", "\n`7,", 1),
        good.replacen("`1.00,`0.00,`0,", "`1e2,`0.00,`0,", 1),
    ];
    for (i, bad) in cases.iter().enumerate() {
        assert_ne!(bad, &good, "case {i} changed nothing");
        let parsed = TradeBill::parse(bad.as_bytes()).and_then(|b| b.check_summary());
        assert!(
            matches!(
                parsed,
                Err(BillError::Format { .. } | BillError::Summary(_))
            ),
            "case {i}: {parsed:?}"
        );
    }
    // Data after the summary, and a truncated gzip.
    let trailing = format!("{good}`1,`2\r\n");
    assert!(TradeBill::parse(trailing.as_bytes()).is_err());
    let gz = fixture("v2_all.csv.gz");
    assert!(gunzip(&gz[..gz.len() / 2], 1 << 20).is_err());
    assert_eq!(gunzip(&gz, 100), Err(BillError::TooLarge));
}

#[test]
fn fund_flow_bill_reads() {
    let bill = FundFlowBill::parse(&fixture("fund_flow.csv")[..]).unwrap();
    assert_eq!(bill.rows.len(), 2);
    assert_eq!(bill.rows[1].amount_fen, 345);
    assert_eq!(bill.rows[1].balance_fen, -344);
    assert_eq!(bill.rows[1].direction, "支出");
    let s = bill.summary.unwrap();
    assert_eq!((s.count, s.expense_fen, s.income_fen), (2, 345, 1));
}

fn date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, 5).unwrap()
}

fn pay() -> PayConfig {
    PayConfig::new("wx0000000000000001", "1900000109", "k".repeat(32))
}

#[tokio::test]
async fn v2_downloadbill_sends_a_signed_request_and_reads_gzip_text_and_errors() {
    let gz = fixture("v2_all.csv.gz");
    let text = fixture("v2_all.csv");
    let server = serve(move |req| {
        let sent = wechat::pay::xml::parse(&req.body).unwrap();
        if sent["bill_type"] == "REFUND" {
            Reply::new(
                "text/xml",
                "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[No Bill Exist]]></return_msg><error_code><![CDATA[20002]]></error_code></xml>",
            )
        } else if sent.get("tar_type").map(String::as_str) == Some("GZIP") {
            Reply::new("application/x-gzip", gz.clone())
        } else {
            Reply::new("text/plain", text.clone())
        }
    })
    .await;
    let client = server.client();
    let bill = client
        .download_bill(&pay(), date(), BillType::All, true)
        .await
        .unwrap();
    assert!(bill.gzip);
    assert_eq!(bill.text, fixture("v2_all.csv"));
    let plain = client
        .download_bill(&pay(), date(), BillType::Success, false)
        .await
        .unwrap();
    assert!(!plain.gzip);
    assert_eq!(plain.trade_bill().unwrap().rows.len(), 6);
    assert_eq!(
        client
            .download_bill(&pay(), date(), BillType::Refund, false)
            .await,
        Err(BillError::NoBill)
    );
    let reqs = server.requests();
    assert_eq!(reqs[0].path(), "/pay/downloadbill");
    let sent = wechat::pay::xml::parse(&reqs[0].body).unwrap();
    assert_eq!(sent["bill_date"], "20261205");
    assert_eq!(sent["bill_type"], "ALL");
    assert!(wechat::pay::verify(
        sent.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &pay().key,
        wechat::pay::SignType::Md5,
        &sent["sign"]
    ));
    // The fund flow bill needs the merchant certificate: without one nothing is sent.
    assert_eq!(
        client
            .download_fund_flow(&pay(), date(), FundAccount::Basic, true)
            .await,
        Err(BillError::NoCertificate)
    );
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn v3_bill_is_applied_for_downloaded_and_hash_checked_over_the_decompressed_bill() {
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    let wx = Wechat::new(PUB_KEY_ID, now.clone());
    let gz = fixture("v3_all.csv.gz");
    let good = expected()["v3_all.csv"]["sha1"]
        .as_str()
        .unwrap()
        .to_owned();
    let bad = String::from_utf8(fixture("bad_hash.sha1"))
        .unwrap()
        .trim()
        .to_owned();
    let base: Arc<std::sync::Mutex<String>> = Arc::default();
    let (side, base_in) = (wx.clone(), base.clone());
    let (good_in, bad_in) = (good.clone(), bad.clone());
    let server = serve(move |req| {
        let target = req.target.clone();
        if target.starts_with("/v3/billdownload/file") {
            // Unsigned, as WeChat's download answer is.
            return Reply::new("application/octet-stream", gz.clone());
        }
        if target.contains("bill_date=2026-12-04") {
            return side.signed(
                400,
                r#"{"code":"NO_STATEMENT_EXIST","message":"账单文件不存在"}"#,
            );
        }
        if target.contains("bill_date=2026-12-03") {
            return side.signed(
                400,
                r#"{"code":"STATEMENT_CREATING","message":"账单生成中"}"#,
            );
        }
        let hash = if target.contains("bill_type=SUCCESS") {
            &bad_in
        } else {
            &good_in
        };
        let url = format!("{}/v3/billdownload/file?token=t1", base_in.lock().unwrap());
        side.signed(
            200,
            &format!(r#"{{"hash_type":"SHA1","hash_value":"{hash}","download_url":"{url}"}}"#),
        )
    })
    .await;
    *base.lock().unwrap() = server.base.clone();
    let v3 = client(&server, &now, public_key_mode());

    let link = v3.trade_bill(date(), BillType::All, true).await.unwrap();
    assert_eq!(link.hash_value, good);
    let bill = v3.download(&link).await.unwrap();
    assert!(bill.gzip);
    assert_eq!(bill.text, fixture("v3_all.csv"));
    let reqs = server.requests();
    assert_eq!(
        reqs[0].target,
        "/v3/bill/tradebill?bill_date=2026-12-05&bill_type=ALL&tar_type=GZIP"
    );
    // The download request is signed like any v3 request, over the url's path and query.
    assert_eq!(reqs[1].target, "/v3/billdownload/file?token=t1");
    assert!(request_signature_verifies(&reqs[1]));

    // A bad hash is refused: no bill comes back.
    let link = v3
        .trade_bill(date(), BillType::Success, true)
        .await
        .unwrap();
    let refused = v3.download(&link).await;
    assert!(
        matches!(&refused, Err(BillError::HashMismatch { expected, actual }) if expected == &bad && actual == &good),
        "{refused:?}"
    );
    assert!(refused.unwrap_err().is_retryable());

    // The hash of the gzip bytes is not the hash_value (wechatpay-java#384's mistake).
    assert_ne!(sha1_hex(&fixture("v3_all.csv.gz")), good);

    // No bill, bill not ready.
    let day = |d| NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
    assert_eq!(
        v3.trade_bill(day(4), BillType::All, true).await,
        Err(BillError::NoBill)
    );
    assert_eq!(
        v3.trade_bill(day(3), BillType::All, true).await,
        Err(BillError::NotReady)
    );

    // A download_url elsewhere than WeChat Pay is not followed (our signature stays home).
    let foreign = BillLink {
        hash_type: "SHA1".into(),
        hash_value: good.clone(),
        download_url: "https://evil.example/v3/billdownload/file?token=t1".into(),
    };
    let before = server.requests().len();
    assert!(matches!(
        v3.download(&foreign).await,
        Err(BillError::BadResponse(_))
    ));
    assert_eq!(server.requests().len(), before);
}

mod props {
    use proptest::prelude::*;
    use wechat::pay::bills::{
        DownloadedBill, TradeBill, TradeBillReader, format_decimal, parse_decimal,
    };

    fn reads_alike(data: &[u8]) {
        let whole = TradeBill::parse(data);
        let mut reader = TradeBillReader::new(data);
        let mut rows = Vec::new();
        let streamed = loop {
            match reader.next_row() {
                Ok(Some(r)) => rows.push(r),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        match (whole, streamed) {
            (Ok(b), Ok(())) => assert_eq!(b.rows, rows),
            (Err(_), Err(_)) => {}
            (w, s) => panic!("{w:?} / {s:?}"),
        }
        let _ = DownloadedBill::decode(data.to_vec());
    }

    proptest! {
        // What the fuzz target checks, on the real bill with bytes changed (no panic; the
        // streamed rows are the whole parse's).
        #[test]
        fn a_damaged_bill_is_an_error_or_rows_never_a_panic(
            at in 0usize..2047, byte in any::<u8>(), cut in 0usize..2048
        ) {
            let mut data = super::fixture("v2_all.csv");
            let at = at % data.len();
            data[at] = byte;
            reads_alike(&data);
            data.truncate(cut.min(data.len()));
            reads_alike(&data);
            let gz = super::fixture("v2_all.csv.gz");
            let mut gz2 = gz.clone();
            let i = at % gz2.len();
            gz2[i] ^= byte;
            let _ = DownloadedBill::decode(gz2);
        }

        #[test]
        fn decimals_round_trip_exactly(units in any::<i64>().prop_filter("abs", |u| *u != i64::MIN), scale in 0u32..6) {
            let text = format_decimal(units, scale);
            prop_assert_eq!(parse_decimal(&text, scale), Ok(units));
        }
    }
}
