//! Memory of the measured processes, read from `/proc/PID/status`: `VmRSS` now and `VmHWM`
//! (the kernel's own peak), plus a sampler that keeps the highest `VmRSS` seen during one path;
//! and where the CPU goes: each process's CPU time (`/proc/PID/stat`), PostgreSQL's and Redis's
//! server processes by name, and the whole machine's (`/proc/stat`), read before and after a
//! window.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

/// A service process: its name in the report and its pid.
#[derive(Clone, Debug)]
pub struct Proc {
    pub name: String,
    pub pid: u32,
}

/// `name=pid,name=pid`.
pub fn parse_procs(s: &str) -> Result<Vec<Proc>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, pid) = p
                .split_once('=')
                .ok_or_else(|| format!("{p:?} is not name=pid"))?;
            let pid = pid
                .trim()
                .parse()
                .map_err(|_| format!("{p:?}: pid is not a number"))?;
            Ok(Proc {
                name: name.trim().to_owned(),
                pid,
            })
        })
        .collect()
}

/// A `kB` field of `/proc/PID/status`, in bytes.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&text, field)
}

fn parse_status_kb(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Samples every process's `VmRSS` every 50 ms until stopped; answers the peaks.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Vec<AtomicU64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(procs: &[Proc]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks: Arc<Vec<AtomicU64>> =
            Arc::new(procs.iter().map(|_| AtomicU64::new(0)).collect());
        let pids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
        let task = {
            let (stop, peaks) = (stop.clone(), peaks.clone());
            tokio::spawn(async move {
                loop {
                    for (i, pid) in pids.iter().enumerate() {
                        if let Some(rss) = status_kb(*pid, "VmRSS") {
                            peaks[i].fetch_max(rss, Ordering::Relaxed);
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Self { stop, peaks, task }
    }

    pub async fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peaks
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect()
    }
}

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on every mainstream Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of a `/proc/PID/stat` line, in ticks.
fn parse_stat_ticks(text: &str) -> Option<(String, u64)> {
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based, man 5 proc).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn pid_ticks(pid: u32) -> Option<(String, u64)> {
    parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// cutime + cstime of a `/proc/PID/stat` line: the CPU of its reaped children, in ticks.
fn parse_children_ticks(text: &str) -> Option<u64> {
    let close = text.rfind(')')?;
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(cutime + cstime)
}

/// The machine's busy and total ticks (`/proc/stat`'s `cpu` line, all cores).
fn parse_machine_ticks(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Groups of processes whose CPU a window is split into.
pub const STORE_GROUPS: [(&str, &str); 2] = [("postgres", "postgres"), ("redis", "redis-server")];

/// CPU ticks at one instant: each watched process, each server by name, this process and
/// the machine.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    procs: Vec<u64>,
    groups: Vec<u64>,
    /// CPU of this process's reaped children: the floors' pgbench and redis-benchmark.
    tools: u64,
    own: u64,
    machine_busy: u64,
    machine_total: u64,
}

impl CpuSnapshot {
    pub fn take(procs: &[Proc]) -> Self {
        let mut groups = vec![0; STORE_GROUPS.len()];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some((comm, ticks)) = pid_ticks(pid)
                    && let Some(i) = STORE_GROUPS.iter().position(|(_, c)| *c == comm)
                {
                    groups[i] += ticks;
                }
            }
        }
        let (machine_busy, machine_total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_machine_ticks(&t))
            .unwrap_or((0, 0));
        Self {
            procs: procs
                .iter()
                .map(|p| pid_ticks(p.pid).map_or(0, |(_, t)| t))
                .collect(),
            groups,
            tools: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|t| parse_children_ticks(&t))
                .unwrap_or(0),
            own: pid_ticks(std::process::id()).map_or(0, |(_, t)| t),
            machine_busy,
            machine_total,
        }
    }
}

/// Where the CPU of one window went, in CPU milliseconds per request.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CpuSplit {
    /// (name, CPU ms per request): the load generator, each service, PostgreSQL, Redis, the
    /// floor tools, and everything else on the machine ("other": not ours).
    pub parts: Vec<(String, f64)>,
    /// Every process on the machine, CPU ms per request.
    pub total_ms: f64,
    /// Share of the machine's CPU time that was busy during the window.
    pub busy: f64,
}

impl CpuSplit {
    /// The split between two snapshots, over `requests` requests.
    pub fn between(
        before: &CpuSnapshot,
        after: &CpuSnapshot,
        procs: &[Proc],
        requests: u64,
    ) -> Self {
        let per = |ticks: u64| ticks as f64 / TICKS_PER_SEC * 1000.0 / (requests.max(1) as f64);
        let mut parts = vec![(
            "loadgen".to_owned(),
            per(after.own.saturating_sub(before.own)),
        )];
        let mut ours = after.own.saturating_sub(before.own);
        for (i, p) in procs.iter().enumerate() {
            let d = after
                .procs
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.procs.get(i).copied().unwrap_or(0));
            ours += d;
            parts.push((p.name.clone(), per(d)));
        }
        for (i, (name, _)) in STORE_GROUPS.iter().enumerate() {
            let d = after.groups[i].saturating_sub(before.groups[i]);
            ours += d;
            parts.push(((*name).to_owned(), per(d)));
        }
        let tools = after.tools.saturating_sub(before.tools);
        ours += tools;
        parts.push(("pgbench/redis-benchmark".to_owned(), per(tools)));
        let busy = after.machine_busy.saturating_sub(before.machine_busy);
        let total = after.machine_total.saturating_sub(before.machine_total);
        parts.push(("other".to_owned(), per(busy.saturating_sub(ours))));
        Self {
            parts,
            total_ms: per(busy),
            busy: busy as f64 / (total.max(1) as f64),
        }
    }

    /// CPU ms per request of one part.
    pub fn of(&self, name: &str) -> f64 {
        self.parts
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_bytes() {
        let text = "Name:\tx\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kb(text, "VmRSS"), Some(10 * 1024 * 1024));
        assert_eq!(parse_status_kb(text, "VmHWM"), Some(20 * 1024 * 1024));
        assert_eq!(parse_status_kb(text, "VmSwap"), None);
    }

    #[test]
    fn procs_parse() {
        let p = parse_procs("gateway=12, auth=13").unwrap();
        assert_eq!(p[1].name, "auth");
        assert_eq!(p[1].pid, 13);
        assert!(parse_procs("gateway").is_err());
    }

    #[test]
    fn cpu_times_are_read() {
        let line =
            "1234 (wxmp gate) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some(("wxmp gate".to_owned(), 300)));
        let line = "1234 (wxmp) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 3 0 100 0 0";
        assert_eq!(parse_children_ticks(line), Some(10));
        let stat = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_machine_ticks(stat), Some((161, 981)));
        assert!(pid_ticks(std::process::id()).is_some());
    }

    #[test]
    fn a_window_is_split_per_request() {
        let procs = parse_procs("gateway=1").unwrap();
        let before = CpuSnapshot {
            procs: vec![100],
            groups: vec![10, 5],
            tools: 0,
            own: 50,
            machine_busy: 1000,
            machine_total: 4000,
        };
        let after = CpuSnapshot {
            procs: vec![300],
            groups: vec![110, 15],
            tools: 0,
            own: 150,
            machine_busy: 1600,
            machine_total: 4800,
        };
        // 600 busy ticks = 6 s of CPU over 1000 requests = 6 ms each.
        let split = CpuSplit::between(&before, &after, &procs, 1000);
        assert!((split.total_ms - 6.0).abs() < 1e-9);
        assert!((split.of("gateway") - 2.0).abs() < 1e-9);
        assert!((split.of("loadgen") - 1.0).abs() < 1e-9);
        assert!((split.of("postgres") - 1.0).abs() < 1e-9);
        assert!((split.of("other") - 1.9).abs() < 1e-9);
        assert!((split.busy - 0.75).abs() < 1e-9);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(status_kb(std::process::id(), "VmRSS").is_some_and(|b| b > 0));
    }
}
