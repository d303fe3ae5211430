//! The restart storm: with every stream converged, the control plane is killed (SIGKILL) and
//! started again on the same ports and data; every client reconnects with backoff and
//! jitter. Measures the time until every stream holds the current configuration again, with
//! the new process's RSS and CPU time sampled every 500 ms.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use switchboard_loadtest::procfs::{self, Sample};
use switchboard_loadtest::{ControlPlane, Summary, mib, ms};
use tokio::sync::{mpsc, oneshot};

use crate::client::Event;

/// How often the new process is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// What the storm measured, times from the SIGKILL.
pub struct Storm {
    /// Until `/readyz` answered 200.
    pub ready: Duration,
    /// Until the last stream had converged again.
    pub converged: Duration,
    /// Per stream, until it had converged again.
    pub per_stream: Summary,
    pub peak_rss_kib: u64,
    /// CPU time of the new process until the last sample.
    pub cpu_secs: f64,
}

/// Samples `pid` every 500 ms until told to stop; times from `from`.
fn sampler(
    pid: u32,
    from: Instant,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Vec<(Duration, Sample)>>,
) {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        // A late tick moves the next ones, rather than two samples at once.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Ok(s) = procfs::sample(pid) {
                        out.push((from.elapsed(), s));
                    }
                }
                _ = &mut stopped => break,
            }
        }
        out
    });
    (stop, task)
}

/// Kills and restarts `cp` with `streams` clients converged at `round`, and waits (at most
/// `timeout`) until each has reconnected and converged again at that round.
pub async fn storm(
    cp: &mut ControlPlane,
    events: &mut mpsc::UnboundedReceiver<Event>,
    streams: usize,
    round: u32,
    timeout: Duration,
) -> Result<Storm> {
    let killed = cp.kill_and_restart().await?;
    let (stop, samples) = sampler(cp.pid(), killed);
    let deadline = tokio::time::Instant::from_std(killed + timeout);
    let ready = match tokio::time::timeout_at(deadline, cp.wait_ready(timeout)).await {
        Ok(Ok(())) => killed.elapsed(),
        Ok(Err(e)) => return Err(e.context("the restarted control plane")),
        Err(_) => bail!("the restarted control plane was not ready within {timeout:?}"),
    };
    let mut seen = vec![false; streams];
    let mut per_stream = Vec::with_capacity(streams);
    while per_stream.len() < streams {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Converged {
                client,
                at,
                round: r,
                ..
            })) => {
                if r != Some(round) {
                    bail!("client n-{client} reconverged at round {r:?}, not {round}");
                }
                if client < streams && !seen[client] && at >= killed {
                    seen[client] = true;
                    per_stream.push(at.duration_since(killed));
                }
            }
            Ok(Some(Event::Failed { client, error })) => {
                bail!("restart: client n-{client}: {error}")
            }
            Ok(Some(Event::Saw { .. })) => {}
            Ok(None) => bail!("every client ended"),
            Err(_) => bail!(
                "restart: only {} of {streams} streams reconverged within {timeout:?} of the SIGKILL",
                per_stream.len()
            ),
        }
    }
    let converged = killed.elapsed();
    // One more sample after the last convergence.
    tokio::time::sleep(SAMPLE_EVERY).await;
    let _ = stop.send(());
    let samples = samples.await.unwrap_or_default();
    cp.check_alive()?;
    let tps = procfs::clock_ticks_per_second().max(1);
    let peak_rss_kib = samples.iter().map(|(_, s)| s.rss_kib).max().unwrap_or(0);
    let cpu_secs = samples
        .last()
        .map_or(0.0, |(_, s)| s.cpu_ticks as f64 / tps as f64);
    let storm = Storm {
        ready,
        converged,
        per_stream: Summary::of(&per_stream),
        peak_rss_kib,
        cpu_secs,
    };
    println!(
        "restart storm: SIGKILL with {streams} streams converged at round {round}; ready (/readyz) \
         after {:.2} s; every stream reconnected and converged again after {:.2} s (per stream \
         p50 {:.0} ms, p99 {:.0} ms)",
        ready.as_secs_f64(),
        converged.as_secs_f64(),
        ms(storm.per_stream.p50),
        ms(storm.per_stream.p99),
    );
    println!(
        "control plane during the storm (new process, every {} ms): peak RSS {:.1} MiB, CPU {:.2} s \
         ({:.2} cores over {:.1} s)",
        SAMPLE_EVERY.as_millis(),
        mib(peak_rss_kib),
        cpu_secs,
        cpu_secs
            / samples
                .last()
                .map_or(1.0, |(t, _)| t.as_secs_f64().max(1e-3)),
        samples.last().map_or(0.0, |(t, _)| t.as_secs_f64()),
    );
    println!("{:>7} {:>9} {:>7}", "t s", "RSS MiB", "CPU %");
    // At most 30 rows: every k-th sample, and the last.
    let k = samples.len().div_ceil(30).max(1);
    let mut previous: Option<&(Duration, Sample)> = None;
    for (i, sample) in samples.iter().enumerate() {
        if i % k == 0 || i + 1 == samples.len() {
            let (t, s) = sample;
            let (t0, ticks0) = previous.map_or((Duration::ZERO, 0), |(t, s)| (*t, s.cpu_ticks));
            let span = t.saturating_sub(t0).as_secs_f64().max(1e-3);
            let cpu = s.cpu_ticks.saturating_sub(ticks0) as f64 / tps as f64 / span * 100.0;
            println!(
                "{:>7.1} {:>9.1} {:>7.0}",
                t.as_secs_f64(),
                mib(s.rss_kib),
                cpu
            );
            previous = Some(sample);
        }
    }
    Ok(storm)
}
