//! The `turns` targets: direct, the proxy and nginx over HTTP/1.1 (`turns`), h2c
//! (`turns-h2`) or gRPC (`turns-grpc`), all three up at once and measured in turns
//! ([`switchboard_loadtest::turns`]) once per worker count, so that the machine's slow spells
//! fall on all three alike; and their tables. At the fixed rate a bare TCP relay
//! ([`switchboard_loadtest::relay`]) takes turns too: what it adds at p99 over direct is the
//! floor of one more loopback hop, which no proxy can go below on this machine. It relays
//! bytes, so h2c and gRPC pass through it as they are.
//!
//! The other targets run one after another, each in its own ten seconds, and on a shared
//! VM those ten seconds differ from one target to the next by more than the proxy and nginx
//! differ. Here the fixed rate moves to the next target every 100 ms and the closed loop every
//! 500 ms, round and round, until each target has had its warm-up and its recorded window of
//! the usual length.

use std::time::Duration;

use anyhow::{Result, anyhow};
use switchboard_loadtest::load::{Outcome, Protocol, Target};
use switchboard_loadtest::nginx::Nginx;
use switchboard_loadtest::procfs::{self, CpuUse, MachineCpu};
use switchboard_loadtest::proxy::ProxyProcess;
use switchboard_loadtest::relay::RelayProcess;
use switchboard_loadtest::{load, turns};

use super::{BackendProcess, Config, HOST, ProxyEnv, Round, ms, proxy_options, report, target};

/// How long a target has the fixed-rate load before it moves on.
pub(super) const FIXED_TURN: Duration = Duration::from_millis(100);
/// How long a target has the closed loop before it moves on.
pub(super) const SATURATION_TURN: Duration = Duration::from_millis(500);

/// One round of a `turns` target with one worker count.
pub struct TurnsRun {
    protocol: Protocol,
    round: usize,
    workers: usize,
    /// Direct, the proxy, nginx and the relay, in that order.
    fixed: Vec<Outcome>,
    /// Direct, the proxy and nginx.
    saturation: Vec<Outcome>,
    /// CPU-ms per 1,000 requests of the proxy and of nginx (master and workers), at the
    /// fixed rate and at saturation, each over its own turns' requests.
    cpu_fixed: [f64; 2],
    cpu_saturation: [f64; 2],
    /// The share of the machine's CPU time stolen by the hypervisor, percent, at the fixed
    /// rate and at saturation.
    steal: [f64; 2],
}

/// Runs a `turns` target over `protocol` once per worker count of `cfg`.
pub async fn run(
    cfg: &Config,
    env: &ProxyEnv,
    backend: &BackendProcess,
    ticks: u64,
    round: Round,
    protocol: Protocol,
) -> Result<Vec<TurnsRun>> {
    let mut runs = Vec::new();
    for &workers in &cfg.workers {
        eprintln!(
            "==> turns, {} ({workers} worker{}): direct, proxy, nginx and the relay in turns, \
             {} rps, then direct, proxy and nginx at saturation",
            protocol.label(),
            super::plural(workers),
            cfg.fixed.rate
        );
        // First: it is killed when dropped, so an error starting the others stops it too.
        let mut relay = RelayProcess::start(backend.addr).await?;
        let mut p = ProxyProcess::start(
            &proxy_options(cfg, env, workers, false),
            Duration::from_secs(60),
        )
        .await?;
        let mut n = match Nginx::start(backend.addr, workers, protocol).await {
            Ok(n) => n,
            Err(e) => {
                p.stop().await;
                return Err(e);
            }
        };
        let proxy_addr = std::net::SocketAddr::from(([127, 0, 0, 1], env.gateway.port));
        let targets = [
            target(backend.addr, protocol, HOST.into(), cfg),
            target(proxy_addr, protocol, env.gateway.host(protocol), cfg),
            target(n.addr, protocol, HOST.into(), cfg),
            target(relay.addr, protocol, HOST.into(), cfg),
        ];
        // CPU: the proxy (serving target 1) and nginx's master and workers (target 2); the
        // relay, last, is not saturated.
        let nginx_pids = n.pids();
        let cpu = [(1, &[p.pid][..]), (2, &nginx_pids[..])];
        let measured = measure(cfg, &targets, 3, cpu, ticks).await;
        let alive = p.check_alive();
        let log = n.log();
        p.stop().await;
        n.stop().await;
        relay.stop().await;
        let (fixed, saturation, cpu_fixed, cpu_saturation, steal) = match (measured, alive) {
            (Ok(m), Ok(())) => m,
            (Err(e), _) | (Ok(_), Err(e)) => {
                return Err(e.context(format!(
                    "the proxy's log:\n{}\nnginx's log:\n{log}",
                    p.log_tail(40)
                )));
            }
        };
        runs.push(TurnsRun {
            protocol,
            round: round.this,
            workers,
            fixed,
            saturation,
            cpu_fixed,
            cpu_saturation,
            steal,
        });
    }
    Ok(runs)
}

/// Fixed-rate outcomes, saturation outcomes, the two groups' CPU-ms per 1,000 requests at
/// each, and the steal share at each.
pub(super) type Figures = (Vec<Outcome>, Vec<Outcome>, [f64; 2], [f64; 2], [f64; 2]);

/// A probe through each target, then the fixed rate in turns for all of `targets` and the
/// closed loop for the first `saturated` (here the relay, last, is there for its latency),
/// with the CPU time of two groups of processes and the machine's stolen time sampled around
/// each. `cpu` gives each group as (the index in `targets` of the target it serves, its
/// pids): here the proxy and nginx; the mesh's turns use it for its two sidecar pairs.
pub(super) async fn measure(
    cfg: &Config,
    targets: &[Target],
    saturated: usize,
    cpu: [(usize, &[u32]); 2],
    ticks: u64,
) -> Result<Figures> {
    // Let start-up settle (xDS updates, nginx's workers) first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for t in targets {
        load::probe(t)
            .await
            .map_err(|f| anyhow!("turns: a probe request to {} failed: {f:?}", t.addr))?;
    }
    // The two groups' CPU, and the machine's for its steal share.
    let sample = || -> Result<(Vec<procfs::Sample>, MachineCpu)> {
        let processes: Result<Vec<_>> = cpu.iter().map(|(_, p)| procfs::sample_all(p)).collect();
        Ok((processes?, MachineCpu::now()?))
    };
    // CPU-ms per 1,000 of each group's own requests (errors included, as elsewhere).
    let per_1k = |before: &[procfs::Sample], after: &[procfs::Sample], o: &[Outcome]| {
        [0, 1].map(|i| {
            let served = &o[cpu[i].0];
            let requests = served.ok + served.errors.total();
            CpuUse::between(&before[i], &after[i], ticks).ms_per_1k(requests)
        })
    };
    let (before, machine_before) = sample()?;
    let fixed = turns::fixed_rate(targets, cfg.fixed, FIXED_TURN).await?;
    let (between, machine_between) = sample()?;
    let saturation = turns::saturation(
        &targets[..saturated],
        super::saturation_shape(cfg, targets[0].protocol),
        SATURATION_TURN,
    )
    .await?;
    let (after, machine_after) = sample()?;
    let cpu_fixed = per_1k(&before, &between, &fixed);
    let cpu_saturation = per_1k(&between, &after, &saturation);
    let steal = [
        machine_before.steal_percent(&machine_between),
        machine_between.steal_percent(&machine_after),
    ];
    Ok((fixed, saturation, cpu_fixed, cpu_saturation, steal))
}

/// The `turns` table: per round and worker count, p50/p99 at the fixed rate of each target,
/// what the proxy, nginx and the relay add at p99 over direct, saturation and CPU, proxy
/// against nginx.
pub fn report(cfg: &Config, runs: &[TurnsRun]) {
    for protocol in Protocol::ALL {
        let of: Vec<&TurnsRun> = runs.iter().filter(|r| r.protocol == protocol).collect();
        if !of.is_empty() {
            table(cfg, protocol, &of);
        }
    }
}

/// One protocol's section of the report.
fn table(cfg: &Config, protocol: Protocol, runs: &[&TurnsRun]) {
    let rate = cfg.fixed.rate;
    let lanes = match protocol {
        Protocol::Http1 => format!("{} connections", cfg.saturation.connections),
        _ => format!(
            "{} streams over {} connections",
            super::saturation_shape(cfg, protocol).connections,
            cfg.h2_connections
        ),
    };
    let name = super::Kind::Turns(protocol).name();
    println!(
        "\n## In turns: direct, proxy and nginx up at once ({})\n",
        protocol.label()
    );
    println!(
        "The `{name}` target: the three take turns at the load, {} ms at a time at {rate} rps \
         and {} ms at a time in the closed loop ({lanes}), until each has had {} s \
         recorded; so they share the machine's slow spells, where the rows above ran one \
         after another. At {rate} rps a bare TCP relay (a blocking thread per direction, \
         nothing parsed) takes turns as well: what it adds over direct is the floor of one \
         more hop on this machine. CPU: the proxy's process and nginx's master and workers, \
         over the whole phase, per 1,000 of their own requests (they idle during the others' \
         turns). Steal: the share of the machine's CPU time that the hypervisor spent elsewhere \
         while this guest had work, during the phase (`/proc/stat`).\n",
        FIXED_TURN.as_millis(),
        SATURATION_TURN.as_millis(),
        cfg.fixed.duration.as_secs(),
    );
    println!(
        "| round | workers | p50 / p99 @ {rate} rps, ms: direct | proxy | nginx | relay | p99 − direct, ms: proxy / nginx / relay | saturation rps: direct | proxy | nginx | proxy ÷ nginx | CPU-ms / 1k @ {rate} rps: proxy / nginx | ÷ | steal %: {rate} rps / saturation | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &r in runs {
        let (d, p, n, relay) = (&r.fixed[0], &r.fixed[1], &r.fixed[2], &r.fixed[3]);
        let errors = errors(r.fixed.iter().chain(&r.saturation));
        println!(
            "| {} | {} | {} | {} | {} | {} | {:+.3} / {:+.3} / {:+.3} | {:.0} | {:.0} | {:.0} | {} | {:.1} / {:.1} | {} | {:.1} / {:.1} | {errors} |",
            r.round,
            r.workers,
            pair(d),
            pair(p),
            pair(n),
            pair(relay),
            p.ms(99.0) - d.ms(99.0),
            n.ms(99.0) - d.ms(99.0),
            relay.ms(99.0) - d.ms(99.0),
            r.saturation[0].rps(),
            r.saturation[1].rps(),
            r.saturation[2].rps(),
            report::ratio(r.saturation[1].rps(), r.saturation[2].rps()),
            r.cpu_fixed[0],
            r.cpu_fixed[1],
            report::ratio(r.cpu_fixed[0], r.cpu_fixed[1]),
            r.steal[0],
            r.steal[1],
        );
    }
    println!(
        "\nAt saturation, CPU-ms / 1k: {}.",
        runs.iter()
            .map(|r| format!(
                "round {} with {} worker{}: proxy {:.1}, nginx {:.1} ({})",
                r.round,
                r.workers,
                super::plural(r.workers),
                r.cpu_saturation[0],
                r.cpu_saturation[1],
                report::ratio(r.cpu_saturation[0], r.cpu_saturation[1])
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if cfg.rounds > 1 {
        medians(cfg, runs);
    }
}

/// Per worker count, the median over the rounds of what the table compares, each round's
/// figure in brackets.
fn medians(cfg: &Config, runs: &[&TurnsRun]) {
    let rate = cfg.fixed.rate;
    println!(
        "\nIn turns, median of the {} rounds (each round's figure in brackets):\n",
        cfg.rounds
    );
    println!(
        "| workers | p99 @ {rate} rps − direct, ms: proxy | nginx | relay | saturation rps, proxy ÷ nginx | CPU-ms / 1k @ {rate} rps, proxy ÷ nginx | at saturation | steal % @ {rate} rps |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &w in &cfg.workers {
        let of: Vec<&TurnsRun> = runs.iter().copied().filter(|r| r.workers == w).collect();
        let figure = |f: &dyn Fn(&TurnsRun) -> f64| of.iter().map(|r| f(r)).collect::<Vec<_>>();
        let over = |i: usize| figure(&|r| r.fixed[i].ms(99.0) - r.fixed[0].ms(99.0));
        let divided = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let times = |v: f64| format!("{v:.2}×");
        let plus = |v: f64| format!("{v:+.3}");
        println!(
            "| {w} | {} | {} | {} | {} | {} | {} | {} |",
            report::spread(&over(1), plus),
            report::spread(&over(2), plus),
            report::spread(&over(3), plus),
            report::spread(
                &figure(&|r| divided(r.saturation[1].rps(), r.saturation[2].rps())),
                times
            ),
            report::spread(&figure(&|r| divided(r.cpu_fixed[0], r.cpu_fixed[1])), times),
            report::spread(
                &figure(&|r| divided(r.cpu_saturation[0], r.cpu_saturation[1])),
                times
            ),
            report::spread(&figure(&|r| r.steal[0]), |v| format!("{v:.1}")),
        );
    }
}

/// `p50 / p99` of `o` at the fixed rate, in ms: a cell of the turns' tables.
pub(super) fn pair(o: &Outcome) -> String {
    format!("{} / {}", ms(o.ms(50.0)), ms(o.ms(99.0)))
}

/// Errors over `outcomes`, all phases and targets: a cell of the turns' tables.
pub(super) fn errors<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> u64 {
    outcomes.map(|o| o.errors.total()).sum()
}
