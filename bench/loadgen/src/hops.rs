//! The per-hop breakdown: a few requests per path, one at a time, each with an `X-Request-Id`
//! starting with `trace-` (service-kit's `hop` module): every service they pass logs one
//! `wxmp::hop` line with its own time for the call. This reads the services' JSON logs back
//! and tabulates, per path, the client's time, the gateway's and each gRPC call's (median,
//! and how many calls per request: a session-cache hit makes no `Authenticate` call).

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, path::Path, time::Duration};

use crate::load::{self, Check, Prepared};

/// One path's requests, ready to send.
pub struct HopPath {
    pub label: &'static str,
    pub key: &'static str,
    pub requests: Vec<Prepared>,
}

/// What one path's traced requests showed.
pub struct HopResult {
    label: &'static str,
    requests: usize,
    client_p50_us: u64,
    /// (service, path) → every elapsed_us seen.
    hops: BTreeMap<(String, String), Vec<u64>>,
}

/// Sends each path's requests one at a time, marked `trace-<key>-<run>-<n>`.
pub async fn run(
    gateway: SocketAddr,
    paths: Vec<HopPath>,
    logs: &Path,
    services: &[String],
) -> Result<Vec<HopResult>, String> {
    let run = std::process::id();
    let mut sent = Vec::new();
    for path in paths {
        let count = path.requests.len();
        let marked: Vec<Prepared> = path
            .requests
            .into_iter()
            .enumerate()
            .map(|(n, r)| r.header("x-request-id", format!("trace-{}-{run}-{n}", path.key)))
            .collect();
        eprintln!(
            "bench: per-hop breakdown of {} ({count} requests, one at a time) ...",
            path.label
        );
        let (source, _) = load::once_each(marked);
        let outcome = load::run(
            gateway,
            1,
            Duration::from_secs(60),
            source,
            Check::Envelope,
            None,
        )
        .await
        .map_err(|e| format!("{}: {e}", path.label))?;
        if outcome.errors > 0 {
            for sample in &outcome.samples {
                eprintln!("bench:   error: {sample}");
            }
        }
        sent.push((
            path.label,
            path.key,
            count,
            outcome.latency_us.value_at_quantile(0.5),
        ));
    }
    // The services write their lines as they answer; wait until the gateway's line of the
    // last request is there (at most 5 s).
    let last = sent
        .last()
        .map(|(_, key, count, _)| format!("trace-{key}-{run}-{}", count.saturating_sub(1)));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    if let Some(last) = last {
        while std::time::Instant::now() < deadline {
            let gateway_log = std::fs::read_to_string(logs.join("gateway.log")).unwrap_or_default();
            if gateway_log.contains(&last) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut lines: Vec<(String, serde_json::Value)> = Vec::new();
    for service in services {
        let text = std::fs::read_to_string(logs.join(format!("{service}.log"))).unwrap_or_default();
        lines.extend(
            text.lines()
                .filter(|l| l.contains("wxmp::hop"))
                .filter_map(|l| serde_json::from_str(l).ok())
                .map(|v| (service.clone(), v)),
        );
    }
    Ok(sent
        .into_iter()
        .map(|(label, key, requests, client_p50_us)| {
            let prefix = format!("trace-{key}-{run}-");
            let mut hops: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
            for (service, line) in &lines {
                let id = line["request_id"].as_str().unwrap_or_default();
                if !id.starts_with(&prefix) {
                    continue;
                }
                let (Some(path), Some(us)) = (line["path"].as_str(), line["elapsed_us"].as_u64())
                else {
                    continue;
                };
                hops.entry((service.clone(), path.to_owned()))
                    .or_default()
                    .push(us);
            }
            HopResult {
                label,
                requests,
                client_p50_us,
                hops,
            }
        })
        .collect())
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn ms(us: u64) -> String {
    // Microseconds to milliseconds for display.
    #[allow(clippy::cast_precision_loss)]
    let ms = us as f64 / 1000.0;
    format!("{ms:.2}")
}

/// The markdown section.
pub fn markdown(results: &mut [HopResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Per-hop breakdown (one request at a time)\n");
    let _ = writeln!(
        s,
        "Requests marked `X-Request-Id: trace-…` one after another (no concurrency); each service logs its own time per call (`wxmp::hop`, service-kit `hop.rs`). Median of each hop; *calls* = calls per request (below 1: the session cache answered the rest). A service's time includes the calls it makes (user-service's `UpdateProfile` includes its `AuthenticateWithSessionKey`). Gateway minus its calls = the gateway's own work plus the gRPC transport.\n"
    );
    let _ = writeln!(s, "| path | hop | calls | median ms |");
    let _ = writeln!(s, "|---|---|---:|---:|");
    for r in results.iter_mut() {
        let _ = writeln!(
            s,
            "| {} | client (loadgen p50) | 1 | {} |",
            r.label,
            ms(r.client_p50_us)
        );
        // The gateway first (the whole request as the server saw it), then the calls.
        let mut hops: Vec<_> = r.hops.iter_mut().collect();
        hops.sort_by_key(|((service, path), _)| {
            (service.as_str() != "gateway", service.clone(), path.clone())
        });
        for ((service, path), values) in hops {
            #[allow(clippy::cast_precision_loss)]
            let calls = values.len() as f64 / r.requests.max(1) as f64;
            let _ = writeln!(
                s,
                "| {} | {service} `{path}` | {calls:.2} | {} |",
                r.label,
                ms(median(values))
            );
        }
    }
    s
}
