//! WeChat Pay's daily bill: `wechat::pay::bills` on arbitrary bytes must never panic.
//!
//! The input is read as:
//! 1. a trade bill (`TradeBill::parse`, and the streaming `TradeBillReader` row by row, which
//!    must agree with it); a parsed bill written back with `write_all_bill` parses to the same
//!    rows and summary (when every row has the ALL columns' values: the writer's domain);
//! 2. a fund flow bill (`FundFlowBill::parse`);
//! 3. a downloaded body (`DownloadedBill::decode`: gzip by its magic bytes, bounded) and, as a v3
//!    answer, checked against its own SHA1 (accepted) and another (refused);
//! 4. decimal amounts (`parse_decimal` at scales 0, 2, 5), which round-trip through
//!    `format_decimal`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat::pay::bills::{
    BillError, BillLink, DownloadedBill, FundFlowBill, TradeBill, TradeBillReader, format_decimal,
    parse_decimal, sha1_hex, write_all_bill,
};

fuzz_target!(|data: &[u8]| {
    // 1. Trade bill, whole and streamed.
    let whole = TradeBill::parse(data);
    let mut reader = TradeBillReader::new(data);
    let mut rows = Vec::new();
    let streamed = loop {
        match reader.next_row() {
            Ok(Some(row)) => rows.push(row),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    match (&whole, &streamed) {
        (Ok(bill), Ok(())) => {
            assert_eq!(bill.rows, rows);
            assert_eq!(bill.summary.as_ref(), reader.summary());
            let _ = bill.check_summary();
            // Only amounts the ALL writer can express (every amount column present) round-trip.
            let writable = bill
                .rows
                .iter()
                .all(|r| r.total_fen.is_some() && r.refund_request_fen.is_some());
            if writable {
                let text = write_all_bill(&bill.rows, bill.summary.as_ref());
                let again = TradeBill::parse(text.as_bytes()).expect("our own bill parses");
                assert_eq!(again.rows.len(), bill.rows.len());
                for (a, b) in again.rows.iter().zip(&bill.rows) {
                    assert_eq!(a.out_trade_no, b.out_trade_no);
                    assert_eq!(a.settlement_total_fen, b.settlement_total_fen);
                    assert_eq!(a.refund_fen, b.refund_fen);
                    assert_eq!(a.fee_millifen, b.fee_millifen);
                }
            }
        }
        (Err(_), Err(_)) => {}
        (w, s) => panic!("whole {w:?} and streamed {s:?} disagree"),
    }

    // 2. Fund flow bill.
    let _ = FundFlowBill::parse(data);

    // 3. A downloaded body and the v3 hash check.
    if let Ok(bill) = DownloadedBill::decode(data.to_vec()) {
        let own = BillLink {
            hash_type: "SHA1".into(),
            hash_value: sha1_hex(&bill.text).to_uppercase(),
            download_url: String::new(),
        };
        assert!(own.verify(&bill).is_ok());
        let other = BillLink {
            hash_value: sha1_hex(b"another bill"),
            ..own
        };
        if bill.text != b"another bill" {
            assert!(matches!(
                other.verify(&bill),
                Err(BillError::HashMismatch { .. })
            ));
        }
        let _ = bill.trade_bill();
    }

    // 4. Amounts.
    if let Ok(text) = std::str::from_utf8(data) {
        for scale in [0, 2, 5] {
            if let Ok(units) = parse_decimal(text, scale) {
                assert_eq!(parse_decimal(&format_decimal(units, scale), scale), Ok(units));
            }
        }
    }
});
