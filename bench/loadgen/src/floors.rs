//! The floors: what the storage and WeChat steps of each path cost on their own, measured in the
//! same run at the same concurrency and duration as the paths. PostgreSQL with `pgbench` custom
//! scripts shaped like each path's queries (on the services' own databases, after the paths
//! filled them), Redis with `redis-benchmark`, and the sandbox's `jscode2session` alone. A path
//! can never beat the slowest step it needs; its ratio to that floor is what the services' own
//! hops cost.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::process::Command;

use crate::procs::CpuSplit;

/// Where the floors run: the services' PostgreSQL databases and Redis.
#[derive(Clone, Debug)]
pub struct Storage {
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub user_db: String,
    pub pay_db: String,
    pub redis_url: String,
    /// Keys the Redis floors write live under this prefix (the run's own, cleaned up after).
    pub redis_prefix: String,
    /// Where the pgbench scripts are written.
    pub scratch: PathBuf,
}

/// One measured floor.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Floor {
    /// Short key the path rows refer to (`pg-update`, `redis-get`, ...).
    pub key: &'static str,
    pub what: String,
    pub connections: usize,
    /// Clients the tool ran with (pgbench is capped below PostgreSQL's max_connections).
    pub clients: usize,
    pub rate: f64,
    pub avg_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: u64,
    pub note: String,
    /// Where the CPU went during the window (filled in by the caller).
    pub cpu: CpuSplit,
}

/// pgbench never opens more connections than this: PostgreSQL allows 100 by default and the
/// services hold up to 16 each (their pools), so 64 is what is left. The services themselves
/// never use more than their pool's 16 connections, at any HTTP concurrency.
pub const PGBENCH_MAX_CLIENTS: usize = 64;

/// A pgbench script and the path it stands for.
pub struct PgScript {
    pub key: &'static str,
    pub what: &'static str,
    /// `user` or `pay`: which service's database.
    pub db: Db,
    pub sql: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    User,
    Pay,
}

/// `/me`: user.GetUser, one SELECT by primary key (`:maxid` = the highest user id).
pub const PG_SELECT: PgScript = PgScript {
    key: "pg-select",
    what: "PostgreSQL: SELECT a user by primary key",
    db: Db::User,
    sql: "\\set id random(1, :maxid)\n\
          SELECT id, app_id, openid, unionid, nickname, avatar_url, gender, language, city, \
          province, country, phone, phone_country_code, created_at, updated_at, phone_number \
          FROM users WHERE id = :id LIMIT 1;\n",
};

/// `/userinfo/`: user.UpdateProfile, one single-row UPDATE by primary key with RETURNING.
pub const PG_UPDATE: PgScript = PgScript {
    key: "pg-update",
    what: "PostgreSQL: UPDATE a user's profile by primary key, RETURNING the row",
    db: Db::User,
    sql: "\\set id random(1, :maxid)\n\
          UPDATE users SET nickname = 'pgbench ' || :id, avatar_url = 'https://example.invalid/p.png', \
          gender = 1, language = 'zh_CN', city = 'Shenzhen', province = 'Guangdong', \
          country = 'China', updated_at = :id WHERE id = :id \
          RETURNING id, app_id, openid, unionid, nickname, avatar_url, gender, language, city, \
          province, country, phone, phone_country_code, created_at, updated_at, phone_number;\n",
};

/// `/pay/` (a catalog product): INSERT the order with the payer bound, then the prepay_id by
/// UPDATE, both RETURNING the row, each its own statement as pay-service runs them.
pub const PG_ORDER: PgScript = PgScript {
    key: "pg-order",
    what: "PostgreSQL: INSERT an order + UPDATE it with a prepay_id, both RETURNING",
    db: Db::Pay,
    sql: "\\set r random(1, 900000000000000)\n\
          INSERT INTO orders (order_no, user_id, app_id, openid, client_ip, amount_fen, description, \
          attach, product_id, state, notify_url, sign_type, created_at, updated_at, expires_at) \
          VALUES ('pgb' || :r, 1, 'wx00000000000dev01', 'pgbench-openid', '127.0.0.1', 1800, \
          'Coffee', '', 'coffee', 'CREATED', 'http://127.0.0.1/pay/notify', 'MD5', :r, :r, :r) \
          RETURNING *;\n\
          UPDATE orders SET state = 'PAYING', prepay_id = 'wx' || :r, prepay_expires_at = :r, \
          prepared_at = :r, updated_at = :r WHERE order_no = 'pgb' || :r \
          AND state IN ('CREATED', 'PAYING') RETURNING *;\n",
};

/// `/pay/notify` first delivery: read the order, then one transaction: the conditional UPDATE
/// to PAID, the notify row, the outbox event under its advisory lock. (`:maxid` = the highest
/// order id; the state flips so every run writes the row.)
pub const PG_NOTIFY: PgScript = PgScript {
    key: "pg-notify",
    what: "PostgreSQL: SELECT the order; BEGIN, UPDATE → PAID RETURNING, INSERT the notify, advisory lock + INSERT the event, COMMIT",
    db: Db::Pay,
    sql: "\\set id random(1, :maxid)\n\
          \\set r random(1, 900000000000000)\n\
          SELECT * FROM orders WHERE id = :id LIMIT 1;\n\
          BEGIN;\n\
          UPDATE orders SET state = CASE state WHEN 'PAID' THEN 'PAYING' ELSE 'PAID' END, \
          transaction_id = 'pgb' || :r, paid_at = :r, updated_at = :r WHERE id = :id \
          AND state IN ('CREATED', 'PAYING', 'PAID') RETURNING *;\n\
          INSERT INTO pay_notifications (received_at, out_trade_no, transaction_id, raw_body, \
          verdict, accepted, body_sha256, body_len) VALUES (:r, 'pgb', 'pgb' || :r, \
          repeat('x', 600), 'paid', true, '', 600);\n\
          SELECT pg_advisory_xact_lock(7757433);\n\
          INSERT INTO order_events (order_no, kind, payload, created_at) \
          VALUES ('pgb', 'ORDER_PAID', repeat('x', 400), :r);\n\
          END;\n",
};

/// `/pay/notify` duplicate: read the order, INSERT the notify (no transaction).
pub const PG_NOTIFY_DUP: PgScript = PgScript {
    key: "pg-notify-dup",
    what: "PostgreSQL: SELECT the order + INSERT the notify",
    db: Db::Pay,
    sql: "\\set id random(1, :maxid)\n\
          \\set r random(1, 900000000000000)\n\
          SELECT * FROM orders WHERE id = :id LIMIT 1;\n\
          INSERT INTO pay_notifications (received_at, out_trade_no, transaction_id, raw_body, \
          verdict, accepted, body_sha256, body_len) VALUES (:r, 'pgb', 'pgb' || :r, \
          repeat('x', 600), 'duplicate', true, '', 600);\n",
};

impl Storage {
    fn db_name(&self, db: Db) -> &str {
        match db {
            Db::User => &self.user_db,
            Db::Pay => &self.pay_db,
        }
    }

    /// `SELECT coalesce(max(id), 0) FROM table` through psql.
    async fn max_id(&self, db: Db, table: &str) -> Result<i64, String> {
        let out = Command::new("psql")
            .args(["-h", &self.pg_host, "-p", &self.pg_port.to_string()])
            .args(["-U", &self.pg_user, "-d", self.db_name(db), "-qtA", "-c"])
            .arg(format!("SELECT coalesce(max(id), 0) FROM {table}"))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("psql: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .map_err(|_| format!("psql max(id) of {table}: {text:?}"))
    }

    /// Runs `script` with pgbench: `connections` clients (capped), one thread (as the load
    /// generator), prepared statements (as diesel-async caches them), for `duration`.
    pub async fn pgbench(
        &self,
        script: &PgScript,
        connections: usize,
        duration: Duration,
    ) -> Result<Floor, String> {
        let table = match script.db {
            Db::User => "users",
            Db::Pay => "orders",
        };
        let maxid = self.max_id(script.db, table).await?.max(1);
        std::fs::create_dir_all(&self.scratch).map_err(|e| e.to_string())?;
        let file = self.scratch.join(format!("{}.sql", script.key));
        std::fs::write(&file, script.sql).map_err(|e| format!("{}: {e}", file.display()))?;
        let clients = connections.min(PGBENCH_MAX_CLIENTS);
        let out = Command::new("pgbench")
            .args(["-h", &self.pg_host, "-p", &self.pg_port.to_string()])
            .args(["-U", &self.pg_user, "-n", "-j", "1", "-M", "prepared"])
            .args(["-c", &clients.to_string()])
            .args(["-T", &duration.as_secs().max(1).to_string()])
            .args(["-D", &format!("maxid={maxid}")])
            .arg("-f")
            .arg(&file)
            .arg(self.db_name(script.db))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("pgbench: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "pgbench {}: {}{}",
                script.key,
                text,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let parsed = parse_pgbench(&text)
            .ok_or_else(|| format!("pgbench {}: unreadable output {text}", script.key))?;
        Ok(Floor {
            key: script.key,
            what: script.what.to_owned(),
            connections,
            clients,
            rate: parsed.tps,
            avg_ms: Some(parsed.avg_ms),
            p99_ms: None,
            errors: parsed.failed,
            note: format!("pgbench -M prepared -j 1 -c {clients}, {maxid} rows to pick from"),
            cpu: CpuSplit::default(),
        })
    }

    /// `redis-benchmark` of one command on a key under the run's prefix, `connections`
    /// clients, about `duration` long (it counts requests, not time: `per_sec` × duration).
    pub async fn redis(
        &self,
        key: &'static str,
        what: &str,
        command: &[&str],
        connections: usize,
        duration: Duration,
        per_sec: u64,
    ) -> Result<Floor, String> {
        let (host, port) = redis_host_port(&self.redis_url)?;
        let requests = per_sec * duration.as_secs().max(1);
        let out = Command::new("redis-benchmark")
            .args(["-h", &host, "-p", &port.to_string()])
            .args(["-c", &connections.to_string()])
            .args(["-n", &requests.to_string(), "--csv"])
            .args(command)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("redis-benchmark: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (rate, avg, p99) = parse_redis_csv(&text)
            .ok_or_else(|| format!("redis-benchmark: unreadable output {text}"))?;
        Ok(Floor {
            key,
            what: what.to_owned(),
            connections,
            clients: connections,
            rate,
            avg_ms: Some(avg),
            p99_ms: Some(p99),
            errors: 0,
            note: format!("redis-benchmark -c {connections} -n {requests} (no pipelining)"),
            cpu: CpuSplit::default(),
        })
    }
}

/// What pgbench printed.
#[derive(Debug, PartialEq)]
struct PgbenchOut {
    tps: f64,
    avg_ms: f64,
    failed: u64,
}

fn parse_pgbench(text: &str) -> Option<PgbenchOut> {
    let after = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some(PgbenchOut {
        tps: after("tps = ")?,
        avg_ms: after("latency average = ")?,
        // pgbench prints a whole, non-negative count.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        failed: after("number of failed transactions: ").map_or(0, |f| f as u64),
    })
}

/// `(rps, avg ms, p99 ms)` of redis-benchmark's `--csv` answer. The first cell is the command
/// itself, quotes and all, so the numbers are read from the end of the line.
fn parse_redis_csv(text: &str) -> Option<(f64, f64, f64)> {
    let line = text.lines().nth(1)?.trim().trim_matches('"');
    // From the end: max, p99, p95, p50, min, avg, rps, then the command.
    let cells: Vec<&str> = line.rsplitn(8, "\",\"").collect();
    if cells.len() < 8 {
        return None;
    }
    let num = |i: usize| cells.get(i).and_then(|c| c.parse::<f64>().ok());
    Some((num(6)?, num(5)?, num(1)?))
}

fn redis_host_port(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| "the Redis floor needs a redis:// URL".to_owned())?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_owned(),
            port.parse()
                .map_err(|_| format!("bad Redis port in {url:?}"))?,
        )),
        None => Ok((authority.to_owned(), 6379)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_output_is_read() {
        let text = "transaction type: up.sql\nscaling factor: 1\nnumber of clients: 32\n\
                    number of transactions actually processed: 61234\n\
                    number of failed transactions: 3 (0.005%)\n\
                    latency average = 5.226 ms\ninitial connection time = 40.1 ms\n\
                    tps = 6123.456789 (without initial connection time)\n";
        assert_eq!(
            parse_pgbench(text),
            Some(PgbenchOut {
                tps: 6123.456789,
                avg_ms: 5.226,
                failed: 3
            })
        );
        assert_eq!(parse_pgbench("pgbench: error: connection refused"), None);
    }

    #[test]
    fn redis_csv_is_read() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"GET p:k\",\"12987.01\",\"0.220\",\"0.016\",\"0.055\",\"0.071\",\"7.975\",\"12.023\"\n";
        assert_eq!(parse_redis_csv(text), Some((12987.01, 0.220, 7.975)));
        let quoted = "\"test\",\"rps\"\n\"SET p:k {\"a\":1,\"b\":\"\"} EX 600\",\"61099.80\",\"0.343\",\"0.064\",\"0.311\",\"0.455\",\"1.495\",\"6.695\"\n";
        assert_eq!(parse_redis_csv(quoted), Some((61099.80, 0.343, 1.495)));
        assert_eq!(parse_redis_csv("\"test\"\n"), None);
    }

    #[test]
    fn redis_urls_name_host_and_port() {
        assert_eq!(
            redis_host_port("redis://127.0.0.1:6380/0").unwrap(),
            ("127.0.0.1".to_owned(), 6380)
        );
        assert_eq!(
            redis_host_port("redis://:pw@redis").unwrap(),
            ("redis".to_owned(), 6379)
        );
        assert!(redis_host_port("http://x").is_err());
    }
}
