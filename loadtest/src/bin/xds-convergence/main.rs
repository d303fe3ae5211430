//! xDS convergence under load: how long a route change takes to reach many proxyless gRPC
//! clients, and what they cost the control plane in memory.
//!
//! Not a test: a bounded workload that prints figures. It starts the real `switchboard`
//! binary (`SWITCHBOARD_BIN`, default `target/release/switchboard`) on free loopback ports,
//! on SQLite, or on a fresh database of the PostgreSQL server named by
//! `SWITCHBOARD_TEST_DATABASE_URL` when that is set (`scripts/bench` sets it), then:
//!
//! 1. Setup through REST, as the platform admin: tenant `t`, mesh `m` with
//!    `allowUnauthenticatedXds`, services `svc-0`..`svc-{S-1}` (gRPC, port 8080) with
//!    `LOADTEST_ENDPOINTS` endpoints each over 3 zones, a route per service (host name
//!    `svc-i:8080`: a header-match rule, then 90/10 weights to `svc-i` and `svc-{i+1}`, with a
//!    timeout and retries), and the route `shared` (host name `shared:8080`, weights to
//!    `svc-0` and `svc-1`).
//! 2. `LOADTEST_STREAMS` ADS streams over `LOADTEST_CHANNELS` HTTP/2 connections, as
//!    proxyless nodes `tenants/t/meshes/m/nodes/n-{i}`. Each subscribes to two listeners,
//!    `svc-{i % S}:8080` and `shared:8080`, and follows them as gRPC's xDS client does: the
//!    route configurations the listeners name (RDS), the clusters those routes name (CDS),
//!    the load assignments of those clusters (EDS), ACKing every response with its
//!    `version_info` and `response_nonce`. A stream has converged once it holds every
//!    resource it subscribed to.
//! 3. `LOADTEST_ROUNDS` rounds: a PUT of route `shared` with new weights (the weight of
//!    `svc-0` encodes the round), `t0` taken just before the request; every client notes
//!    when it has ACKed the RouteConfiguration carrying that round. Per round and overall:
//!    p50, p99 and max of (ACK − t0) over all clients, which all see the change.
//! 4. The control plane's memory (VmRSS and VmHWM from `/proc/<pid>/status`): with the
//!    configuration loaded and no stream, with one stream converged (opened alone, before
//!    the others: the mesh's snapshot is loaded with it), with every stream converged, after
//!    the rounds, and `LOADTEST_CLOSE_WAIT_SECS` (10) after every stream closed. It prints
//!    the RSS per stream beyond the first and the RSS after close as a multiple of the
//!    1-stream RSS. Also the server's own xDS metrics and any warnings it logged.
//!
//! Bounds: setup requests time out after 30 s, convergence after
//! `LOADTEST_CONVERGE_TIMEOUT_SECS` (120), each round after `LOADTEST_ROUND_TIMEOUT_SECS`
//! (30), the whole run after `LOADTEST_TIMEOUT_SECS` (900). The child is killed on every exit
//! path (and on Ctrl-C). The run fails (non-zero exit) when a stream ends, a client is sent
//! something it cannot follow, or a client misses a round.
//!
//! Counts: `LOADTEST_STREAMS` (1000), `LOADTEST_CHANNELS` (10), `LOADTEST_SERVICES` (100),
//! `LOADTEST_ENDPOINTS` (3 per service), `LOADTEST_ROUNDS` (20), `LOADTEST_PAUSE_MS` (1000,
//! between the end of a round and the next PUT; the server writes the proxies' changed status
//! to the store every 250 ms, and a PUT waits for that write); `LOADTEST_INTERVAL_MS`, when
//! set, replaces the pause with a steady rate: one PUT every interval (a round that takes
//! longer delays the next; the run prints the rate achieved). `LOADTEST_SERVER_LOG` is the
//! child's log filter (`warn`). The load generator raises its open-files limit to the hard
//! limit; the server needs one descriptor per connection (`LOADTEST_CHANNELS`), not per
//! stream.
//!
//! 5. `LOADTEST_RESTART=1`: after the rounds, the restart storm. The control plane is killed
//!    (SIGKILL) and started again on the same ports and database; the clients (which then
//!    reconnect when their stream ends: after 1 s, times 1.6 per attempt, at most 10 s, each
//!    ±20 %, at most 20 attempts in a row) open new streams afresh. It prints the time until
//!    `/readyz` answers and until every stream holds the current configuration again (bound:
//!    `LOADTEST_RESTART_TIMEOUT_SECS`, 120), with the new process's RSS and CPU time
//!    (utime + stime) sampled every 500 ms: the peak and a short series.
//! 6. `LOADTEST_COMPARE=go-control-plane`: a mirror client (one more stream, subscribed to
//!    every listener) records what switchboard served at setup and after each round; once
//!    switchboard is stopped, go-control-plane's server (`loadtest/go-control-plane`, built
//!    with the machine's Go into `target/gocp-loadtest/`) runs the same scenario with the same
//!    counts, handed each recorded configuration in place of the PUT, and the run ends with a
//!    table of both: RSS per stream, convergence p50/p99, and their ratios.
//!
//! Run with `scripts/bench`, or after `cargo build --release -p switchboard`:
//! `cargo run --release -p switchboard-loadtest --bin xds-convergence`.
//!
//! The load generator shares the machine with the control plane: on a small machine its
//! 1,000 client tasks compete with the server for CPU, which inflates the figures.
//!
//! Here: the servers one after the other, and the comparison. `run`: one run of the scenario
//! against one server; `restart`: the restart storm; `scenario`: the mesh's names and its setup
//! through REST; `client`: one ADS client; `config`: the `LOADTEST_*` settings; `metrics`: the
//! server's xDS metrics, summed.

mod client;
mod config;
mod metrics;
mod restart;
mod run;
mod scenario;

use std::time::Duration;

use anyhow::{Result, anyhow};
use switchboard_loadtest::gocp::GoControlPlane;
use switchboard_loadtest::{ControlPlane, Options, Rest, mib, ms};
use switchboard_xds_proto::Any;

use config::Config;
use run::{Figures, Server, run};
use scenario::ADMIN_TOKEN;

/// Switchboard's run; with `record`, also what it served at each round.
async fn switchboard(cfg: &Config, cp: &mut ControlPlane) -> Result<(Figures, Vec<Vec<Any>>)> {
    let rest = Rest::new(&cp.rest_url, ADMIN_TOKEN, Duration::from_secs(30))?;
    let spacing = match cfg.interval {
        Some(i) => format!("one every {} ms", i.as_millis()),
        None => format!("{} ms apart", cfg.pause.as_millis()),
    };
    println!(
        "xds-convergence: {} control plane (pid {}), {} ADS streams over {} HTTP/2 connections, \
         {} services, {} rounds {spacing}",
        cp.backend,
        cp.pid(),
        cfg.streams,
        cfg.channels,
        cfg.services,
        cfg.rounds,
    );
    run(cfg, Server::Switchboard { cp, rest }, cfg.compare).await
}

/// go-control-plane's run on `configs`.
async fn go_control_plane(cfg: &Config, configs: &[Vec<Any>]) -> Result<Figures> {
    let mut go = GoControlPlane::start().await?;
    println!();
    println!(
        "xds-convergence: go-control-plane (pid {}), the same {} ADS streams over {} HTTP/2 \
         connections, {} rounds",
        go.pid(),
        cfg.streams,
        cfg.channels,
        cfg.rounds
    );
    let outcome = run(
        cfg,
        Server::Go {
            go: &mut go,
            configs,
        },
        false,
    )
    .await;
    go.stop().await;
    outcome.map(|(figures, _)| figures)
}

/// The side-by-side table: each server's figures, and switchboard's as a multiple of
/// go-control-plane's.
fn compare(cfg: &Config, sb: &Figures, go: &Figures) {
    println!();
    println!(
        "side by side: {} streams over {} connections, {} rounds, same machine, one server after \
         the other",
        cfg.streams, cfg.channels, cfg.rounds
    );
    println!(
        "{:<18} {:>14} {:>12} {:>12} {:>13} {:>13}",
        "server", "RSS/stream KiB", "conv p50 ms", "conv p99 ms", "open p50 ms", "open p99 ms"
    );
    for f in [sb, go] {
        println!(
            "{:<18} {:>14.1} {:>12.2} {:>12.2} {:>13.1} {:>13.1}",
            f.server,
            f.per_stream_kib,
            ms(f.write_to_ack.p50),
            ms(f.write_to_ack.p99),
            ms(f.open.p50),
            ms(f.open.p99)
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "{:<18} {:>14.2} {:>12.2} {:>12.2} {:>13.2} {:>13.2}",
        "ratio (sb ÷ gocp)",
        ratio(sb.per_stream_kib, go.per_stream_kib),
        ratio(ms(sb.write_to_ack.p50), ms(go.write_to_ack.p50)),
        ratio(ms(sb.write_to_ack.p99), ms(go.write_to_ack.p99)),
        ratio(ms(sb.open.p50), ms(go.open.p50)),
        ratio(ms(sb.open.p99), ms(go.open.p99))
    );
    println!(
        "(conv: from just before the change (switchboard: the REST PUT, committed and translated; \
         go-control-plane: the hand-over of the whole configuration to SetSnapshot) to each \
         stream's ACK of the new RouteConfiguration; open: a stream's opening to holding LDS, RDS, \
         CDS and EDS)"
    );
}

/// `work`, failed at `deadline` (`LOADTEST_TIMEOUT_SECS`) or on Ctrl-C.
async fn bounded<T>(
    deadline: tokio::time::Instant,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = tokio::time::timeout_at(deadline, work) => {
            r.unwrap_or_else(|_| Err(anyhow!("the run took longer than LOADTEST_TIMEOUT_SECS")))
        }
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    }
}

async fn run_all(cfg: &Config, options: &Options) -> Result<()> {
    let deadline = tokio::time::Instant::now() + cfg.deadline;
    let mut cp = bounded(deadline, ControlPlane::start(options)).await?;
    // The child is stopped (and its database dropped) on every exit path.
    let outcome = bounded(deadline, switchboard(cfg, &mut cp)).await;
    if outcome.is_err() {
        eprintln!("the control plane's log ends with:\n{}", cp.log_tail(20));
    }
    cp.stop().await;
    let (sb, configs) = outcome?;
    if cfg.compare {
        let go = bounded(deadline, go_control_plane(cfg, &configs)).await?;
        compare(cfg, &sb, &go);
    }
    if let Some(s) = &sb.storm {
        println!(
            "restart: ready {:.2} s and all {} streams reconverged {:.2} s after the SIGKILL; \
             peak RSS {:.1} MiB, CPU {:.2} s during the storm",
            s.ready.as_secs_f64(),
            cfg.streams,
            s.converged.as_secs_f64(),
            mib(s.peak_rss_kib),
            s.cpu_secs
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    // `cargo run` passes nothing; any arguments are ignored.
    let cfg = Config::from_env()?;
    // Many connections need many descriptors: the soft limit goes up to the hard one.
    match switchboard_loadtest::raise_open_files() {
        Ok(n) => println!("open files limit: {n}"),
        Err(e) => eprintln!("could not raise the open files limit: {e}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let options = Options {
            admin_token: ADMIN_TOKEN.into(),
            log_level: cfg.server_log.clone(),
            ready_timeout: Duration::from_secs(60),
        };
        run_all(&cfg, &options).await
    })
}
