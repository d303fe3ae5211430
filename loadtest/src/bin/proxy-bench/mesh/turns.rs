//! The mesh's two pairs in turns: the plaintext pair and the mTLS pair up at once, the load
//! moving from one to the other ([`switchboard_loadtest::turns`]), `rounds` times per worker
//! count.
//!
//! Why: the pairs measured one after another moved by ±15% in CPU per request from run to
//! run on this VM, more than the changes to the mTLS path that were being measured
//! (loadtest/proxy-bench-log.md, twenty-first session). In turns both pairs meet the same
//! slow spells, as direct, the proxy and nginx do in the `turns` target.

use anyhow::{Result, anyhow};
use switchboard_loadtest::load::Outcome;
use switchboard_loadtest::mesh::SidecarPair;

use super::super::Config;
use super::super::turns::{FIXED_TURN, SATURATION_TURN, errors, pair};

/// One round of the pairs in turns.
pub struct PairTurns {
    /// Plaintext pair, mTLS pair.
    fixed: [Outcome; 2],
    saturation: [Outcome; 2],
    /// CPU-ms per 1,000 requests of each pair's two sidecars, over its own turns' requests.
    cpu_fixed: [f64; 2],
    cpu_saturation: [f64; 2],
    /// The machine's stolen share, percent, at the fixed rate and at saturation.
    steal: [f64; 2],
}

/// The fixed rate, then the closed loop, in turns between `pairs` (plaintext, mTLS), with
/// each pair's sidecars' CPU and the machine's steal sampled around each.
pub async fn measure(cfg: &Config, pairs: [&SidecarPair; 2], ticks: u64) -> Result<PairTurns> {
    let targets = pairs.map(|p| p.outbound.clone());
    let pids = pairs.map(|p| [p.client.pid, p.server.pid]);
    let cpu = [(0, &pids[0][..]), (1, &pids[1][..])];
    let (fixed, saturation, cpu_fixed, cpu_saturation, steal) =
        super::super::turns::measure(cfg, &targets, 2, cpu, ticks).await?;
    let two = |o: Vec<Outcome>| -> Result<[Outcome; 2]> {
        <[Outcome; 2]>::try_from(o).map_err(|o| anyhow!("expected 2 outcomes, got {}", o.len()))
    };
    Ok(PairTurns {
        fixed: two(fixed)?,
        saturation: two(saturation)?,
        cpu_fixed,
        cpu_saturation,
        steal,
    })
}

/// The table of one worker count's rounds, mTLS against plaintext.
pub fn report(cfg: &Config, rounds: &[PairTurns]) {
    if rounds.is_empty() {
        return;
    }
    let rate = cfg.fixed.rate;
    println!(
        "In turns: both pairs up at once, the load moving between them every {} ms at {rate} \
         rps and every {} ms in the closed loop, until each has had {} s recorded; CPU: each \
         pair's two sidecars over the whole phase, per 1,000 of their own requests.\n",
        FIXED_TURN.as_millis(),
        SATURATION_TURN.as_millis(),
        cfg.fixed.duration.as_secs(),
    );
    println!(
        "| round | p50 / p99 @ {rate} rps, ms: plaintext | mTLS | p99 added by mTLS, ms | CPU-ms / 1k @ {rate} rps: plaintext / mTLS | ÷ | saturation rps: plaintext / mTLS | ÷ | CPU-ms / 1k @ saturation: plaintext / mTLS | ÷ | steal %: {rate} rps / saturation | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}×", a / b)
        } else {
            "–".into()
        }
    };
    for (i, r) in rounds.iter().enumerate() {
        let [plain, mtls] = &r.fixed;
        let errors = errors(r.fixed.iter().chain(&r.saturation));
        let [sat_plain, sat_mtls] = [r.saturation[0].rps(), r.saturation[1].rps()];
        println!(
            "| {} | {} | {} | {:+.3} | {:.1} / {:.1} | {} | {sat_plain:.0} / {sat_mtls:.0} | {} | {:.1} / {:.1} | {} | {:.1} / {:.1} | {errors} |",
            i + 1,
            pair(plain),
            pair(mtls),
            mtls.ms(99.0) - plain.ms(99.0),
            r.cpu_fixed[0],
            r.cpu_fixed[1],
            ratio(r.cpu_fixed[1], r.cpu_fixed[0]),
            ratio(sat_mtls, sat_plain),
            r.cpu_saturation[0],
            r.cpu_saturation[1],
            ratio(r.cpu_saturation[1], r.cpu_saturation[0]),
            r.steal[0],
            r.steal[1],
        );
    }
    println!();
}
