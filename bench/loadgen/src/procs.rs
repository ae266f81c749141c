//! Memory of the measured processes, read from `/proc/PID/status`: `VmRSS` now and `VmHWM`
//! (the kernel's own peak), plus a sampler that keeps the highest `VmRSS` seen during one path.

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
    fn own_process_is_readable() {
        assert!(status_kb(std::process::id(), "VmRSS").is_some_and(|b| b > 0));
    }
}
