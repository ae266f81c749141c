//! Client-side load balancing over every replica of a gRPC service.
//!
//! One HTTP/2 connection carries every call, so a Kubernetes ClusterIP Service (balanced per
//! TCP connection) pins a client to one pod for the connection's life. wxmp balances per call
//! instead, in the client: a service URL may be a comma-separated list
//! (`http://10.0.0.5:50053,http://10.0.0.6:50053`) and/or name a host that resolves to several
//! addresses (a headless Service: one A record per ready pod). A background task per channel
//! re-resolves the names every [`RESOLVE_EVERY`] probes, asks each address's standard
//! `grpc.health.v1.Health` every [`PROBE_INTERVAL`], and keeps in tonic's power-of-two-choices
//! balancer only the addresses answering SERVING. A replica that is shutting down reports
//! NOT_SERVING before it stops accepting (see [`crate::grpc::DrainConfig`]), so clients stop
//! sending it new calls first: a rolling restart drops nothing.
//!
//! Fail-open: when no address is healthy (everything restarting, or health unreachable) the
//! channel balances over all of them, so calls fail fast with a transport error (the gateway's
//! 213) instead of waiting for a replica that may never come.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use tokio::sync::mpsc::Sender;
use tonic::transport::{Channel, Endpoint, channel::Change};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// How often each address's health is asked.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Host names are resolved again every this many probes (5 s).
pub const RESOLVE_EVERY: u32 = 10;
/// How long a health probe may take before the address counts as unhealthy.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// One URL of a service list, split for resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let scheme = uri.scheme_str().unwrap_or("http").to_owned();
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Self { scheme, host, port })
    }

    /// `host:port` for a resolved address (bracketed IPv6).
    fn authority(&self, ip: std::net::IpAddr) -> String {
        std::net::SocketAddr::new(ip, self.port).to_string()
    }

    /// The addresses the target stands for now: itself when the host is an IP literal.
    async fn resolve(&self) -> Option<Vec<String>> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Some(vec![self.authority(ip)]);
        }
        match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
            Ok(addrs) => Some(addrs.map(|a| a.to_string()).collect()),
            Err(e) => {
                tracing::warn!(host = %self.host, error = %e, "cannot resolve a service host");
                None
            }
        }
    }
}

/// Splits a comma-separated list of service URLs.
pub fn split_urls(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// True when `urls` is exactly one URL whose host is an IP literal: nothing to balance or
/// resolve, a plain channel does.
pub fn is_single_address(urls: &str) -> bool {
    match split_urls(urls).as_slice() {
        [one] => Target::parse(one).is_ok_and(|t| t.host.parse::<std::net::IpAddr>().is_ok()),
        _ => false,
    }
}

/// A channel balancing per call over every healthy address behind `urls` (see the module
/// docs). Nothing connects before the first call; must run inside a tokio runtime.
pub fn balanced_channel(
    urls: &str,
    connect_timeout: Duration,
    call_timeout: Duration,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Channel, String> {
    let targets = split_urls(urls)
        .into_iter()
        .map(Target::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if targets.is_empty() {
        return Err("no service URL given".into());
    }
    let endpoint = move |scheme: &str, authority: &str| -> Option<Endpoint> {
        // Under mutual TLS an http:// URL is dialled as https://, as a single channel does.
        let scheme = if tls.is_some() { "https" } else { scheme };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}")).ok()?;
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone()).ok()?;
        }
        Some(crate::grpc::tune(endpoint, connect_timeout, call_timeout))
    };
    let (channel, changes) = Channel::balance_channel::<String>(64);
    // Until the first probe answers, every given URL as is (fail-open from the start).
    let mut members = BTreeMap::new();
    for target in &targets {
        let authority = format!("{}:{}", bracket(&target.host), target.port);
        let Some(ep) = endpoint(&target.scheme, &authority) else {
            return Err(format!("invalid service URL {authority:?}"));
        };
        if changes
            .try_send(Change::Insert(authority.clone(), ep))
            .is_ok()
        {
            members.insert(authority, target.scheme.clone());
        }
    }
    tokio::spawn(discover(targets, members, changes, endpoint));
    Ok(channel)
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The background task: resolve, probe, and keep the balancer's set equal to the healthy
/// addresses (or all of them when none is). Ends when the channel is dropped.
async fn discover(
    targets: Vec<Target>,
    mut members: BTreeMap<String, String>,
    changes: Sender<Change<String, Endpoint>>,
    endpoint: impl Fn(&str, &str) -> Option<Endpoint>,
) {
    // authority → (scheme, health client on its own plain channel)
    let mut known: BTreeMap<String, (String, HealthClient<Channel>)> = BTreeMap::new();
    let mut tick = 0u32;
    let mut ticker = tokio::time::interval(PROBE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if changes.is_closed() {
            return;
        }
        if tick.is_multiple_of(RESOLVE_EVERY) {
            let mut resolved = BTreeMap::new();
            let mut complete = true;
            for target in &targets {
                match target.resolve().await {
                    Some(addrs) => {
                        for a in addrs {
                            resolved.insert(a, target.scheme.clone());
                        }
                    }
                    None => complete = false,
                }
            }
            // A failed lookup keeps what was known rather than dropping live replicas.
            if complete || !resolved.is_empty() {
                known.retain(|a, _| resolved.contains_key(a));
                for (authority, scheme) in resolved {
                    if known.contains_key(&authority) {
                        continue;
                    }
                    if let Some(ep) = endpoint(&scheme, &authority) {
                        let probe = ep.timeout(PROBE_TIMEOUT).connect_lazy();
                        known.insert(authority, (scheme, HealthClient::new(probe)));
                    }
                }
            }
        }
        tick = tick.wrapping_add(1);
        if known.is_empty() {
            continue;
        }
        let probes = known.iter().map(|(authority, (scheme, client))| {
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(HealthCheckRequest {
                    service: String::new(),
                });
                request.set_timeout(PROBE_TIMEOUT);
                let healthy = matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, client.check(request)).await,
                    Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving
                );
                (authority.clone(), scheme.clone(), healthy)
            }
        });
        let outcome = futures::future::join_all(probes).await;
        let healthy: BTreeMap<String, String> = outcome
            .iter()
            .filter(|(_, _, ok)| *ok)
            .map(|(a, s, _)| (a.clone(), s.clone()))
            .collect();
        let wanted: BTreeMap<String, String> = if healthy.is_empty() {
            known
                .iter()
                .map(|(a, (s, _))| (a.clone(), s.clone()))
                .collect()
        } else {
            healthy
        };
        let current: BTreeSet<String> = members.keys().cloned().collect();
        for gone in current.iter().filter(|a| !wanted.contains_key(*a)) {
            tracing::info!(address = %gone, "replica left the balancer");
            if changes.send(Change::Remove(gone.clone())).await.is_err() {
                return;
            }
            members.remove(gone);
        }
        for (authority, scheme) in wanted {
            if members.contains_key(&authority) {
                continue;
            }
            let Some(ep) = endpoint(&scheme, &authority) else {
                continue;
            };
            tracing::info!(address = %authority, "replica joined the balancer");
            if changes
                .send(Change::Insert(authority.clone(), ep))
                .await
                .is_err()
            {
                return;
            }
            members.insert(authority, scheme);
        }
    }
}
