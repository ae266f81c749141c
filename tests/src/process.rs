//! The real `wxmp-*` binaries as OS processes: located next to the test binary (built when
//! missing), started with a clean environment, logging to a file, SIGTERMed or SIGKILLed.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// Where cargo put the workspace's binaries: next to this test's `deps/` folder. Builds them
/// when missing (e.g. `cargo test -p wxmp-tests --test processes` alone).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--bin", name])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building {name}");
    }
    path
}

/// One service process, killed when dropped; its output goes to a log file in the test's dir.
pub struct Service {
    pub name: &'static str,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    /// Starts `name` (a `wxmp-*` binary) with `env`; logs to `dir/<log_name>.log`.
    pub fn start(name: &'static str, env: Vec<(&str, String)>, dir: &Path) -> Self {
        Self::start_as(name, name, env, dir)
    }

    /// [`Service::start`] with its own log name (several replicas of one binary).
    pub fn start_as(
        name: &'static str,
        log_name: &str,
        env: Vec<(&str, String)>,
        dir: &Path,
    ) -> Self {
        let mut service = Self {
            name,
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            log: dir.join(format!("{log_name}.log")),
            child: None,
        };
        service.spawn();
        service
    }

    /// Starts the process (again) with the same environment.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(binary(self.name))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn service");
        self.child = Some(child);
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process's exit status if it has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL: no drain, no goodbye, as when a node dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then the exit status once the process has drained (at most 30 s).
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} did not exit on SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
