//! `wxmp`: run the whole stack in one process, play the demo, or run migrations.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use service_kit::telemetry::{self, TelemetryConfig};
use wxmp::{
    demo::{self, DemoTarget},
    operator::{self, Pay, PayTarget},
    stack::{
        DEMO_PAID_TEMPLATE_DATA, DEMO_PAID_TEMPLATE_ID, DEMO_PRODUCTS, DEMO_XPAY_PRODUCT, Stack,
        StackOptions, WechatTarget,
    },
};
use wxmp_proto::pay::v1 as pb;

#[derive(Parser, Debug)]
#[command(name = "wxmp", version, about = "The backend of a WeChat Mini Program")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    telemetry: TelemetryConfig,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every service and the WeChat sandbox in one process. Embedded default: SQLite files in
    /// --data-dir and in-memory sessions; DATABASE_URL (or USER_/PAY_DATABASE_URL) and
    /// REDIS_URL (or AUTH_REDIS_URL) switch to PostgreSQL and Redis.
    Up(UpArgs),
    /// Play a mini program against a running gateway and sandbox.
    Demo {
        #[arg(
            long,
            env = "WXMP_DEMO_GATEWAY",
            default_value = "http://127.0.0.1:8080"
        )]
        gateway: String,
        #[arg(
            long,
            env = "WXMP_DEMO_SANDBOX",
            default_value = "http://127.0.0.1:9000"
        )]
        sandbox: String,
        /// Product to buy (default: the first of the catalog).
        #[arg(long)]
        product: Option<String>,
        /// The subscribe message template the user accepts before paying.
        #[arg(long, env = "PAY_PAID_TEMPLATE_ID", default_value = DEMO_PAID_TEMPLATE_ID)]
        paid_template: String,
        /// pay-service's gRPC address: the demo ends by receiving its order's PAID event from
        /// the event stream there and refunding part of it ("" skips both).
        #[arg(long, env = "WXMP_PAY_URL", default_value = DEFAULT_PAY_URL)]
        pay_url: String,
        #[arg(long, env = "WXMP_INTERNAL_TOKEN", hide_env_values = true)]
        internal_token: Option<String>,
        /// The virtual-payment product bought through wx.requestVirtualPayment first ("" skips
        /// it; skipped too when the catalog does not have it).
        #[arg(long, env = "WXMP_DEMO_VIRTUAL_PRODUCT", default_value = DEMO_XPAY_PRODUCT)]
        virtual_product: String,
    },
    /// Refund (part of) a paid order through a running pay-service; `wxmp refund
    /// apply-abnormal` re-routes an abnormal refund.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Refund {
        #[command(subcommand)]
        action: Option<RefundAction>,
        #[arg(required = true)]
        order_no: Option<String>,
        /// Fen to give back.
        #[arg(long, required = true)]
        amount_fen: Option<i64>,
        /// Shown to the payer (at most 80 bytes).
        #[arg(long, default_value = "")]
        reason: String,
        /// Idempotency key: repeat the command with the same key to retry safely.
        #[arg(long, default_value = "")]
        out_refund_no: String,
        #[command(flatten)]
        pay: PayArgs,
    },
    /// Show an order and its refunds from a running pay-service.
    Order {
        order_no: String,
        #[command(flatten)]
        pay: PayArgs,
    },
    /// Download WeChat's bills of a China-time day (yyyy-MM-dd) now and reconcile them against
    /// orders and refunds through a running pay-service: prints the totals and every
    /// difference (--csv: the differences as CSV for finance).
    Bills {
        bill_date: String,
        /// Print the differences as CSV.
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        pay: PayArgs,
    },
    /// Mark one difference of a day's bill report resolved (pay.ResolveBillMismatch), with
    /// what was found: it stays in the report with the note, and a re-run never reopens it.
    BillsResolve {
        /// China-time day, yyyy-MM-dd.
        bill_date: String,
        /// The difference's kind, e.g. PAYMENT_AMOUNT.
        kind: String,
        /// The difference's key, as `wxmp bills` prints it.
        key: String,
        /// What was found or done (1 to 500 characters).
        #[arg(long)]
        note: String,
        #[command(flatten)]
        pay: PayArgs,
    },
    /// Ship a paid order through a running pay-service (pay.Ship): its shipping information is
    /// uploaded to WeChat in the background; a second ship of the order is WeChat's one
    /// modification.
    Ship {
        order_no: String,
        /// 1 express, 2 same-city, 3 virtual, 4 self pickup.
        #[arg(long, default_value_t = 1)]
        logistics_type: i32,
        /// 1 unified (one parcel), 2 split (up to 15 parcels, express only).
        #[arg(long, default_value_t = 1)]
        delivery_mode: i32,
        /// A parcel: `item_desc[,tracking_no,express_company[,receiver_contact]]`; repeat for
        /// split delivery.
        #[arg(long = "parcel", required = true)]
        parcels: Vec<String>,
        /// Split delivery: this upload completes the order.
        #[arg(long)]
        all_delivered: bool,
        #[command(flatten)]
        pay: PayArgs,
    },
    /// Follow pay-service's order events, or list dead-lettered webhooks (--failed).
    Events(wxmp::events::EventsArgs),
    /// Run user-service's and pay-service's migrations, then exit.
    Migrate,
}

#[derive(Subcommand, Debug)]
enum RefundAction {
    /// Re-route the money of a REFUND_ABNORMAL refund (WeChat Pay v3 发起异常退款) to the
    /// payer's debit card or to the merchant's bank account. v2 refunds: the merchant
    /// platform (the error says where).
    ApplyAbnormal {
        out_refund_no: String,
        /// user-bank-card (with --bank-type, --bank-account, --real-name) or
        /// merchant-bank-card.
        #[arg(long, value_enum)]
        to: AbnormalTo,
        /// WeChat's bank type of the payer's debit card, e.g. ICBC_DEBIT.
        #[arg(long, default_value = "")]
        bank_type: String,
        /// The payer's card number (better from the environment than the command line).
        #[arg(
            long,
            env = "WXMP_REFUND_BANK_ACCOUNT",
            hide_env_values = true,
            default_value = ""
        )]
        bank_account: String,
        /// The card holder's name.
        #[arg(
            long,
            env = "WXMP_REFUND_REAL_NAME",
            hide_env_values = true,
            default_value = ""
        )]
        real_name: String,
        #[command(flatten)]
        pay: PayArgs,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum AbnormalTo {
    UserBankCard,
    MerchantBankCard,
}

/// pay-service's default gRPC address (`wxmp up`).
const DEFAULT_PAY_URL: &str = wxmp::events::DEFAULT_PAY_URL;

#[derive(clap::Args, Debug)]
struct PayArgs {
    /// pay-service's gRPC address.
    #[arg(long, env = "WXMP_PAY_URL", default_value = DEFAULT_PAY_URL)]
    pay_url: String,
    /// The internal token pay-service wants, if any.
    #[arg(long, env = "WXMP_INTERNAL_TOKEN", hide_env_values = true)]
    internal_token: Option<String>,
}

impl PayArgs {
    fn target(self) -> PayTarget {
        PayTarget {
            url: self.pay_url,
            internal_token: self.internal_token.filter(|t| !t.is_empty()),
        }
    }
}

async fn refund(
    order_no: String,
    amount_fen: i64,
    reason: String,
    out_refund_no: String,
    pay: PayArgs,
) -> Result<(), String> {
    let mut client = Pay::connect(&pay.target())
        .await
        .map_err(|e| e.to_string())?;
    let answer = client
        .refund(&order_no, amount_fen, &reason, &out_refund_no)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(refund) = &answer.refund {
        println!("{}", operator::describe_refund(refund));
    }
    if let Some(order) = &answer.order {
        println!("{}", operator::describe_order(order));
    }
    Ok(())
}

async fn apply_abnormal(action: RefundAction) -> Result<(), String> {
    let RefundAction::ApplyAbnormal {
        out_refund_no,
        to,
        bank_type,
        bank_account,
        real_name,
        pay,
    } = action;
    let target = match to {
        AbnormalTo::UserBankCard => operator::AbnormalCard::User {
            bank_type,
            bank_account,
            real_name,
        },
        AbnormalTo::MerchantBankCard => operator::AbnormalCard::Merchant,
    };
    let mut client = Pay::connect(&pay.target())
        .await
        .map_err(|e| e.to_string())?;
    let refund = client
        .apply_abnormal_refund(&out_refund_no, target)
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", operator::describe_refund(&refund));
    Ok(())
}

async fn bills(bill_date: String, csv: bool, pay: PayArgs) -> Result<(), String> {
    let mut client = Pay::connect(&pay.target())
        .await
        .map_err(|e| e.to_string())?;
    let report = client
        .reconcile_bills(&bill_date)
        .await
        .map_err(|e| e.to_string())?;
    if csv {
        print!("{}", operator::bills_csv(&report));
    } else {
        for line in operator::describe_bills(&report) {
            println!("{line}");
        }
    }
    Ok(())
}

async fn bills_resolve(
    resolve: pb::ResolveBillMismatchRequest,
    pay: PayArgs,
) -> Result<(), String> {
    let mut client = Pay::connect(&pay.target())
        .await
        .map_err(|e| e.to_string())?;
    let mismatch = client
        .resolve_bill_mismatch(resolve)
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", operator::describe_mismatch(&mismatch).trim_start());
    Ok(())
}

async fn order(order_no: String, pay: PayArgs) -> Result<(), String> {
    let mut client = Pay::connect(&pay.target())
        .await
        .map_err(|e| e.to_string())?;
    let (order, refunds) = client.order(&order_no).await.map_err(|e| e.to_string())?;
    println!("{}", operator::describe_order(&order));
    let shipping = operator::describe_shipping(&order);
    if !shipping.is_empty() {
        println!("  {shipping}");
    }
    for refund in &refunds {
        println!("  {}", operator::describe_refund(refund));
    }
    Ok(())
}

async fn ship(
    order_no: String,
    logistics_type: i32,
    delivery_mode: i32,
    parcels: Vec<String>,
    all_delivered: bool,
    pay: PayArgs,
) -> Result<(), String> {
    let shipping_list = parcels
        .iter()
        .map(|p| operator::parse_parcel(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut client = Pay::connect(&pay.target())
        .await
        .map_err(|e| e.to_string())?;
    let order = client
        .ship(pb::ShipRequest {
            order_no,
            logistics_type,
            delivery_mode,
            shipping_list,
            is_all_delivered: all_delivered,
        })
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", operator::describe_order(&order));
    println!("  {}", operator::describe_shipping(&order));
    Ok(())
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// Where the embedded SQLite files live.
    #[arg(long, env = "WXMP_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Address every service listens on.
    #[arg(long, env = "WXMP_HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[arg(long, default_value_t = 8080)]
    gateway_port: u16,
    #[arg(long, default_value_t = 50051)]
    auth_port: u16,
    #[arg(long, default_value_t = 50052)]
    user_port: u16,
    #[arg(long, default_value_t = 50053)]
    pay_port: u16,
    #[arg(long, default_value_t = 9000)]
    sandbox_port: u16,
    /// Product catalog (PAY_PRODUCTS format).
    #[arg(long, env = "PAY_PRODUCTS", default_value = DEMO_PRODUCTS)]
    products: String,
    /// The "order paid" subscribe message; with the in-process sandbox and none given, the
    /// demo's.
    #[arg(long, env = "PAY_PAID_TEMPLATE_ID")]
    paid_template_id: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn database_url(specific: &str, data_dir: &std::path::Path, file: &str) -> String {
    env(specific)
        .or_else(|| env("DATABASE_URL"))
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join(file).display()))
}

async fn up(args: UpArgs) -> Result<(), String> {
    let user_database_url = database_url("USER_DATABASE_URL", &args.data_dir, "users.db");
    let pay_database_url = database_url("PAY_DATABASE_URL", &args.data_dir, "pay.db");
    let redis_url = env("AUTH_REDIS_URL").or_else(|| env("REDIS_URL"));
    let wechat = match env("WXMP_WECHAT_API_BASE") {
        Some(api_base) => WechatTarget::External {
            pay_base: env("WXMP_WECHAT_PAY_BASE").unwrap_or_else(|| api_base.clone()),
            api_base,
        },
        None => {
            // The sandbox's own env-driven config (dev app and merchant unless overridden).
            let config =
                sandbox::Config::try_parse_from(["wxmp-sandbox"]).map_err(|e| e.to_string())?;
            WechatTarget::Sandbox(Box::new(config))
        }
    };
    let sandbox_in_process = matches!(wechat, WechatTarget::Sandbox(_));
    let storage = format!(
        "{} + {}",
        if user_database_url.starts_with("sqlite:") {
            "SQLite"
        } else {
            "PostgreSQL"
        },
        if redis_url.is_some() {
            "Redis sessions"
        } else {
            "in-memory sessions"
        },
    );
    let options = StackOptions {
        host: args.host,
        gateway_port: args.gateway_port,
        auth_port: args.auth_port,
        user_port: args.user_port,
        pay_port: args.pay_port,
        sandbox_port: args.sandbox_port,
        user_database_url,
        pay_database_url,
        redis_url,
        redis_prefix: None,
        wechat,
        products: args.products,
        auth_args: Vec::new(),
        user_args: Vec::new(),
        // PAY_PAID_TEMPLATE_DATA etc. are read from the environment by pay-service itself.
        pay_args: match (args.paid_template_id, sandbox_in_process) {
            (Some(id), _) => vec!["--paid-template-id".to_owned(), id],
            (None, true) => [
                "--paid-template-id",
                DEMO_PAID_TEMPLATE_ID,
                "--paid-template-data",
                DEMO_PAID_TEMPLATE_DATA,
            ]
            .map(String::from)
            .to_vec(),
            (None, false) => Vec::new(),
        },
        gateway_args: Vec::new(),
        wait_ready: true,
    };
    let mut options = options;
    // The sandbox sells a virtual product too, unless the catalog or PAY_XPAY_PRODUCTS is
    // the operator's own.
    let sells_virtual = sandbox_in_process
        && options.products == DEMO_PRODUCTS
        && env("PAY_XPAY_PRODUCTS").is_none();
    if sells_virtual {
        options.sell_demo_virtual_product();
    }
    let stack = Stack::start(options).await.map_err(|e| e.to_string())?;
    let signals = service_kit::Shutdown::on_signals();
    let stop = stack.shutdown_handle();
    tokio::spawn(async move {
        signals.wait().await;
        stop.trigger();
    });
    println!();
    println!("wxmp is up ({storage}).");
    println!(
        "  gateway  {}   ← point the mini program here",
        stack.gateway_url
    );
    if let Some(sandbox) = &stack.sandbox_url {
        println!(
            "  sandbox  {sandbox}   (offline WeChat: app {}, merchant {})",
            sandbox::DEV_APP_ID,
            sandbox::DEV_MCH_ID
        );
    }
    println!(
        "  gRPC     auth {}  user {}  pay {}",
        stack.auth_url, stack.user_url, stack.pay_url
    );
    if sells_virtual {
        println!(
            "  virtual  {DEMO_XPAY_PRODUCT} sold through wx.requestVirtualPayment (OfferID {}, env 1)",
            sandbox::xpay::DEV_XPAY_OFFER_ID
        );
    }
    println!();
    if sandbox_in_process {
        println!("Try it: `make demo` (or `cargo run -p wxmp -- demo`) in another terminal,");
        println!("or by hand:");
        println!(
            "  curl -s -XPOST {}/sandbox/login-code -H 'content-type: application/json' -d '{{}}'",
            stack.sandbox_url.as_deref().unwrap_or("")
        );
        println!(
            "  curl -s -XPOST {}/login/ -H 'content-type: application/json' -d '{{\"code\":\"<code>\"}}'",
            stack.gateway_url
        );
    }
    println!("Ctrl-C stops everything gracefully.");
    stack.run_until_stopped().await.map_err(|e| e.to_string())
}

async fn migrate() -> Result<(), String> {
    let data = PathBuf::from(env("WXMP_DATA_DIR").unwrap_or_else(|| "data".to_owned()));
    let user = database_url("USER_DATABASE_URL", &data, "users.db");
    let pay = database_url("PAY_DATABASE_URL", &data, "pay.db");
    user_service::migrate(&user)
        .await
        .map_err(|e| format!("user-service: {e}"))?;
    println!("user-service migrations applied");
    pay_service::migrate(&pay)
        .await
        .map_err(|e| format!("pay-service: {e}"))?;
    println!("pay-service migrations applied");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(&cli.telemetry) {
        eprintln!("wxmp: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Up(args) => up(args).await,
        Command::Migrate => migrate().await,
        Command::Events(args) => wxmp::events::run(args).await,
        Command::Refund {
            action: Some(action),
            ..
        } => apply_abnormal(action).await,
        Command::Refund {
            action: None,
            order_no,
            amount_fen,
            reason,
            out_refund_no,
            pay,
        } => match (order_no, amount_fen) {
            (Some(order_no), Some(amount_fen)) => {
                refund(order_no, amount_fen, reason, out_refund_no, pay).await
            }
            _ => Err("wxmp refund ORDER_NO --amount-fen N".into()),
        },
        Command::Order { order_no, pay } => order(order_no, pay).await,
        Command::Bills {
            bill_date,
            csv,
            pay,
        } => bills(bill_date, csv, pay).await,
        Command::BillsResolve {
            bill_date,
            kind,
            key,
            note,
            pay,
        } => {
            bills_resolve(
                pb::ResolveBillMismatchRequest {
                    bill_date,
                    kind,
                    key,
                    note,
                },
                pay,
            )
            .await
        }
        Command::Ship {
            order_no,
            logistics_type,
            delivery_mode,
            parcels,
            all_delivered,
            pay,
        } => {
            ship(
                order_no,
                logistics_type,
                delivery_mode,
                parcels,
                all_delivered,
                pay,
            )
            .await
        }
        Command::Demo {
            gateway,
            sandbox,
            product,
            paid_template,
            pay_url,
            internal_token,
            virtual_product,
        } => {
            let target = DemoTarget {
                virtual_product: (!virtual_product.is_empty()).then_some(virtual_product),
                gateway,
                sandbox,
                product_id: product,
                paid_template_id: paid_template,
                pay_timeout: Duration::from_secs(60),
                pay: (!pay_url.is_empty()).then(|| PayTarget {
                    url: pay_url,
                    internal_token: internal_token.filter(|t| !t.is_empty()),
                }),
            };
            demo::run(&target, |line| println!("{line}"))
                .await
                .inspect(|report| {
                    if let Some(v) = &report.virtual_purchase {
                        println!(
                            "demo: virtual order {} ({}) {}, delivered {} time(s), ORDER_PAID events: {}",
                            v.order_no,
                            v.product_id,
                            v.state,
                            v.deliveries,
                            v.paid_events
                                .map_or_else(|| "not counted".to_owned(), |n| n.to_string())
                        );
                    }
                    if let Some(shipping) = &report.shipping {
                        println!("demo: order {} shipping {shipping}", report.order_no);
                    }
                })
                .map(|report| match &report.refund {
                    Some((out_refund_no, state, refunded_fen)) => println!(
                        "demo done: order {} is {} with {refunded_fen} fen refunded (refund {out_refund_no} {state})",
                        report.order_no, report.final_state
                    ),
                    None => println!(
                        "demo done: order {} is {}",
                        report.order_no, report.final_state
                    ),
                })
                .map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxmp: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refund_and_its_apply_abnormal_subcommand_parse() {
        let cli = Cli::try_parse_from(["wxmp", "refund", "A1", "--amount-fen", "5"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Refund { action: None, order_no: Some(ref o), amount_fen: Some(5), .. } if o == "A1"
        ));
        let cli = Cli::try_parse_from([
            "wxmp",
            "refund",
            "apply-abnormal",
            "R1",
            "--to",
            "merchant-bank-card",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Refund {
                action: Some(RefundAction::ApplyAbnormal { ref out_refund_no, to: AbnormalTo::MerchantBankCard, .. }),
                ..
            } if out_refund_no == "R1"
        ));
        assert!(Cli::try_parse_from(["wxmp", "refund", "A1"]).is_err());
    }
}
