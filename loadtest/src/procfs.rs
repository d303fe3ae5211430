//! Process figures from `/proc`: resident memory (`VmRSS`, `VmHWM` of `/proc/<pid>/status`)
//! and CPU time, summed over a group of processes (nginx's master and workers), and a thread
//! that samples the resident memory of groups during a run to find its peak; and the share of
//! the machine's CPU time that the hypervisor stole ([`MachineCpu`]).
//!
//! CPU time comes from two places. `utime + stime` of `/proc/<pid>/stat` counts the whole
//! process, exited threads included, but in clock ticks (10 ms): over a 6 s phase at 1,000
//! requests/s a tick is 1.67 CPU-ms per 1,000 requests, so two processes' ratio moves by a
//! tenth for one tick. The first field of each `/proc/<pid>/task/<tid>/schedstat` is the
//! scheduler's own count of the thread's time on a CPU, user and kernel, in nanoseconds; it
//! misses threads that exit between two samples, so it is used only when both samples saw the
//! same threads.

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
    /// Sum of the live threads' time on a CPU, nanoseconds (`None` when a `schedstat` file
    /// could not be read: a kernel without scheduler statistics).
    pub cpu_ns: Option<u64>,
    /// A fingerprint of the set of thread ids `cpu_ns` summed, to tell whether two samples
    /// saw the same threads.
    pub tasks: u64,
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

/// Time on a CPU, nanoseconds: the first field of a `schedstat` text.
fn schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// Mixes a thread id into a fingerprint of a set of them (order does not matter: the
/// results are added).
fn task_mix(tid: u32) -> u64 {
    let x = u64::from(tid).wrapping_add(0x9e37_79b9_7f4a_7c15);
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The process's live threads' time on a CPU (nanoseconds) and the fingerprint of their ids.
fn task_cpu_ns(pid: u32) -> Option<(u64, u64)> {
    let mut ns = 0u64;
    let mut tasks = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Some(tid) = entry
            .ok()?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread that exited since the listing is left out: its time is gone with it, and
        // the fingerprint then differs from a sample that had it, which `CpuUse::between`
        // sees.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")) else {
            continue;
        };
        ns += schedstat_ns(&text)?;
        tasks = tasks.wrapping_add(task_mix(tid));
    }
    Some((ns, tasks))
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
    let (cpu_ns, tasks) = match task_cpu_ns(pid) {
        Some((ns, tasks)) => (Some(ns), tasks),
        None => (None, 0),
    };
    Ok(Sample {
        rss_kib,
        hwm_kib,
        anon_kib,
        cpu_ticks,
        cpu_ns,
        tasks,
        threads,
        at: Some(Instant::now()),
    })
}

/// A group of processes now, summed.
pub fn sample_all(pids: &[u32]) -> Result<Sample> {
    let mut total = Sample {
        cpu_ns: Some(0),
        at: Some(Instant::now()),
        ..Sample::default()
    };
    for &pid in pids {
        let s = sample(pid)?;
        total.rss_kib += s.rss_kib;
        total.hwm_kib += s.hwm_kib;
        total.anon_kib += s.anon_kib;
        total.cpu_ticks += s.cpu_ticks;
        total.cpu_ns = total.cpu_ns.zip(s.cpu_ns).map(|(a, b)| a + b);
        total.tasks = total.tasks.wrapping_add(s.tasks);
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
    /// Whether `cpu_secs` is the scheduler's nanoseconds (else clock ticks).
    pub precise: bool,
}

impl CpuUse {
    /// In nanoseconds when both samples have them for the same threads, else in clock
    /// ticks (see the module's comment).
    pub fn between(before: &Sample, after: &Sample, ticks_per_second: u64) -> CpuUse {
        let wall = match (before.at, after.at) {
            (Some(b), Some(a)) => a.saturating_duration_since(b).as_secs_f64(),
            _ => 0.0,
        };
        let (cpu_secs, precise) = match (before.cpu_ns, after.cpu_ns) {
            (Some(b), Some(a)) if before.tasks == after.tasks => {
                (a.saturating_sub(b) as f64 / 1e9, true)
            }
            _ => {
                let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks);
                (ticks as f64 / ticks_per_second.max(1) as f64, false)
            }
        };
        CpuUse {
            cpu_secs,
            wall_secs: wall,
            precise,
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

/// The machine's CPU time from the first line of `/proc/stat`, in clock ticks summed over
/// all CPUs: all of it, and the part the hypervisor spent elsewhere while this guest had work
/// (`steal`). A round whose latency tail jumps while the steal share rises is the host's
/// doing, not the target's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineCpu {
    pub total: u64,
    pub steal: u64,
}

impl MachineCpu {
    /// Now, from `/proc/stat`; an error where it cannot be read, as for [`sample`], rather
    /// than a share of 0 that would look measured.
    pub fn now() -> Result<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        MachineCpu::parse(&stat).context("no aggregate cpu line in /proc/stat")
    }

    /// The aggregate `cpu ` line: user nice system idle iowait irq softirq steal, then guest
    /// and guest_nice, which user and nice already count and so are left out of the total.
    fn parse(stat: &str) -> Option<MachineCpu> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        Some(MachineCpu {
            total: fields.iter().sum(),
            steal: *fields.get(7)?,
        })
    }

    /// The share of all CPU time between `self` and the later `after` that was stolen, in
    /// percent.
    pub fn steal_percent(&self, after: &MachineCpu) -> f64 {
        let total = after.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        after.steal.saturating_sub(self.steal) as f64 * 100.0 / total as f64
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
    fn cpu_time_in_nanoseconds_only_for_the_same_threads() {
        let at = Instant::now();
        let before = Sample {
            cpu_ticks: 100,
            cpu_ns: Some(1_000_000_000),
            tasks: task_mix(7).wrapping_add(task_mix(8)),
            at: Some(at),
            ..Sample::default()
        };
        let after = Sample {
            cpu_ticks: 103,
            cpu_ns: Some(1_034_500_000),
            tasks: task_mix(8).wrapping_add(task_mix(7)),
            at: Some(at + Duration::from_secs(1)),
            ..Sample::default()
        };
        let precise = CpuUse::between(&before, &after, 100);
        assert!(precise.precise && (precise.cpu_secs - 0.0345).abs() < 1e-12);
        // A thread left and another came: the ticks, which count the whole process.
        let changed = Sample {
            tasks: task_mix(8).wrapping_add(task_mix(9)),
            ..after
        };
        let ticks = CpuUse::between(&before, &changed, 100);
        assert!(!ticks.precise && (ticks.cpu_secs - 0.03).abs() < 1e-12);
        let unknown = Sample {
            cpu_ns: None,
            ..after
        };
        assert!(!CpuUse::between(&before, &unknown, 100).precise);
    }

    #[test]
    fn steal_is_the_eighth_field_of_the_cpu_line() {
        let before = MachineCpu::parse(
            "cpu  968399 0 228598 888262 4291 0 59081 15350 7 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n",
        )
        .unwrap();
        assert_eq!(before.steal, 15350);
        // guest (7) is already in user, so it is not summed again.
        assert_eq!(
            before.total,
            968399 + 228598 + 888262 + 4291 + 59081 + 15350
        );
        let after = MachineCpu {
            total: before.total + 1000,
            steal: before.steal + 25,
        };
        assert!((before.steal_percent(&after) - 2.5).abs() < 1e-9);
        assert_eq!(before.steal_percent(&before), 0.0);
        assert_eq!(MachineCpu::parse("intr 1 2 3\n"), None);
        assert_eq!(MachineCpu::parse("cpu  1 2 3\n"), None);
        assert!(MachineCpu::now().unwrap().total > 0);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
        assert!(s.cpu_ns.is_some_and(|ns| ns > 0));
        assert_eq!(schedstat_ns("220369904 11793260 371\n"), Some(220_369_904));
        let cpu = CpuUse {
            cpu_secs: 0.5,
            wall_secs: 10.0,
            precise: true,
        };
        assert!((cpu.cores() - 0.05).abs() < 1e-9);
        assert!((cpu.ms_per_1k(10_000) - 50.0).abs() < 1e-9);
    }
}
