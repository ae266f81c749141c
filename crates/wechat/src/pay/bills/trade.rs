//! The trade bill (交易账单): v2 `downloadbill` and v3 `tradebill` share its columns.
//!
//! Columns of the ALL bill since 2018 (免充值券结算, <https://pay.weixin.qq.com/doc/v2/merchant/4011985040>
//! and the v3 交易账单 format <https://pay.weixin.qq.com/docs/partner/apis/partner-h5-payment/download-bill.html>):
//! 交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,
//! 付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,
//! 退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注.
//! SUCCESS drops the refund columns; REFUND adds 退款申请时间 and 退款成功时间. The summary:
//! 总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额.
//! Older merchants' bills name some columns differently (总金额, 企业红包金额, 总交易额, …);
//! columns are found by name, so every variant reads, and a missing optional column is zero.
//!
//! Amounts are yuan with two decimals ("0.01") and become integer fen; the fee (手续费) has five
//! decimals ("0.00600") and becomes thousandths of a fen (`fee_millifen`). No float anywhere.

use std::io::BufRead;

use crate::pay::bills::BillError;
use crate::pay::bills::table::{Columns, Line, TableReader, format_decimal, parse_decimal};

/// Decimal places of the fee column (手续费): five, i.e. thousandths of a fen.
pub const FEE_SCALE: u32 = 5;

/// What a trade bill row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKind {
    /// A payment (交易状态 SUCCESS).
    Payment,
    /// A refund (交易状态 REFUND, with a refund number).
    Refund,
    /// A payment revoked (REVOKED; micropay only).
    Revoked,
}

/// One detail row of a trade bill. Text columns absent from the bill's kind are empty, amount
/// columns zero (or `None` where zero would be a claim).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TradeRow {
    /// `yyyy-MM-dd HH:mm:ss`, China time.
    pub trade_time: String,
    pub appid: String,
    pub mch_id: String,
    pub sub_mch_id: String,
    pub device_info: String,
    pub transaction_id: String,
    pub out_trade_no: String,
    pub openid: String,
    pub trade_type: String,
    /// SUCCESS, REFUND or REVOKED.
    pub trade_state: String,
    pub bank_type: String,
    pub currency: String,
    /// 应结订单金额: the order amount less non-recharge coupons.
    pub settlement_total_fen: i64,
    /// 代金券金额.
    pub coupon_fen: i64,
    /// Empty on payment rows (WeChat writes `0` there).
    pub refund_id: String,
    pub out_refund_no: String,
    /// 退款金额 (应结退款金额).
    pub refund_fen: i64,
    /// 充值券退款金额.
    pub recharge_coupon_refund_fen: i64,
    pub refund_type: String,
    /// SUCCESS, PROCESSING, …
    pub refund_status: String,
    pub body: String,
    pub attach: String,
    /// 手续费 in thousandths of a fen (negative on refunds: the fee returned).
    pub fee_millifen: i64,
    /// 费率, e.g. `0.60%`.
    pub rate: String,
    /// 订单金额, when the bill has that column.
    pub total_fen: Option<i64>,
    /// 申请退款金额, when the bill has that column.
    pub refund_request_fen: Option<i64>,
    pub rate_note: String,
    /// REFUND bills only.
    pub refund_apply_time: String,
    pub refund_success_time: String,
}

impl TradeRow {
    /// What the row records, or None for a state this parser does not know.
    pub fn kind(&self) -> Option<RowKind> {
        match self.trade_state.as_str() {
            "REFUND" => Some(RowKind::Refund),
            "SUCCESS" if !self.out_refund_no.is_empty() => Some(RowKind::Refund),
            "SUCCESS" => Some(RowKind::Payment),
            "REVOKED" => Some(RowKind::Revoked),
            _ => None,
        }
    }

    /// What the payer was charged for the order: 订单金额, else 应结订单金额.
    pub fn order_fen(&self) -> i64 {
        self.total_fen.unwrap_or(self.settlement_total_fen)
    }

    /// What the merchant asked to refund: 申请退款金额, else 退款金额.
    pub fn requested_refund_fen(&self) -> i64 {
        self.refund_request_fen.unwrap_or(self.refund_fen)
    }
}

/// The summary row of a trade bill.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TradeSummary {
    /// 总交易单数.
    pub count: i64,
    /// 应结订单总金额 (old bills: 总交易额).
    pub settlement_total_fen: i64,
    /// 退款总金额 (old bills: 总退款金额).
    pub refund_total_fen: i64,
    /// 充值券退款总金额.
    pub recharge_coupon_refund_total_fen: i64,
    /// 手续费总金额, thousandths of a fen.
    pub fee_total_millifen: i64,
    /// 订单总金额.
    pub order_total_fen: Option<i64>,
    /// 申请退款总金额.
    pub refund_request_total_fen: Option<i64>,
}

/// Column indexes of a trade bill, found once from its header.
#[derive(Debug, Clone)]
struct TradeColumns {
    width: usize,
    trade_time: usize,
    transaction_id: usize,
    out_trade_no: usize,
    trade_state: usize,
    settlement_total: usize,
    appid: Option<usize>,
    mch_id: Option<usize>,
    sub_mch_id: Option<usize>,
    device_info: Option<usize>,
    openid: Option<usize>,
    trade_type: Option<usize>,
    bank_type: Option<usize>,
    currency: Option<usize>,
    coupon: Option<usize>,
    refund_id: Option<usize>,
    out_refund_no: Option<usize>,
    refund: Option<usize>,
    recharge_coupon_refund: Option<usize>,
    refund_type: Option<usize>,
    refund_status: Option<usize>,
    body: Option<usize>,
    attach: Option<usize>,
    fee: Option<usize>,
    rate: Option<usize>,
    total: Option<usize>,
    refund_request: Option<usize>,
    rate_note: Option<usize>,
    refund_apply_time: Option<usize>,
    refund_success_time: Option<usize>,
}

impl TradeColumns {
    fn new(header: &[String], line: usize) -> Result<Self, BillError> {
        let c = Columns::new(header);
        let required = |names: &[&str]| {
            c.find(names).ok_or_else(|| BillError::Format {
                line,
                reason: format!("the header has no {} column", names[0]),
            })
        };
        Ok(Self {
            width: c.len(),
            trade_time: required(&["交易时间"])?,
            transaction_id: required(&["微信订单号"])?,
            out_trade_no: required(&["商户订单号"])?,
            trade_state: required(&["交易状态"])?,
            settlement_total: required(&["应结订单金额", "总金额"])?,
            appid: c.find(&["公众账号ID"]),
            mch_id: c.find(&["商户号"]),
            sub_mch_id: c.find(&["特约商户号", "子商户号"]),
            device_info: c.find(&["设备号"]),
            openid: c.find(&["用户标识"]),
            trade_type: c.find(&["交易类型"]),
            bank_type: c.find(&["付款银行"]),
            currency: c.find(&["货币种类"]),
            coupon: c.find(&["代金券金额", "企业红包金额", "代金券或立减优惠金额"]),
            refund_id: c.find(&["微信退款单号"]),
            out_refund_no: c.find(&["商户退款单号"]),
            refund: c.find(&["退款金额"]),
            recharge_coupon_refund: c.find(&[
                "充值券退款金额",
                "企业红包退款金额",
                "代金券或立减优惠退款金额",
            ]),
            refund_type: c.find(&["退款类型"]),
            refund_status: c.find(&["退款状态"]),
            body: c.find(&["商品名称"]),
            attach: c.find(&["商户数据包"]),
            fee: c.find(&["手续费"]),
            rate: c.find(&["费率"]),
            total: c.find(&["订单金额"]),
            refund_request: c.find(&["申请退款金额"]),
            rate_note: c.find(&["费率备注"]),
            refund_apply_time: c.find(&["退款申请时间"]),
            refund_success_time: c.find(&["退款成功时间"]),
        })
    }

    fn row(&self, fields: &[String], line: usize) -> Result<TradeRow, BillError> {
        if fields.len() != self.width {
            return Err(BillError::Format {
                line,
                reason: format!("{} values for {} columns", fields.len(), self.width),
            });
        }
        let text = |i: Option<usize>| i.map(|i| fields[i].clone()).unwrap_or_default();
        // WeChat writes 0 for "no refund" in the refund number columns of payment rows.
        let refund_no = |i: Option<usize>| {
            let v = text(i);
            if v == "0" { String::new() } else { v }
        };
        let amount = |i: usize, scale: u32, name: &str| {
            parse_decimal(&fields[i], scale).map_err(|e| BillError::Format {
                line,
                reason: format!("{name}: {e}"),
            })
        };
        // An optional amount column left empty is zero.
        let optional = |i: Option<usize>, scale: u32, name: &str| match i {
            Some(i) if !fields[i].is_empty() => amount(i, scale, name).map(Some),
            Some(_) => Ok(Some(0)),
            None => Ok(None),
        };
        Ok(TradeRow {
            trade_time: fields[self.trade_time].clone(),
            appid: text(self.appid),
            mch_id: text(self.mch_id),
            sub_mch_id: refund_no(self.sub_mch_id),
            device_info: text(self.device_info),
            transaction_id: fields[self.transaction_id].clone(),
            out_trade_no: fields[self.out_trade_no].clone(),
            openid: text(self.openid),
            trade_type: text(self.trade_type),
            trade_state: fields[self.trade_state].clone(),
            bank_type: text(self.bank_type),
            currency: text(self.currency),
            settlement_total_fen: amount(self.settlement_total, 2, "应结订单金额")?,
            coupon_fen: optional(self.coupon, 2, "代金券金额")?.unwrap_or(0),
            refund_id: refund_no(self.refund_id),
            out_refund_no: refund_no(self.out_refund_no),
            refund_fen: optional(self.refund, 2, "退款金额")?.unwrap_or(0),
            recharge_coupon_refund_fen: optional(self.recharge_coupon_refund, 2, "充值券退款金额")?
                .unwrap_or(0),
            refund_type: text(self.refund_type),
            refund_status: text(self.refund_status),
            body: text(self.body),
            attach: text(self.attach),
            fee_millifen: optional(self.fee, FEE_SCALE, "手续费")?.unwrap_or(0),
            rate: text(self.rate),
            total_fen: optional(self.total, 2, "订单金额")?,
            refund_request_fen: optional(self.refund_request, 2, "申请退款金额")?,
            rate_note: text(self.rate_note),
            refund_apply_time: text(self.refund_apply_time),
            refund_success_time: text(self.refund_success_time),
        })
    }
}

fn summary_of(
    header: &[String],
    values: &[String],
    line: usize,
) -> Result<TradeSummary, BillError> {
    if header.len() != values.len() {
        return Err(BillError::Format {
            line,
            reason: format!(
                "{} summary values for {} columns",
                values.len(),
                header.len()
            ),
        });
    }
    let c = Columns::new(header);
    let get = |names: &[&str], scale: u32| -> Result<Option<i64>, BillError> {
        match c.find(names) {
            None => Ok(None),
            Some(i) => parse_decimal(&values[i], scale)
                .map(Some)
                .map_err(|e| BillError::Format {
                    line,
                    reason: format!("{}: {e}", names[0]),
                }),
        }
    };
    Ok(TradeSummary {
        count: get(&["总交易单数"], 0)?.ok_or_else(|| BillError::Format {
            line,
            reason: "the summary has no 总交易单数".into(),
        })?,
        settlement_total_fen: get(&["应结订单总金额", "总交易额"], 2)?.unwrap_or(0),
        refund_total_fen: get(&["退款总金额", "总退款金额"], 2)?.unwrap_or(0),
        recharge_coupon_refund_total_fen: get(
            &[
                "充值券退款总金额",
                "总企业红包退款金额",
                "总代金券或立减优惠退款金额",
            ],
            2,
        )?
        .unwrap_or(0),
        fee_total_millifen: get(&["手续费总金额"], FEE_SCALE)?.unwrap_or(0),
        order_total_fen: get(&["订单总金额"], 2)?,
        refund_request_total_fen: get(&["申请退款总金额"], 2)?,
    })
}

/// Reads a trade bill row by row (memory: one line).
///
/// ```
/// use wechat::pay::bills::TradeBillReader;
///
/// let bill = "交易时间,微信订单号,商户订单号,交易状态,应结订单金额,手续费\n\
///             `2026-12-05 10:00:00,`4200000001,`W1,`SUCCESS,`0.01,`0.00006\n\
///             总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额\n\
///             `1,`0.01,`0.00,`0.00,`0.00006\n";
/// let mut reader = TradeBillReader::new(bill.as_bytes());
/// let row = reader.next_row().unwrap().unwrap();
/// assert_eq!((row.out_trade_no.as_str(), row.settlement_total_fen, row.fee_millifen), ("W1", 1, 6));
/// assert!(reader.next_row().unwrap().is_none());
/// assert_eq!(reader.summary().unwrap().count, 1);
/// ```
#[derive(Debug)]
pub struct TradeBillReader<R> {
    table: TableReader<R>,
    columns: Option<TradeColumns>,
    summary_header: Option<Vec<String>>,
    summary: Option<TradeSummary>,
}

impl<R: BufRead> TradeBillReader<R> {
    pub fn new(reader: R) -> Self {
        Self {
            table: TableReader::new(reader),
            columns: None,
            summary_header: None,
            summary: None,
        }
    }

    /// The next detail row, or None after the last one (the summary is then read).
    pub fn next_row(&mut self) -> Result<Option<TradeRow>, BillError> {
        loop {
            let line = self.table.next_line()?;
            let at = self.table.line_no();
            match line {
                None => return Ok(None),
                Some(Line::Header(h)) => self.columns = Some(TradeColumns::new(&h, at)?),
                Some(Line::Row(fields)) => {
                    let columns = self.columns.as_ref().ok_or(BillError::Format {
                        line: at,
                        reason: "a row before the header".into(),
                    })?;
                    return columns.row(&fields, at).map(Some);
                }
                Some(Line::SummaryHeader(h)) => self.summary_header = Some(h),
                Some(Line::Summary(values)) => {
                    let header = self.summary_header.take().unwrap_or_default();
                    self.summary = Some(summary_of(&header, &values, at)?);
                }
            }
        }
    }

    /// The summary, once [`Self::next_row`] returned None (None: the bill had none).
    pub fn summary(&self) -> Option<&TradeSummary> {
        self.summary.as_ref()
    }
}

/// A whole trade bill in memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TradeBill {
    pub rows: Vec<TradeRow>,
    pub summary: Option<TradeSummary>,
}

impl TradeBill {
    /// Parses a decompressed bill.
    pub fn parse(text: &[u8]) -> Result<Self, BillError> {
        let mut reader = TradeBillReader::new(text);
        let mut rows = Vec::new();
        while let Some(row) = reader.next_row()? {
            rows.push(row);
        }
        Ok(Self {
            rows,
            summary: reader.summary.take(),
        })
    }

    /// Checks the summary's 总交易单数 against the rows (a bill cut short fails). The money
    /// totals are reported, not enforced: which rows WeChat sums into each is not documented
    /// precisely enough to refuse a bill over it. A bill without a summary passes.
    pub fn check_summary(&self) -> Result<(), BillError> {
        let Some(s) = &self.summary else {
            return Ok(());
        };
        let count = i64::try_from(self.rows.len()).unwrap_or(i64::MAX);
        if s.count != count {
            return Err(BillError::Summary(format!(
                "总交易单数: the summary says {}, the bill has {count} rows",
                s.count
            )));
        }
        Ok(())
    }
}

/// The ALL columns since 2018 (see the module documentation), in order.
pub const ALL_COLUMNS: [&str; 27] = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
];

/// The summary columns of the ALL bill since 2018.
pub const SUMMARY_COLUMNS: [&str; 7] = [
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
];

impl TradeRow {
    /// The row's values in [`ALL_COLUMNS`] order, as WeChat writes them (for tests and tools).
    pub fn to_all_values(&self) -> Vec<String> {
        let no = |s: &str| {
            if s.is_empty() {
                "0".to_owned()
            } else {
                s.to_owned()
            }
        };
        vec![
            self.trade_time.clone(),
            self.appid.clone(),
            self.mch_id.clone(),
            no(&self.sub_mch_id),
            self.device_info.clone(),
            self.transaction_id.clone(),
            self.out_trade_no.clone(),
            self.openid.clone(),
            self.trade_type.clone(),
            self.trade_state.clone(),
            self.bank_type.clone(),
            self.currency.clone(),
            format_decimal(self.settlement_total_fen, 2),
            format_decimal(self.coupon_fen, 2),
            no(&self.refund_id),
            no(&self.out_refund_no),
            format_decimal(self.refund_fen, 2),
            format_decimal(self.recharge_coupon_refund_fen, 2),
            self.refund_type.clone(),
            self.refund_status.clone(),
            self.body.clone(),
            self.attach.clone(),
            format_decimal(self.fee_millifen, FEE_SCALE),
            self.rate.clone(),
            format_decimal(self.total_fen.unwrap_or(0), 2),
            format_decimal(self.refund_request_fen.unwrap_or(0), 2),
            self.rate_note.clone(),
        ]
    }
}

/// Writes an ALL bill the way WeChat does (for tests, benches and fuzz seeds; WeChat writes
/// the real ones). Values holding a comma or a quote, or with spaces at an end, are
/// double-quoted.
pub fn write_all_bill(rows: &[TradeRow], summary: Option<&TradeSummary>) -> String {
    fn value(v: &str) -> String {
        // Quoted when a bare value would not read back the same (the reader trims bare values).
        if v.contains([',', '"', '\n', '\r']) || v.trim() != v {
            format!("`\"{}\"", v.replace('"', "\"\""))
        } else {
            format!("`{v}")
        }
    }
    let mut out = ALL_COLUMNS.join(",");
    out.push_str("\r\n");
    for row in rows {
        let line: Vec<String> = row.to_all_values().iter().map(|v| value(v)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    if let Some(s) = summary {
        out.push_str(&SUMMARY_COLUMNS.join(","));
        out.push_str("\r\n");
        let values = [
            s.count.to_string(),
            format_decimal(s.settlement_total_fen, 2),
            format_decimal(s.refund_total_fen, 2),
            format_decimal(s.recharge_coupon_refund_total_fen, 2),
            format_decimal(s.fee_total_millifen, FEE_SCALE),
            format_decimal(s.order_total_fen.unwrap_or(0), 2),
            format_decimal(s.refund_request_total_fen.unwrap_or(0), 2),
        ];
        let line: Vec<String> = values.iter().map(|v| value(v)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}
