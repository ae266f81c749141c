//! HAProxy (Debian's `haproxy`, installed by `.ci/run`) in front of the gateways, with the
//! settings the Kubernetes manifests imply: HTTP health checks on `/readyz`, a failed connect
//! retried on another gateway (never a request that was sent), and its runtime API (a unix
//! socket) to take a gateway out before it is stopped — what Kubernetes does to a terminating
//! pod's endpoints while its `preStop` hook sleeps.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The health-check period (Kubernetes: readinessProbe.periodSeconds, scaled down).
pub const CHECK_INTER_MS: u64 = 300;

pub struct Haproxy {
    pub port: u16,
    socket: PathBuf,
    child: Option<Child>,
}

/// One server line of `show stat`.
#[derive(Clone, Debug)]
pub struct ServerStat {
    pub name: String,
    pub status: String,
    /// Sessions open to the server now.
    pub current: u64,
    /// Requests sent to the server so far.
    pub total: u64,
}

/// The configuration: one frontend on `port`, backend `gateways` with `servers`
/// (name, port).
fn config(port: u16, socket: &Path, servers: &[(String, u16)]) -> String {
    let mut cfg = format!(
        "global
    stats socket {socket} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    # A gateway that refuses the connection (stopped, killed) costs the client nothing: the
    # request has not been sent, so it is tried again on another gateway. Requests that were
    # sent are never retried by the proxy (a POST may have taken effect).
    retries 3
    option redispatch 1
    retry-on conn-failure
    option forwardfor

frontend api
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {CHECK_INTER_MS}ms fall 2 rise 2
",
        socket = socket.display()
    );
    for (name, port) in servers {
        cfg.push_str(&format!("    server {name} 127.0.0.1:{port} check\n"));
    }
    cfg
}

impl Haproxy {
    /// Writes the config into `dir` and starts `haproxy` in the foreground.
    pub fn start(dir: &Path, port: u16, servers: &[(String, u16)]) -> Self {
        let socket = dir.join("haproxy.sock");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config(port, &socket, servers)).expect("haproxy.cfg");
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).expect("haproxy log");
        let child = Command::new(haproxy_binary())
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("haproxy (apt-get install haproxy; .ci/run does)");
        Self {
            port,
            socket,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One runtime API command; answers its output.
    pub async fn command(&self, command: &str) -> std::io::Result<String> {
        let mut stream = tokio::net::UnixStream::connect(&self.socket).await?;
        stream.write_all(format!("{command}\n").as_bytes()).await?;
        let mut out = String::new();
        stream.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// Every server of backend `gateways`.
    pub async fn servers(&self) -> Vec<ServerStat> {
        let Ok(csv) = self.command("show stat").await else {
            return Vec::new();
        };
        let mut lines = csv.lines();
        let Some(header) = lines.next() else {
            return Vec::new();
        };
        let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
        let at = |name: &str| columns.iter().position(|c| *c == name);
        let (Some(px), Some(sv), Some(status), Some(scur), Some(stot)) = (
            at("pxname"),
            at("svname"),
            at("status"),
            at("scur"),
            at("stot"),
        ) else {
            return Vec::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > stot && f[px] == "gateways")
            .filter(|f| f[sv] != "BACKEND" && f[sv] != "FRONTEND")
            .map(|f| ServerStat {
                name: f[sv].to_owned(),
                status: f[status].to_owned(),
                current: f[scur].parse().unwrap_or(0),
                total: f[stot].parse().unwrap_or(0),
            })
            .collect()
    }

    pub async fn server(&self, name: &str) -> Option<ServerStat> {
        self.servers().await.into_iter().find(|s| s.name == name)
    }

    /// Polls until `server` satisfies `check`, at most `timeout`; answers the last stat.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        check: impl Fn(&ServerStat) -> bool,
    ) -> Result<ServerStat, Option<ServerStat>> {
        let started = Instant::now();
        loop {
            let stat = self.server(name).await;
            if let Some(s) = &stat
                && check(s)
            {
                return Ok(s.clone());
            }
            if started.elapsed() > timeout {
                return Err(stat);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes `server` out of rotation (maintenance) and waits until it has no session left:
    /// the pod's endpoint removed while `preStop` sleeps.
    pub async fn drain(&self, name: &str) {
        let out = self
            .command(&format!("disable server gateways/{name}"))
            .await
            .expect("haproxy runtime API");
        assert!(out.trim().is_empty(), "disable server: {out}");
        self.wait_for(name, Duration::from_secs(20), |s| {
            s.status.starts_with("MAINT") && s.current == 0
        })
        .await
        .unwrap_or_else(|s| panic!("{name} did not drain: {s:?}"));
    }

    /// Puts `server` back and waits until its health checks report it UP.
    pub async fn enable(&self, name: &str) {
        let out = self
            .command(&format!("enable server gateways/{name}"))
            .await
            .expect("haproxy runtime API");
        assert!(out.trim().is_empty(), "enable server: {out}");
        self.wait_up(name).await;
    }

    pub async fn wait_up(&self, name: &str) {
        self.wait_for(name, Duration::from_secs(30), |s| s.status == "UP")
            .await
            .unwrap_or_else(|s| panic!("{name} never came UP: {s:?}"));
    }
}

/// True when HAProxy is installed; a test without it skips, or fails under `CI`.
pub fn installed() -> bool {
    wxmp_testkit::tool_or_skip(
        haproxy_binary(),
        "the scale-out suite balances the gateways with it",
    )
}

fn haproxy_binary() -> PathBuf {
    [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| PathBuf::from("haproxy"))
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
