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
//! Run with `scripts/bench`, or after `cargo build --release -p switchboard`:
//! `cargo run --release -p switchboard-loadtest --bin xds-convergence`.
//!
//! The load generator shares the machine with the control plane: on a small machine its
//! 1,000 client tasks compete with the server for CPU, which inflates the figures.
//!
//! Here: the run (setup, convergence, rounds, memory, report). `scenario`: the mesh's names
//! and its setup through REST; `client`: one ADS client; `config`: the `LOADTEST_*` settings;
//! `metrics`: the server's xDS metrics, summed.

mod client;
mod config;
mod metrics;
mod scenario;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use switchboard_loadtest::{ControlPlane, Memory, Options, Rest, Summary, mib, ms};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Endpoint;

use client::{Event, run_client};
use config::Config;
use metrics::metrics_summary;
use scenario::{ADMIN_TOKEN, SHARED, SHARED_HOST, mesh_path, service, setup, shared_route};

struct RoundRow {
    round: u32,
    put: Duration,
    got: usize,
    summary: Summary,
}

async fn run(cfg: &Config, cp: &mut ControlPlane) -> Result<()> {
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

    let started = Instant::now();
    let (endpoints, routes) = setup(&rest, cfg.services, cfg.endpoints).await?;
    println!(
        "setup: tenant, mesh, {} services, {endpoints} endpoints, {routes} routes through REST in {:.2} s",
        cfg.services,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = cp.memory()?;

    // Connect, open every stream, wait until each holds everything it subscribed to.
    let mut channels = Vec::with_capacity(cfg.channels);
    for _ in 0..cfg.channels {
        let channel = Endpoint::from_shared(cp.xds_url.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {}", cp.xds_url))?;
        channels.push(channel);
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut clients = JoinSet::new();
    let spawn = |clients: &mut JoinSet<()>, i: usize| {
        let listeners = BTreeSet::from([
            format!("{}:8080", service(i % cfg.services)),
            SHARED_HOST.to_owned(),
        ]);
        let channel = channels[i % channels.len()].clone();
        let events = events_tx.clone();
        clients.spawn(async move {
            if let Err(e) = run_client(i, channel, listeners, events.clone()).await {
                let _ = events.send(Event::Failed {
                    client: i,
                    error: format!("{e:#}"),
                });
            }
        });
    };
    // One stream first: its RSS (snapshot loaded, one stream) is what the others are
    // measured against, and what the server should come back to once they are closed.
    spawn(&mut clients, 0);
    let first_deadline = tokio::time::Instant::from_std(Instant::now() + cfg.converge_timeout);
    let first_after = wait_converged(&mut events, 1, first_deadline).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let one = cp.memory()?;
    let opened = Instant::now();
    for i in 1..cfg.streams {
        spawn(&mut clients, i);
    }
    drop(events_tx);
    let deadline = tokio::time::Instant::from_std(opened + cfg.converge_timeout);
    let mut per_stream = wait_converged(&mut events, cfg.streams - 1, deadline).await?;
    per_stream.extend(first_after);
    let all_converged = opened.elapsed();
    let open = Summary::of(&per_stream);
    println!(
        "{} streams opened and converged (LDS, RDS, CDS, EDS ACKed) in {:.2} s; per stream p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        cfg.streams,
        all_converged.as_secs_f64(),
        ms(open.p50),
        ms(open.p99),
        ms(open.max)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    cp.check_alive()?;
    let loaded = cp.memory()?;

    // Rounds: one route change each, seen by every client.
    println!();
    println!(
        "{:>5} {:>11} {:>7} {:>8} {:>8} {:>8} {:>8}",
        "round", "clients", "PUT ms", "min ms", "p50 ms", "p99 ms", "max ms"
    );
    let mut rows = Vec::new();
    let mut all = Vec::new();
    let mut late = 0usize;
    let rounds_started = Instant::now();
    for round in 1..=cfg.rounds {
        cp.check_alive()?;
        let mut seen = vec![false; cfg.streams];
        let mut latencies = Vec::with_capacity(cfg.streams);
        let body = shared_route(round);
        let path = format!("{}/routes/{SHARED}", mesh_path());
        let t0 = Instant::now();
        rest.put(&path, &body).await?;
        let put = t0.elapsed();
        let deadline = tokio::time::Instant::from_std(t0 + cfg.round_timeout);
        while latencies.len() < cfg.streams {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Saw {
                    client,
                    round: r,
                    acked,
                })) => {
                    if r == round && !seen[client] {
                        seen[client] = true;
                        latencies.push(acked.duration_since(t0));
                    } else {
                        late += 1;
                    }
                }
                Ok(Some(Event::Failed { client, error })) => {
                    bail!("round {round}: client n-{client}: {error}")
                }
                Ok(Some(Event::Converged { .. })) => {}
                Ok(None) => bail!("every client ended"),
                Err(_) => break,
            }
        }
        let row = RoundRow {
            round,
            put,
            got: latencies.len(),
            summary: Summary::of(&latencies),
        };
        println!(
            "{:>5} {:>11} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            row.round,
            format!("{}/{}", row.got, cfg.streams),
            ms(row.put),
            ms(row.summary.min),
            ms(row.summary.p50),
            ms(row.summary.p99),
            ms(row.summary.max)
        );
        all.extend(latencies);
        rows.push(row);
        // One change at a time: let the server settle (take in the last ACKs, write the
        // proxies' new status) before the next; or, with a steady rate, the next change
        // `interval` after this one (later if this round took longer).
        match cfg.interval {
            Some(interval) => tokio::time::sleep(interval.saturating_sub(t0.elapsed())).await,
            None => tokio::time::sleep(cfg.pause).await,
        }
    }
    let overall = Summary::of(&all);
    let expected = cfg.streams * cfg.rounds as usize;
    let puts = Summary::of(&rows.iter().map(|r| r.put).collect::<Vec<_>>());
    println!(
        "{:>5} {:>11} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        "all",
        format!("{}/{}", all.len(), expected),
        ms(puts.p50),
        ms(overall.min),
        ms(overall.p50),
        ms(overall.p99),
        ms(overall.max)
    );
    println!(
        "(per client: from just before the PUT to the client's ACK of the RouteConfiguration \
         carrying the change; PUT ms in the last row is the median, max {:.2} ms)",
        ms(puts.max)
    );
    println!(
        "write-to-ACK: p99 {:.1} ms over {} ACKs, {} changes in {:.1} s ({:.2} changes/s)",
        ms(overall.p99),
        all.len(),
        rows.len(),
        rounds_started.elapsed().as_secs_f64(),
        rows.len() as f64 / rounds_started.elapsed().as_secs_f64().max(1e-9)
    );

    cp.check_alive()?;
    let after_rounds = cp.memory()?;
    let metrics = rest
        .get_text(&format!("{}/metrics", cp.admin_url))
        .await
        .unwrap_or_else(|e| format!("# {e:#}"));
    clients.abort_all();
    while clients.join_next().await.is_some() {}
    drop(channels);
    tokio::time::sleep(cfg.close_wait).await;
    let closed = cp.memory()?;

    println!();
    println!(
        "{:<34} {:>9} {:>15}",
        "control plane memory", "RSS MiB", "peak (VmHWM) MiB"
    );
    let mem_row = |what: &str, m: Memory| {
        println!(
            "{what:<34} {:>9.1} {:>15.1}",
            mib(m.rss_kib),
            mib(m.peak_kib)
        );
    };
    mem_row("0 streams (configuration written)", idle);
    mem_row("1 stream converged", one);
    mem_row(&format!("{} streams converged", cfg.streams), loaded);
    mem_row(&format!("after {} rounds", cfg.rounds), after_rounds);
    mem_row(
        &format!("streams closed (+{} s)", cfg.close_wait.as_secs()),
        closed,
    );
    let per_stream_kib = loaded.rss_kib.saturating_sub(one.rss_kib) as f64
        / cfg.streams.saturating_sub(1).max(1) as f64;
    println!(
        "memory: {per_stream_kib:.1} KiB of RSS per stream (beyond the first, whose RSS includes \
         the mesh's snapshot); {:.2}x the 1-stream RSS {} s after every stream closed",
        closed.rss_kib as f64 / one.rss_kib.max(1) as f64,
        cfg.close_wait.as_secs()
    );

    println!();
    for line in metrics_summary(&metrics) {
        println!("server: {line}");
    }
    let (problems, first) = cp.log_problems(5);
    println!("server: {problems} WARN/ERROR log lines");
    for line in first {
        println!("  {line}");
    }
    if late > 0 {
        println!("{late} route updates arrived after their round had ended, or twice");
    }
    if all.len() < expected {
        let missed: Vec<String> = rows
            .iter()
            .filter(|r| r.got < cfg.streams)
            .map(|r| format!("round {}: {} missing", r.round, cfg.streams - r.got))
            .collect();
        bail!(
            "{} of {expected} expected route updates did not arrive within {:?} of their PUT ({})",
            expected - all.len(),
            cfg.round_timeout,
            missed.join(", ")
        );
    }
    Ok(())
}

/// Waits until `count` more clients have converged; their times from their stream's opening.
async fn wait_converged(
    events: &mut mpsc::UnboundedReceiver<Event>,
    count: usize,
    deadline: tokio::time::Instant,
) -> Result<Vec<Duration>> {
    let mut after = Vec::with_capacity(count);
    while after.len() < count {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Converged { after: t })) => after.push(t),
            Ok(Some(Event::Failed { client, error })) => bail!("client n-{client}: {error}"),
            Ok(Some(Event::Saw { .. })) => {}
            Ok(None) => bail!("every client ended"),
            Err(_) => bail!("only {} of {count} streams converged in time", after.len()),
        }
    }
    Ok(after)
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
        let mut cp = ControlPlane::start(&options).await?;
        let outcome = tokio::select! {
            r = tokio::time::timeout(cfg.deadline, run(&cfg, &mut cp)) => {
                r.unwrap_or_else(|_| Err(anyhow!("the run took longer than {:?} (LOADTEST_TIMEOUT_SECS)", cfg.deadline)))
            }
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        };
        if outcome.is_err() {
            eprintln!("the control plane's log ends with:\n{}", cp.log_tail(20));
        }
        cp.stop().await;
        outcome
    })
}
