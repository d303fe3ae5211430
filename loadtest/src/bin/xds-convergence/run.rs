//! One run of the scenario against one server (switchboard, or go-control-plane fed what
//! switchboard served): streams opened until converged, rounds of changes measured to each
//! stream's ACK, the server's memory; and, for switchboard, the restart storm.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use switchboard_loadtest::gocp::GoControlPlane;
use switchboard_loadtest::{ControlPlane, Memory, Rest, Summary, mib, ms};
use switchboard_xds_proto::Any;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::client::{Event, Held, Mode, run_client};
use crate::config::Config;
use crate::metrics::{allocator_summary, metrics_summary};
use crate::restart::{Storm, storm};
use crate::scenario::{SHARED, SHARED_HOST, mesh_path, service, setup, shared_route};

/// The server under test.
pub enum Server<'a> {
    Switchboard {
        cp: &'a mut ControlPlane,
        rest: Rest,
    },
    /// go-control-plane, handed `configs[round]` (recorded from switchboard) for each round.
    Go {
        go: &'a mut GoControlPlane,
        configs: &'a [Vec<Any>],
    },
}

impl Server<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Server::Switchboard { .. } => "switchboard",
            Server::Go { .. } => "go-control-plane",
        }
    }

    fn xds_url(&self) -> String {
        match self {
            Server::Switchboard { cp, .. } => cp.xds_url.clone(),
            Server::Go { go, .. } => go.xds_url.clone(),
        }
    }

    fn memory(&self) -> Result<Memory> {
        match self {
            Server::Switchboard { cp, .. } => cp.memory(),
            Server::Go { go, .. } => go.memory(),
        }
    }

    /// The allocator's gauges from switchboard's `/metrics` (see [`allocator_summary`]).
    async fn allocator(&self) -> Option<String> {
        match self {
            Server::Switchboard { cp, rest } => rest
                .get_text(&format!("{}/metrics", cp.admin_url))
                .await
                .ok()
                .and_then(|text| allocator_summary(&text)),
            Server::Go { .. } => None,
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        match self {
            Server::Switchboard { cp, .. } => cp.check_alive(),
            Server::Go { go, .. } => go.check_alive(),
        }
    }

    /// Round `round`'s configuration: switchboard's through REST, go-control-plane's handed
    /// over whole.
    async fn change(&self, round: u32) -> Result<()> {
        match self {
            Server::Switchboard { rest, .. } => {
                let path = format!("{}/routes/{SHARED}", mesh_path());
                rest.put(&path, &shared_route(round)).await.map(drop)
            }
            Server::Go { go, configs } => {
                let config = configs
                    .get(round as usize)
                    .with_context(|| format!("no configuration recorded for round {round}"))?;
                go.set_snapshot(config.clone()).await
            }
        }
    }
}

/// What the comparison needs of a run.
pub struct Figures {
    pub server: &'static str,
    /// RSS per stream beyond the first, KiB.
    pub per_stream_kib: f64,
    /// Opening to convergence, per stream.
    pub open: Summary,
    /// Change to ACK, over every stream and round.
    pub write_to_ack: Summary,
    pub storm: Option<Storm>,
}

/// The streams of a run.
struct Streams {
    channels: Vec<Channel>,
    events_tx: Option<mpsc::UnboundedSender<Event>>,
    clients: JoinSet<()>,
    mode: Mode,
}

impl Streams {
    fn spawn(&mut self, i: usize, listeners: BTreeSet<String>, mode: Mode) {
        let channel = self.channels[i % self.channels.len()].clone();
        let Some(events) = self.events_tx.clone() else {
            return;
        };
        self.clients.spawn(async move {
            if let Err(e) = run_client(i, channel, listeners, events.clone(), mode).await {
                let _ = events.send(Event::Failed {
                    client: i,
                    error: format!("{e:#}"),
                });
            }
        });
    }

    fn spawn_client(&mut self, cfg: &Config, i: usize) {
        let listeners = BTreeSet::from([
            format!("{}:8080", service(i % cfg.services)),
            SHARED_HOST.to_owned(),
        ]);
        let mode = self.mode.clone();
        self.spawn(i, listeners, mode);
    }
}

/// Waits for the mirror's configuration at `round`.
async fn held_at(
    held: &mut mpsc::UnboundedReceiver<Held>,
    round: u32,
    timeout: Duration,
) -> Result<Vec<Any>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, held.recv()).await {
            Ok(Some((r, resources))) if r == round => return Ok(resources),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the mirror client ended"),
            Err(_) => bail!("the mirror client did not see round {round} within {timeout:?}"),
        }
    }
}

/// Runs the scenario against `server`. With `record`, a mirror client (one more stream,
/// subscribed to every listener) records what switchboard serves at each round: the
/// configurations returned, round 0 first.
pub async fn run(
    cfg: &Config,
    mut server: Server<'_>,
    record: bool,
) -> Result<(Figures, Vec<Vec<Any>>)> {
    let name = server.name();
    let started = Instant::now();
    match &server {
        Server::Switchboard { rest, .. } => {
            let (endpoints, routes) = setup(rest, cfg.services, cfg.endpoints).await?;
            println!(
                "setup: tenant, mesh, {} services, {endpoints} endpoints, {routes} routes through REST in {:.2} s",
                cfg.services,
                started.elapsed().as_secs_f64()
            );
        }
        Server::Go { go, configs } => {
            let first = configs.first().context("no configuration recorded")?;
            go.set_snapshot(first.clone()).await?;
            println!(
                "setup: switchboard's configuration ({} resources) handed to go-control-plane in {:.2} s",
                first.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.memory()?;

    let xds_url = server.xds_url();
    let mut channels = Vec::with_capacity(cfg.channels);
    for _ in 0..cfg.channels {
        let channel = Endpoint::from_shared(xds_url.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {xds_url}"))?;
        channels.push(channel);
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mode = Mode {
        reconnect: cfg.restart && matches!(server, Server::Switchboard { .. }),
        mirror: None,
    };
    let mut streams = Streams {
        channels,
        events_tx: Some(events_tx),
        clients: JoinSet::new(),
        mode: mode.clone(),
    };
    let mut configs = Vec::new();
    let mut held = None;
    if record {
        // The mirror: node n-{streams}, every listener, its own events (not counted).
        let (held_tx, mut held_rx) = mpsc::unbounded_channel();
        let (mirror_events, _) = mpsc::unbounded_channel();
        let listeners = (0..cfg.services)
            .map(|i| format!("{}:8080", service(i)))
            .chain([SHARED_HOST.to_owned()])
            .collect();
        let channel = streams.channels[0].clone();
        let mirror_mode = Mode {
            reconnect: mode.reconnect,
            mirror: Some(held_tx),
        };
        let n = cfg.streams;
        streams.clients.spawn(async move {
            let _ = run_client(n, channel, listeners, mirror_events, mirror_mode).await;
        });
        configs.push(held_at(&mut held_rx, 0, cfg.converge_timeout).await?);
        held = Some(held_rx);
    }
    // One stream first: its RSS (snapshot loaded, one stream) is what the others are
    // measured against, and what the server should come back to once they are closed.
    streams.spawn_client(cfg, 0);
    let first_deadline = tokio::time::Instant::from_std(Instant::now() + cfg.converge_timeout);
    let first_after = wait_converged(&mut events, 1, first_deadline).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let one = server.memory()?;
    let one_allocator = server.allocator().await;
    let opened = Instant::now();
    for i in 1..cfg.streams {
        streams.spawn_client(cfg, i);
    }
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
    server.check_alive()?;
    let loaded = server.memory()?;

    // Rounds: one change each, seen by every client.
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
        server.check_alive()?;
        let mut seen = vec![false; cfg.streams];
        let mut latencies = Vec::with_capacity(cfg.streams);
        let t0 = Instant::now();
        server.change(round).await?;
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
        if let Some(held) = &mut held {
            configs.push(held_at(held, round, cfg.round_timeout).await?);
        }
        let (got, summary) = (latencies.len(), Summary::of(&latencies));
        println!(
            "{:>5} {:>11} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            round,
            format!("{got}/{}", cfg.streams),
            ms(put),
            ms(summary.min),
            ms(summary.p50),
            ms(summary.p99),
            ms(summary.max)
        );
        all.extend(latencies);
        rows.push((round, put, got));
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
    let puts = Summary::of(&rows.iter().map(|r| r.1).collect::<Vec<_>>());
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
    let change = match server {
        Server::Switchboard { .. } => "the PUT",
        Server::Go { .. } => "the hand-over (PUT ms: the hand-over's)",
    };
    println!(
        "(per client: from just before {change} to the client's ACK of the RouteConfiguration \
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
    server.check_alive()?;
    let after_rounds = server.memory()?;

    let storm = match &mut server {
        Server::Switchboard { cp, .. } if cfg.restart => {
            println!();
            Some(
                storm(
                    cp,
                    &mut events,
                    cfg.streams,
                    cfg.rounds,
                    cfg.restart_timeout,
                )
                .await?,
            )
        }
        _ => None,
    };
    let metrics = match &server {
        Server::Switchboard { cp, rest } => Some(
            rest.get_text(&format!("{}/metrics", cp.admin_url))
                .await
                .unwrap_or_else(|e| format!("# {e:#}")),
        ),
        Server::Go { .. } => None,
    };
    streams.events_tx = None;
    streams.clients.abort_all();
    while streams.clients.join_next().await.is_some() {}
    drop(streams);
    tokio::time::sleep(cfg.close_wait).await;
    let closed = server.memory()?;
    let closed_allocator = server.allocator().await;

    println!();
    println!(
        "{:<34} {:>9} {:>15} {:>13}",
        format!("{name} memory"),
        "RSS MiB",
        "peak (VmHWM) MiB",
        "RssAnon MiB"
    );
    let mem_row = |what: &str, m: Memory| {
        println!(
            "{what:<34} {:>9.1} {:>15.1} {:>13.1}",
            mib(m.rss_kib),
            mib(m.peak_kib),
            mib(m.anon_kib)
        );
    };
    mem_row("0 streams (configuration written)", idle);
    let one_what = if record {
        "1 stream (+ mirror) converged"
    } else {
        "1 stream converged"
    };
    mem_row(one_what, one);
    mem_row(&format!("{} streams converged", cfg.streams), loaded);
    mem_row(&format!("after {} rounds", cfg.rounds), after_rounds);
    let restarted = if storm.is_some() { ", restarted" } else { "" };
    mem_row(
        &format!(
            "streams closed (+{} s{restarted})",
            cfg.close_wait.as_secs()
        ),
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
    println!(
        "memory: anonymous (RssAnon) {:.2}x the 1-stream's {} s after every stream closed; the \
         rest of the RSS is mostly program text paged in from the binary as the run executed it \
         ({:.1} MiB with 1 stream, {:.1} MiB after the close)",
        closed.anon_kib as f64 / one.anon_kib.max(1) as f64,
        cfg.close_wait.as_secs(),
        mib(one.rss_kib.saturating_sub(one.anon_kib)),
        mib(closed.rss_kib.saturating_sub(closed.anon_kib)),
    );

    if let (Some(one), Some(closed)) = (one_allocator, closed_allocator) {
        println!(
            "memory: the allocator's account with 1 stream: {one}; {} s after every stream \
             closed: {closed}",
            cfg.close_wait.as_secs()
        );
    }

    if let (Some(metrics), Server::Switchboard { cp, .. }) = (metrics, &server) {
        println!();
        for line in metrics_summary(&metrics) {
            println!("server: {line}");
        }
        let (problems, first) = cp.log_problems(5);
        println!("server: {problems} WARN/ERROR log lines");
        for line in first {
            println!("  {line}");
        }
    }
    if late > 0 {
        println!("{late} route updates arrived after their round had ended, or twice");
    }
    if all.len() < expected {
        let missed: Vec<String> = rows
            .iter()
            .filter(|r| r.2 < cfg.streams)
            .map(|r| format!("round {}: {} missing", r.0, cfg.streams - r.2))
            .collect();
        bail!(
            "{}: {} of {expected} expected route updates did not arrive within {:?} of their change ({})",
            name,
            expected - all.len(),
            cfg.round_timeout,
            missed.join(", ")
        );
    }
    let figures = Figures {
        server: name,
        per_stream_kib,
        open,
        write_to_ack: overall,
        storm,
    };
    Ok((figures, configs))
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
            Ok(Some(Event::Converged { after: t, .. })) => after.push(t),
            Ok(Some(Event::Failed { client, error })) => bail!("client n-{client}: {error}"),
            Ok(Some(Event::Saw { .. })) => {}
            Ok(None) => return Err(anyhow!("every client ended")),
            Err(_) => bail!("only {} of {count} streams converged in time", after.len()),
        }
    }
    Ok(after)
}
