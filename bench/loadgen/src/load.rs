//! The timed part: a fixed number of HTTP/1.1 keep-alive connections, each sending its next
//! request as soon as the previous answer is read (closed loop), for a fixed time.
//!
//! Requests are built before the clock starts (bodies are pre-serialised `Bytes`), so the
//! generator spends its time on the wire, not on JSON. Every latency, success or error, goes
//! into an HDR histogram (microseconds, 3 significant digits).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::Barrier};

/// One prepared request: method, path, headers and body.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub method: hyper::Method,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Prepared {
    pub fn get(path: &str) -> Self {
        Self {
            method: hyper::Method::GET,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn post(path: &str, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            method: hyper::Method::POST,
            path: path.to_owned(),
            headers: vec![("content-type", content_type.to_owned())],
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    fn build(&self, host: &str) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str())
            .header("host", host);
        for (name, value) in &self.headers {
            builder = builder.header(*name, value.as_str());
        }
        // Only static, valid parts go in: building cannot fail.
        builder
            .body(Full::new(self.body.clone()))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }
}

/// What counts as success besides a 2xx status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The JSON envelope's `code` is 200.
    Envelope,
    /// WeChat's notify reply says `return_code` SUCCESS.
    NotifyAccepted,
    /// A jscode2session answer with a session (WeChat's errors carry an `errcode` instead).
    SessionAnswered,
}

impl Check {
    fn passes(self, body: &[u8]) -> bool {
        match self {
            Check::Envelope => envelope_code(body) == Some(200),
            Check::NotifyAccepted => contains(body, b"<return_code><![CDATA[SUCCESS]]>"),
            Check::SessionAnswered => {
                contains(body, b"\"session_key\"") && !contains(body, b"\"errcode\":4")
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The `code` of an envelope; the gateway writes it first, so look there before parsing.
pub fn envelope_code(body: &[u8]) -> Option<i64> {
    if body.starts_with(b"{\"code\":200,") {
        return Some(200);
    }
    #[derive(serde::Deserialize)]
    struct Code {
        code: i64,
    }
    serde_json::from_slice::<Code>(body).ok().map(|c| c.code)
}

/// Where requests come from: the next one for a connection, or `None` when a finite supply
/// (login codes, first-delivery notifies) is used up. The `usize` is handed back to
/// `on_success` with the answer's body.
pub type Source = Arc<dyn Fn() -> Option<(Prepared, usize)> + Send + Sync>;
pub type OnSuccess = Arc<dyn Fn(usize, &[u8]) + Send + Sync>;

/// A supply that hands out each item once, in order.
pub fn once_each(items: Vec<Prepared>) -> (Source, Arc<AtomicUsize>) {
    let next = Arc::new(AtomicUsize::new(0));
    let items = Arc::new(items);
    let counter = next.clone();
    let source: Source = Arc::new(move || {
        let i = counter.fetch_add(1, Ordering::Relaxed);
        items.get(i).map(|p| (p.clone(), i))
    });
    (source, next)
}

/// A supply that cycles through `items` forever.
pub fn cycle(items: Vec<Prepared>) -> Source {
    let next = AtomicUsize::new(0);
    let items = Arc::new(items);
    Arc::new(move || {
        if items.is_empty() {
            return None;
        }
        let i = next.fetch_add(1, Ordering::Relaxed) % items.len();
        Some((items[i].clone(), i))
    })
}

/// The result of one timed run.
#[derive(Debug)]
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub latency_us: Histogram<u64>,
    pub elapsed: Duration,
    /// The supply ran out before the time was up.
    pub exhausted: bool,
    /// A few error descriptions, for the log.
    pub samples: Vec<String>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Shared {
    errors: Mutex<Vec<String>>,
    exhausted: AtomicBool,
}

impl Shared {
    fn note(&self, what: String) {
        if let Ok(mut e) = self.errors.lock()
            && e.len() < 5
        {
            e.push(what);
        }
    }
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Runs `connections` closed-loop clients against `addr` for `duration`.
pub async fn run(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    source: Source,
    check: Check,
    on_success: Option<OnSuccess>,
) -> std::io::Result<Outcome> {
    let host = addr.to_string();
    let shared = Arc::new(Shared {
        errors: Mutex::new(Vec::new()),
        exhausted: AtomicBool::new(false),
    });
    // Every connection is open before the clock starts.
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await?);
    }
    let barrier = Arc::new(Barrier::new(connections + 1));
    let mut tasks = Vec::with_capacity(connections);
    for mut sender in senders {
        let (barrier, source, shared, host, on_success) = (
            barrier.clone(),
            source.clone(),
            shared.clone(),
            host.clone(),
            on_success.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
                .expect("static histogram bounds");
            let (mut requests, mut errors) = (0u64, 0u64);
            let start = {
                barrier.wait().await;
                Instant::now()
            };
            let deadline = start + duration;
            while Instant::now() < deadline {
                let Some((prepared, tag)) = source() else {
                    shared.exhausted.store(true, Ordering::Relaxed);
                    break;
                };
                let request = prepared.build(&host);
                let sent = Instant::now();
                let answer = match sender.ready().await {
                    Ok(()) => sender.send_request(request).await,
                    Err(e) => Err(e),
                };
                let result = match answer {
                    Ok(response) => {
                        let status = response.status();
                        match response.into_body().collect().await {
                            Ok(body) => Ok((status, body.to_bytes())),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                let took = sent.elapsed();
                let _ = hist.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
                requests += 1;
                match result {
                    Ok((status, body)) if status.is_success() && check.passes(&body) => {
                        if let Some(f) = &on_success {
                            f(tag, &body);
                        }
                    }
                    Ok((status, body)) => {
                        errors += 1;
                        shared.note(format!(
                            "{} {}: HTTP {status} {}",
                            prepared.method,
                            prepared.path,
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        ));
                    }
                    Err(e) => {
                        errors += 1;
                        shared.note(format!("{} {}: {e}", prepared.method, prepared.path));
                        // The connection is gone: open another one and go on.
                        match connect(addr).await {
                            Ok(s) => sender = s,
                            Err(e) => {
                                shared.note(format!("reconnect: {e}"));
                                break;
                            }
                        }
                    }
                }
            }
            (hist, requests, errors, start)
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut latency_us =
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds");
    let (mut requests, mut errors) = (0, 0);
    for task in tasks {
        let (hist, r, e, _) = task.await.map_err(std::io::Error::other)?;
        let _ = latency_us.add(&hist);
        requests += r;
        errors += e;
    }
    let elapsed = started.elapsed();
    let samples = shared.errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(Outcome {
        requests,
        errors,
        latency_us,
        elapsed,
        exhausted: shared.exhausted.load(Ordering::Relaxed),
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_codes_are_read() {
        assert_eq!(
            envelope_code(br#"{"code":200,"msg":"suc","data":{}}"#),
            Some(200)
        );
        assert_eq!(
            envelope_code(br#"{"msg":"x","code":202,"data":null}"#),
            Some(202)
        );
        assert_eq!(envelope_code(b"<html>"), None);
    }

    #[test]
    fn checks_tell_success_from_failure() {
        assert!(
            Check::NotifyAccepted
                .passes(b"<xml><return_code><![CDATA[SUCCESS]]></return_code></xml>")
        );
        assert!(
            !Check::NotifyAccepted
                .passes(b"<xml><return_code><![CDATA[FAIL]]></return_code></xml>")
        );
        assert!(!Check::Envelope.passes(br#"{"code":213,"msg":"x","data":null}"#));
        assert!(
            Check::SessionAnswered.passes(br#"{"openid":"o","session_key":"k","unionid":"u"}"#)
        );
        assert!(!Check::SessionAnswered.passes(br#"{"errcode":40163,"errmsg":"code been used"}"#));
    }

    #[test]
    fn supplies_run_out_or_cycle() {
        let (once, used) = once_each(vec![Prepared::get("/a"), Prepared::get("/b")]);
        assert_eq!(once().map(|(p, i)| (p.path, i)), Some(("/a".into(), 0)));
        assert_eq!(once().map(|(_, i)| i), Some(1));
        assert!(once().is_none());
        assert!(used.load(Ordering::Relaxed) >= 2);
        let round = cycle(vec![Prepared::get("/a"), Prepared::get("/b")]);
        let seen: Vec<usize> = (0..4).filter_map(|_| round().map(|(_, i)| i)).collect();
        assert_eq!(seen, [0, 1, 0, 1]);
    }
}
