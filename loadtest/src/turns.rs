//! Several targets measured in turns: the same shapes as [`crate::load`], but the targets
//! are all up at once and the load moves from one to the next every `turn`, round and round,
//! until each has had its warm-up and its recorded window.
//!
//! On a shared machine, what a target is measured against changes from second to second:
//! another tenant's burst, the hypervisor's steal, a page-cache flush. Measured one after
//! the other, a target that meets a bad ten seconds looks worse than one that did not, by
//! more than the difference being measured (on a 2-core VM, `direct` alone moved between
//! 38k and 87k requests per second from round to round). In short turns, each target meets
//! the same weather, and a difference between them is the targets'.
//!
//! - [`fixed_rate`]: one pacer at `rate` for all the targets; request `i` goes to target
//!   `(i / per_turn) % n`, so each target gets the full rate during its turns and none
//!   between. Latency from the intended send time, as in [`crate::load::fixed_rate`].
//! - [`saturation`]: each target's lanes run the closed loop during that target's turns
//!   only and wait otherwise. A response counts towards the rate if it arrives within its
//!   target's turn; the requests still in flight when a turn ends finish in the next one
//!   (every target pays that hand-over alike).
//!
//! Bounded like the single-target shapes: every request is released by the end of the last
//! turn; one still queued a timeout after that is counted as timed out without being sent.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::load::{
    FixedRate, Outcome, Saturation, Tally, Ticket, connected_lanes, histogram, lanes, merge,
    micros, take_tickets,
};
use crate::target::{Failure, Target};

/// The turns of a run: `n` targets, each `warm` turns unrecorded, then `recorded` turns.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    n: usize,
    turn: Duration,
    warm: u32,
    recorded: u32,
}

impl Schedule {
    fn new(n: usize, turn: Duration, warmup: Duration, duration: Duration) -> Result<Schedule> {
        if n == 0 {
            bail!("no target to take turns");
        }
        if turn.is_zero() {
            bail!("a turn must last longer than zero");
        }
        let turns = |d: Duration| -> Result<u32> {
            let t = (d.as_secs_f64() / turn.as_secs_f64()).round();
            u32::try_from(t as u64).context("too many turns")
        };
        Ok(Schedule {
            n,
            turn,
            warm: turns(warmup)?,
            recorded: turns(duration)?.max(1),
        })
    }

    /// Turns in the whole run, all targets.
    fn total(&self) -> u32 {
        (self.warm + self.recorded) * u32::try_from(self.n).unwrap_or(u32::MAX)
    }

    /// The first recorded turn (all targets warmed before it).
    fn first_recorded(&self) -> u32 {
        self.warm * u32::try_from(self.n).unwrap_or(u32::MAX)
    }

    /// Whose turn `k` is.
    fn owner(&self, k: u32) -> usize {
        k as usize % self.n
    }

    /// Each target's recorded time.
    fn recorded_time(&self) -> Duration {
        self.turn * self.recorded
    }
}

/// The open loop in turns of `turn` (see the module doc), one [`Outcome`] per target in
/// `targets`' order. `shape.warmup` and `shape.duration` are each target's, rounded to
/// whole turns.
pub async fn fixed_rate(
    targets: &[Target],
    shape: FixedRate,
    turn: Duration,
) -> Result<Vec<Outcome>> {
    let schedule = Schedule::new(targets.len(), turn, shape.warmup, shape.duration)?;
    let rate = u64::from(shape.rate.max(1));
    let period = Duration::from_secs(1) / u32::try_from(rate)?;
    let per_turn = ((turn.as_secs_f64() * rate as f64).round() as u64).max(1);
    let total = u64::from(schedule.total()) * per_turn;
    let first_recorded = schedule.first_recorded();

    // Every target's connections open first, so no turn measures handshakes.
    let mut connected = Vec::new();
    for target in targets {
        connected.push(connected_lanes(target, shape.connections).await?);
    }
    let t0 = Instant::now() + Duration::from_millis(20);
    let run = turn * schedule.total();
    let cutoff = t0 + run + targets.iter().map(|t| t.timeout).max().unwrap_or_default();
    let mut senders = Vec::new();
    let mut running = Vec::new();
    for (target, (connections, shared)) in targets.iter().zip(connected) {
        let (tx, tasks) = take_tickets(connections, target, cutoff);
        senders.push(tx);
        running.push((tasks, shared));
    }

    let n = schedule.n;
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || -> Result<Vec<Histogram<u64>>> {
            let mut lag = (0..n).map(|_| histogram()).collect::<Result<Vec<_>>>()?;
            for index in 0..total {
                let k = u32::try_from(index / per_turn)?;
                let owner = schedule.owner(k);
                let intended = t0 + period * u32::try_from(index)?;
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                let recorded = k >= first_recorded;
                if recorded {
                    lag[owner].saturating_record(micros(
                        Instant::now().saturating_duration_since(intended),
                    ));
                }
                // A target whose tasks all failed has no receiver left: the others go on.
                let _ = senders[owner].send(Ticket { recorded, intended });
            }
            Ok(lag)
        })
        .context("starting the pacer thread")?;

    let mut tallies = Vec::new();
    for (tasks, shared) in running {
        tallies.push(merge(tasks, &shared).await?);
    }
    let lags = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))??;
    Ok(tallies
        .into_iter()
        .zip(lags)
        .map(|(tally, lag)| Outcome {
            latency: tally.latency,
            ok: tally.ok,
            errors: tally.errors,
            reconnects: tally.reconnects,
            elapsed: schedule.recorded_time(),
            pacer_lag: Some(lag),
        })
        .collect())
}

/// The closed loop in turns of `turn` (see the module doc), one [`Outcome`] per target in
/// `targets`' order; `connections` lanes per target.
pub async fn saturation(
    targets: &[Target],
    shape: Saturation,
    turn: Duration,
) -> Result<Vec<Outcome>> {
    let schedule = Schedule::new(targets.len(), turn, shape.warmup, shape.duration)?;
    let first_recorded = schedule.first_recorded();
    let total = schedule.total();
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + turn * total;
    // Which turn an instant is in; `total` once the run is over.
    let turn_at = move |t: Instant| -> u32 {
        let since = t.saturating_duration_since(start);
        let k = since.as_nanos() / turn.as_nanos().max(1);
        u32::try_from(k).unwrap_or(u32::MAX).min(total)
    };
    let mut running = Vec::new();
    for (me, target) in targets.iter().enumerate() {
        let (connections, shared) = lanes(target, shape.connections.max(1))?;
        let mut tasks = JoinSet::new();
        for mut conn in connections {
            let target = target.clone();
            tasks.spawn(async move {
                let mut tally = Tally::new()?;
                let mut in_turns = 0u64;
                loop {
                    let sent = Instant::now();
                    let k = turn_at(sent);
                    if k >= total {
                        break;
                    }
                    if schedule.owner(k) != me {
                        // Wait for this target's next turn.
                        let wait = (me + schedule.n - schedule.owner(k)) % schedule.n;
                        let next = k + u32::try_from(wait).unwrap_or(0);
                        tokio::time::sleep_until((start + turn * next).into()).await;
                        continue;
                    }
                    let result = conn.request(&target).await;
                    let done = Instant::now();
                    let refused = result == Err(Failure::Connect);
                    if k >= first_recorded {
                        let ok = result.is_ok();
                        tally.record(result, done - sent);
                        if ok && turn_at(done) == k {
                            in_turns += 1;
                        }
                    }
                    if refused {
                        // Do not spin on a target that refuses connections.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                tally.ok = in_turns;
                tally.reconnects = conn.reconnects();
                Ok(tally)
            });
        }
        running.push((tasks, shared));
    }
    tokio::time::sleep_until(end.into()).await;
    let mut outcomes = Vec::new();
    for (tasks, shared) in running {
        let tally = merge(tasks, &shared).await?;
        outcomes.push(Outcome {
            latency: tally.latency,
            ok: tally.ok,
            errors: tally.errors,
            reconnects: tally.reconnects,
            elapsed: schedule.recorded_time(),
            pacer_lag: None,
        });
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_rotate_and_round_to_whole_turns() -> Result<()> {
        let s = Schedule::new(
            3,
            Duration::from_millis(100),
            Duration::from_millis(1000),
            Duration::from_millis(6040),
        )?;
        assert_eq!((s.warm, s.recorded), (10, 60));
        assert_eq!(s.total(), 210);
        assert_eq!(s.first_recorded(), 30);
        assert_eq!((0..4).map(|k| s.owner(k)).collect::<Vec<_>>(), [0, 1, 2, 0]);
        assert_eq!(s.recorded_time(), Duration::from_secs(6));
        Ok(())
    }

    #[test]
    fn no_targets_or_empty_turns_are_refused() {
        let d = Duration::from_secs(1);
        assert!(Schedule::new(0, d, d, d).is_err());
        assert!(Schedule::new(2, Duration::ZERO, d, d).is_err());
    }
}
