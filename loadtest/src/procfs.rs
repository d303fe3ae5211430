//! Process figures from `/proc`: resident memory (`VmRSS`, `VmHWM` of `/proc/<pid>/status`)
//! and CPU time (`utime + stime` of `/proc/<pid>/stat`, in clock ticks), summed over a group of
//! processes (nginx's master and workers), and a thread that samples the resident memory of
//! groups during a run to find its peak.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A group of processes at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Sum of VmRSS, KiB.
    pub rss_kib: u64,
    /// Sum of VmHWM (each process's own peak since it started), KiB.
    pub hwm_kib: u64,
    /// Sum of RssAnon (the anonymous part of VmRSS), KiB.
    pub anon_kib: u64,
    /// Sum of user + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Sum of threads.
    pub threads: u64,
    pub at: Option<Instant>,
}

/// `name: <n> kB` (or `name: <n>`) of a `/proc/<pid>/status` text.
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Fields of `/proc/<pid>/stat` after the command name (which may hold spaces and
/// parentheses, so the text is split at the last `)`): index 0 is field 3 (`state`).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` text.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let f = stat_fields(stat)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The parent pid (field 4) of a `/proc/<pid>/stat` text.
fn stat_ppid(stat: &str) -> Option<u32> {
    stat_fields(stat)?.get(1)?.parse().ok()
}

/// One process now.
pub fn sample(pid: u32) -> Result<Sample> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (Some(rss_kib), Some(hwm_kib), Some(anon_kib), Some(cpu_ticks), Some(threads)) = (
        status_field(&status, "VmRSS"),
        status_field(&status, "VmHWM"),
        status_field(&status, "RssAnon"),
        stat_cpu_ticks(&stat),
        status_field(&status, "Threads"),
    ) else {
        bail!("pid {pid}: cannot read VmRSS, VmHWM, RssAnon or CPU times (a zombie?)");
    };
    Ok(Sample {
        rss_kib,
        hwm_kib,
        anon_kib,
        cpu_ticks,
        threads,
        at: Some(Instant::now()),
    })
}

/// A group of processes now, summed.
pub fn sample_all(pids: &[u32]) -> Result<Sample> {
    let mut total = Sample {
        at: Some(Instant::now()),
        ..Sample::default()
    };
    for &pid in pids {
        let s = sample(pid)?;
        total.rss_kib += s.rss_kib;
        total.hwm_kib += s.hwm_kib;
        total.anon_kib += s.anon_kib;
        total.cpu_ticks += s.cpu_ticks;
        total.threads += s.threads;
    }
    Ok(total)
}

/// The pids whose parent is `pid`, from a scan of `/proc`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| stat_ppid(&s))
                == Some(pid)
        })
        .collect();
    out.sort_unstable();
    out
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that cannot be run, as on every
/// Linux architecture that Rust targets).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// CPU use between two samples of a group.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// CPU seconds used.
    pub cpu_secs: f64,
    /// Wall-clock seconds between the samples.
    pub wall_secs: f64,
}

impl CpuUse {
    pub fn between(before: &Sample, after: &Sample, ticks_per_second: u64) -> CpuUse {
        let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks);
        let wall = match (before.at, after.at) {
            (Some(b), Some(a)) => a.saturating_duration_since(b).as_secs_f64(),
            _ => 0.0,
        };
        CpuUse {
            cpu_secs: ticks as f64 / ticks_per_second.max(1) as f64,
            wall_secs: wall,
        }
    }

    /// Cores busy on average (1.0 = one core all the time).
    pub fn cores(&self) -> f64 {
        if self.wall_secs > 0.0 {
            self.cpu_secs / self.wall_secs
        } else {
            0.0
        }
    }

    /// CPU milliseconds per 1,000 requests, for `requests` served in the same interval.
    pub fn ms_per_1k(&self, requests: u64) -> f64 {
        if requests == 0 {
            return 0.0;
        }
        self.cpu_secs * 1000.0 / (requests as f64 / 1000.0)
    }
}

/// Samples the summed VmRSS of groups of processes every `interval` on its own thread, and
/// keeps each group's maximum. Stopped by [`RssMonitor::stop`] (or when dropped).
pub struct RssMonitor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<u64>>>,
}

impl RssMonitor {
    pub fn start(groups: Vec<Vec<u32>>, interval: Duration) -> Result<RssMonitor> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("rss-monitor".into())
            .spawn(move || {
                let mut peaks = vec![0u64; groups.len()];
                while !flag.load(Ordering::Relaxed) {
                    for (peak, pids) in peaks.iter_mut().zip(&groups) {
                        if let Ok(s) = sample_all(pids) {
                            *peak = (*peak).max(s.rss_kib);
                        }
                    }
                    std::thread::sleep(interval);
                }
                peaks
            })
            .context("starting the RSS monitor thread")?;
        Ok(RssMonitor {
            stop,
            thread: Some(thread),
        })
    }

    /// Each group's highest VmRSS sum seen, KiB.
    pub fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RssMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_and_parentheses_in_the_name() {
        let stat = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 2 0 \
                    5 1000 50 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some(281));
        assert_eq!(stat_ppid(stat), Some(1));
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\nThreads:\t3\n";
        assert_eq!(status_field(status, "VmRSS"), Some(1024));
        assert_eq!(status_field(status, "VmHWM"), Some(2048));
        assert_eq!(status_field(status, "Threads"), Some(3));
        assert_eq!(status_field(status, "VmSwap"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
        let cpu = CpuUse {
            cpu_secs: 0.5,
            wall_secs: 10.0,
        };
        assert!((cpu.cores() - 0.05).abs() < 1e-9);
        assert!((cpu.ms_per_1k(10_000) - 50.0).abs() < 1e-9);
    }
}
