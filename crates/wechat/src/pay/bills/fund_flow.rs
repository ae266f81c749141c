//! The fund flow bill (资金账单): v2 `downloadfundflow`
//! (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_18&index=7>) and v3
//! `fundflowbill` (<https://pay.weixin.qq.com/doc/v3/merchant/4012556656>).
//!
//! Columns: 记账时间,微信支付业务单号,资金流水单号,业务名称,业务类型,收支类型,收支金额（元）,
//! 账户结余（元）,资金变更提交申请人,备注,业务凭证号; summary: 资金流水总笔数,收入笔数,收入金额,
//! 支出笔数,支出金额. Same backquoted shape as the trade bill (see [`super::table`]).

use std::io::BufRead;

use crate::pay::bills::BillError;
use crate::pay::bills::table::{Columns, Line, TableReader, parse_decimal};

/// One fund flow row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FundFlowRow {
    /// 记账时间, `yyyy-MM-dd HH:mm:ss` China time.
    pub time: String,
    /// 微信支付业务单号 (a transaction id or refund id).
    pub business_no: String,
    /// 资金流水单号.
    pub flow_no: String,
    /// 业务名称.
    pub business_name: String,
    /// 业务类型 (交易, 退款, 提现, 扣除手续费, …).
    pub business_type: String,
    /// 收支类型: 收入 or 支出.
    pub direction: String,
    /// 收支金额 in fen (as written: positive for both directions).
    pub amount_fen: i64,
    /// 账户结余 in fen.
    pub balance_fen: i64,
    pub applicant: String,
    pub note: String,
    /// 业务凭证号.
    pub voucher_no: String,
}

/// The summary row of a fund flow bill.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FundFlowSummary {
    pub count: i64,
    pub income_count: i64,
    pub income_fen: i64,
    pub expense_count: i64,
    pub expense_fen: i64,
}

/// A whole fund flow bill.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FundFlowBill {
    pub rows: Vec<FundFlowRow>,
    pub summary: Option<FundFlowSummary>,
}

impl FundFlowBill {
    /// Parses a decompressed fund flow bill.
    pub fn parse(text: impl BufRead) -> Result<Self, BillError> {
        let mut table = TableReader::new(text);
        let mut columns: Option<Vec<Option<usize>>> = None;
        let mut width = 0;
        let mut summary_header = Vec::new();
        let mut bill = FundFlowBill::default();
        const NAMES: [&[&str]; 11] = [
            &["记账时间"],
            &["微信支付业务单号"],
            &["资金流水单号"],
            &["业务名称"],
            &["业务类型"],
            &["收支类型"],
            &["收支金额（元）", "收支金额(元)", "收支金额"],
            &["账户结余（元）", "账户结余(元)", "账户结余"],
            &["资金变更提交申请人"],
            &["备注"],
            &["业务凭证号"],
        ];
        while let Some(line) = table.next_line()? {
            let at = table.line_no();
            let format = |reason: String| BillError::Format { line: at, reason };
            match line {
                Line::Header(h) => {
                    let c = Columns::new(&h);
                    width = c.len();
                    let found: Vec<Option<usize>> = NAMES.iter().map(|n| c.find(n)).collect();
                    for (i, required) in [0, 1, 5, 6].into_iter().enumerate() {
                        if found[required].is_none() {
                            return Err(format(format!(
                                "the header has no {} column ({i})",
                                NAMES[required][0]
                            )));
                        }
                    }
                    columns = Some(found);
                }
                Line::Row(v) => {
                    let cols = columns
                        .as_ref()
                        .ok_or_else(|| format("a row before the header".into()))?;
                    if v.len() != width {
                        return Err(format(format!("{} values for {width} columns", v.len())));
                    }
                    let text = |i: usize| cols[i].map(|i| v[i].clone()).unwrap_or_default();
                    let fen = |k: usize| -> Result<i64, BillError> {
                        match cols[k] {
                            Some(i) if !v[i].is_empty() => parse_decimal(&v[i], 2)
                                .map_err(|e| format(format!("{}: {e}", NAMES[k][0]))),
                            _ => Ok(0),
                        }
                    };
                    bill.rows.push(FundFlowRow {
                        time: text(0),
                        business_no: text(1),
                        flow_no: text(2),
                        business_name: text(3),
                        business_type: text(4),
                        direction: text(5),
                        amount_fen: fen(6)?,
                        balance_fen: fen(7)?,
                        applicant: text(8),
                        note: text(9),
                        voucher_no: text(10),
                    });
                }
                Line::SummaryHeader(h) => summary_header = h,
                Line::Summary(v) => {
                    if v.len() != summary_header.len() {
                        return Err(format("summary width differs from its header".into()));
                    }
                    let c = Columns::new(&summary_header);
                    let get = |name: &str, scale: u32| -> Result<i64, BillError> {
                        match c.find(&[name]) {
                            Some(i) => parse_decimal(&v[i], scale)
                                .map_err(|e| format(format!("{name}: {e}"))),
                            None => Ok(0),
                        }
                    };
                    bill.summary = Some(FundFlowSummary {
                        count: get("资金流水总笔数", 0)?,
                        income_count: get("收入笔数", 0)?,
                        income_fen: get("收入金额", 2)?,
                        expense_count: get("支出笔数", 0)?,
                        expense_fen: get("支出金额", 2)?,
                    });
                }
            }
        }
        Ok(bill)
    }
}
