//! The proxy benchmark: requests per second, latency, memory and CPU of `switchboard-proxy`
//! on loopback, in one run, against the same backend reached directly and through nginx, over
//! HTTP/1.1, HTTP/2 (h2c) and gRPC.
//!
//! Not a test: a bounded workload that prints figures (markdown tables). It asserts nothing
//! about speed; it fails when a process does not start or a probe request is not answered.
//!
//! 1. Backend: this binary started again as `proxy-bench backend` (its own process, so its
//!    CPU is not the load generator's): hyper 1, HTTP/1.1 or h2c on each connection, 200
//!    with a body of `PROXY_BENCH_BODY_BYTES` (1024) bytes to every request, and the
//!    benchmark's gRPC method (a message of that length, `grpc-status: 0`).
//! 2. Targets (`PROXY_BENCH_TARGETS`, in the order given; see [`TARGETS`]), each measured
//!    the same way:
//!    - `direct`, `direct-h2`, `direct-grpc`: the backend itself;
//!    - `proxy`, `proxy-h2`, `proxy-grpc`: the real control plane (`switchboard serve` on
//!      SQLite in a temporary directory, free ports, started once for all of them) configured
//!      over REST with a tenant, mesh, a service per protocol (`http`, `http2`, `grpc`: the
//!      last two HTTP/2 upstream) whose one endpoint is the backend, a route per service
//!      (host names `bench.local`, `h2.bench.local`, `grpc.bench.local`) and an HTTP
//!      gateway on a free port; then `switchboard-proxy` as that gateway's node `bench-gw`
//!      (metadata `role=gateway`, `gateway=bench`, a proxy token from the REST API), access
//!      log off, `--concurrency W`, once its admin `/ready` answers 200;
//!    - `proxy-log`: the same over HTTP/1.1 with the proxy's default access log (Envoy's
//!      default format) on, written to a file;
//!    - `nginx`, `nginx-h2`, `nginx-grpc`: a reverse proxy with the equivalent configuration
//!      (`worker_processes W`, upstream keep-alive pool of 64, access log off; h2c with
//!      `listen … http2`; gRPC with `grpc_pass`);
//!    - `mesh` (not in the default list): a pair of sidecars, one hop between them, in a mesh
//!      with `mtls.mode: off` and in one with `strict`, plus the TLS handshake rate at the
//!      server sidecar's inbound port, then both pairs in turns, one round of turns per
//!      `PROXY_BENCH_ROUNDS` (see `mesh.rs`);
//!    - `turns` (last in the default list): `direct`, `proxy` and `nginx` over HTTP/1.1 all up
//!      at once, the same two shapes moving from one to the next every 100 ms (fixed rate)
//!      or 500 ms (saturation), so that the machine's slow spells fall on all three alike
//!      (see `turns.rs` and `switchboard_loadtest::turns`); at the fixed rate a bare TCP
//!      relay (`proxy-bench relay`, `switchboard_loadtest::relay`) takes turns too, the
//!      floor of what one more hop costs; `turns-h2` and `turns-grpc` (not in the default
//!      list) do the same over h2c and gRPC, against `nginx-h2` and `nginx-grpc`;
//!    - `connections` (not in the default list): the proxy with `--max-downstream-connections`
//!      `PROXY_BENCH_CONNECTION_CAP` (2000), then nginx, each given keep-alive connections up
//!      to twice that, one `GET` each, with RSS after each step (see `connections.rs`).
//! 3. Load (this process, tokio + hyper client, keep-alive connections, `Host: bench.local`):
//!    - fixed rate: an open loop of `PROXY_BENCH_RATE` (1000) requests per second over
//!      `PROXY_BENCH_RATE_CONNECTIONS` (16) connections for `PROXY_BENCH_SECS` (6) s after
//!      `PROXY_BENCH_RATE_WARMUP_SECS` (1) s unrecorded; latency from each request's intended
//!      send time, so queueing behind a slow response counts (no coordinated omission);
//!    - saturation: a closed loop of `PROXY_BENCH_CONNECTIONS` (64) connections, one request
//!      in flight each, for `PROXY_BENCH_SECS` s after `PROXY_BENCH_WARMUP_SECS` (2) s;
//!    - HTTP/2 and gRPC: the same lanes as streams over `PROXY_BENCH_H2_CONNECTIONS` (4)
//!      connections; the closed loop with `PROXY_BENCH_H2_STREAMS` (16) per connection.
//!
//!    p50/p90/p99/max from an HDR histogram (µs resolution), errors by kind, achieved rate.
//! 4. Processes (the proxy, nginx's master + workers summed, the backend, the load generator,
//!    the idle control plane): VmRSS when idle (ready, before any load), the highest VmRSS
//!    sampled every 100 ms under load, VmHWM at the end, and CPU time (each thread's
//!    nanoseconds on a CPU from `/proc/<pid>/task/*/schedstat`; utime + stime from
//!    `/proc/<pid>/stat` when the threads changed) over each recorded window: cores busy and
//!    CPU-ms per 1,000 requests. Last, a "vs nginx" table: each proxy row against nginx's of
//!    its protocol.
//!
//! Knobs: `PROXY_BENCH_WORKERS` (`1`; a comma list such as `1,2` runs the proxy and nginx
//! once per value), `PROXY_BENCH_ROUNDS` (1: how many times the whole target list runs;
//! with more than one, the "vs nginx" table comes per round and then as the median of the
//! rounds), `PROXY_BENCH_CLIENT_THREADS` (1), `PROXY_BENCH_BACKEND_THREADS` (1),
//! `PROXY_BENCH_HANDSHAKE_CONNECTIONS` (8, the mesh's new-connection loop),
//! `PROXY_BENCH_CONNECTION_CAP` (2000, the `connections` target's cap),
//! `PROXY_BENCH_TIMEOUT_SECS` (900 per round, the whole run), `PROXY_BENCH_PROXY_LOG` (`warn`, the
//! proxy's `RUST_LOG`). Binaries: `SWITCHBOARD_BIN` (default `target/release/switchboard`),
//! `SWITCHBOARD_PROXY_BIN` (default `target/dist/switchboard-proxy`: LTO; the proxy as it
//! ships, with PGO too, is what `proxy/pgo-build.sh` prints), `NGINX_BIN`. Every child is
//! stopped on every exit path, and on Ctrl-C.
//!
//! Run with `scripts/bench`, or after `cargo build --release -p switchboard` and
//! `proxy/pgo-build.sh`: `SWITCHBOARD_PROXY_BIN=target/pgo/dist/switchboard-proxy cargo run
//! --release -p switchboard-loadtest --bin proxy-bench`.

// The `mesh`, `turns` and `connections` targets and the report, in files of their own (a
// crate root looks for modules beside itself).
#[path = "proxy-bench/connections.rs"]
mod connections;
#[path = "proxy-bench/mesh.rs"]
mod mesh;
#[path = "proxy-bench/report.rs"]
mod report;
#[path = "proxy-bench/turns.rs"]
mod turns;

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use switchboard_loadtest::backend::{self, BackendArgs, BackendProcess};
use switchboard_loadtest::load::{self, FixedRate, Outcome, Protocol, Saturation, Target};
use switchboard_loadtest::nginx::{self, Nginx};
use switchboard_loadtest::procfs::{self, CpuUse, RssMonitor, Sample};
use switchboard_loadtest::proxy::{self, Gateway, ProxyOptions, ProxyProcess, Role};
use switchboard_loadtest::relay;
use switchboard_loadtest::{ControlPlane, Options, Rest, count_from_env};

const ADMIN_TOKEN: &str = "proxy-bench-admin-token-not-secret";
const HOST: &str = "bench.local";

/// What one target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct(Protocol),
    Proxy(Protocol),
    /// The proxy over HTTP/1.1 with its default access log on.
    ProxyLog,
    Nginx(Protocol),
    Mesh,
    /// Direct, the proxy and nginx over one protocol, up at once and measured in turns.
    Turns(Protocol),
    /// The proxy's memory against open downstream connections, up to twice its cap.
    Connections,
}

/// Every target by its name in `PROXY_BENCH_TARGETS`.
const TARGETS: [(&str, Kind); 15] = [
    ("direct", Kind::Direct(Protocol::Http1)),
    ("direct-h2", Kind::Direct(Protocol::Http2)),
    ("direct-grpc", Kind::Direct(Protocol::Grpc)),
    ("proxy", Kind::Proxy(Protocol::Http1)),
    ("proxy-h2", Kind::Proxy(Protocol::Http2)),
    ("proxy-grpc", Kind::Proxy(Protocol::Grpc)),
    ("proxy-log", Kind::ProxyLog),
    ("nginx", Kind::Nginx(Protocol::Http1)),
    ("nginx-h2", Kind::Nginx(Protocol::Http2)),
    ("nginx-grpc", Kind::Nginx(Protocol::Grpc)),
    ("mesh", Kind::Mesh),
    ("turns", Kind::Turns(Protocol::Http1)),
    ("turns-h2", Kind::Turns(Protocol::Http2)),
    ("turns-grpc", Kind::Turns(Protocol::Grpc)),
    ("connections", Kind::Connections),
];

/// Each protocol through direct, the proxy and nginx, the proxy with its access log, then
/// HTTP/1.1's three in turns: about 4 minutes per worker count with the default windows.
const DEFAULT_TARGETS: &str = "direct,proxy,proxy-log,nginx,direct-h2,proxy-h2,nginx-h2,\
                               direct-grpc,proxy-grpc,nginx-grpc,turns";

impl Kind {
    fn name(self) -> &'static str {
        TARGETS
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("?", |(n, _)| n)
    }

    fn protocol(self) -> Protocol {
        match self {
            Kind::Direct(p) | Kind::Proxy(p) | Kind::Nginx(p) | Kind::Turns(p) => p,
            Kind::ProxyLog | Kind::Mesh | Kind::Connections => Protocol::Http1,
        }
    }
}

struct Config {
    kinds: Vec<Kind>,
    workers: Vec<usize>,
    /// How many times the targets are measured, one after another in the order given.
    rounds: usize,
    fixed: FixedRate,
    saturation: Saturation,
    /// HTTP/2 and gRPC: connections, and streams per connection in the closed loop.
    h2_connections: usize,
    h2_streams: usize,
    client_threads: usize,
    /// The mesh's new-connection loop: connections at a time.
    handshake_connections: usize,
    /// The `connections` target: the proxy's `--max-downstream-connections`.
    connection_cap: usize,
    backend: BackendArgs,
    request_timeout: Duration,
    deadline: Duration,
    proxy_log: String,
}

impl Config {
    fn from_env() -> Result<Config> {
        let secs = |var: &str, default: usize| -> Result<Duration> {
            Ok(Duration::from_secs(count_from_env(var, default)? as u64))
        };
        let list = |var: &str, default: &str| -> String {
            std::env::var(var).unwrap_or_else(|_| default.to_owned())
        };
        let kinds = list("PROXY_BENCH_TARGETS", DEFAULT_TARGETS)
            .split(',')
            .map(|k| {
                let k = k.trim();
                match TARGETS.iter().find(|(name, _)| *name == k) {
                    Some((_, kind)) => Ok(*kind),
                    None => bail!(
                        "PROXY_BENCH_TARGETS: unknown target {k:?} ({})",
                        TARGETS.map(|(n, _)| n).join(", ")
                    ),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let workers = list("PROXY_BENCH_WORKERS", "1")
            .split(',')
            .map(|w| match w.trim().parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => Ok(n),
                _ => bail!("PROXY_BENCH_WORKERS: {w:?} is not a worker count (1 to 64)"),
            })
            .collect::<Result<Vec<_>>>()?;
        let duration = secs("PROXY_BENCH_SECS", 6)?;
        let rounds = count_from_env("PROXY_BENCH_ROUNDS", 1)?;
        let connection_cap = count_from_env("PROXY_BENCH_CONNECTION_CAP", 2000)?;
        if !(4..=20_000).contains(&connection_cap) {
            bail!("PROXY_BENCH_CONNECTION_CAP: {connection_cap} is not between 4 and 20000");
        }
        if !(1..=20).contains(&rounds) {
            bail!("PROXY_BENCH_ROUNDS: {rounds} is not a round count (1 to 20)");
        }
        Ok(Config {
            kinds,
            workers,
            rounds,
            fixed: FixedRate {
                rate: u32::try_from(count_from_env("PROXY_BENCH_RATE", 1000)?)?,
                connections: count_from_env("PROXY_BENCH_RATE_CONNECTIONS", 16)?,
                warmup: secs("PROXY_BENCH_RATE_WARMUP_SECS", 1)?,
                duration,
            },
            saturation: Saturation {
                connections: count_from_env("PROXY_BENCH_CONNECTIONS", 64)?,
                warmup: secs("PROXY_BENCH_WARMUP_SECS", 2)?,
                duration,
            },
            h2_connections: count_from_env("PROXY_BENCH_H2_CONNECTIONS", 4)?,
            h2_streams: count_from_env("PROXY_BENCH_H2_STREAMS", 16)?,
            client_threads: count_from_env("PROXY_BENCH_CLIENT_THREADS", 1)?,
            handshake_connections: count_from_env("PROXY_BENCH_HANDSHAKE_CONNECTIONS", 8)?,
            connection_cap,
            backend: BackendArgs {
                threads: count_from_env("PROXY_BENCH_BACKEND_THREADS", 1)?,
                body_bytes: count_from_env("PROXY_BENCH_BODY_BYTES", 1024)?,
            },
            request_timeout: Duration::from_secs(5),
            deadline: secs("PROXY_BENCH_TIMEOUT_SECS", 900 * rounds)?,
            proxy_log: list("PROXY_BENCH_PROXY_LOG", "warn"),
        })
    }
}

/// Processes whose figures are summed into one row.
struct Group {
    label: String,
    pids: Vec<u32>,
}

impl Group {
    fn new(label: impl Into<String>, pids: Vec<u32>) -> Group {
        Group {
            label: label.into(),
            pids,
        }
    }
}

struct ProcessFigures {
    label: String,
    idle: Sample,
    /// Highest VmRSS sum sampled under load, KiB.
    peak_rss_kib: u64,
    end: Sample,
    fixed_cpu: CpuUse,
    saturation_cpu: CpuUse,
}

/// What a row is: its name in the tables, its target, the worker count (none for
/// `direct`) and the round (from 1).
struct Label {
    name: String,
    kind: Kind,
    workers: Option<usize>,
    round: usize,
}

impl Label {
    fn new(kind: Kind, workers: Option<usize>, round: Round) -> Label {
        let mut name = match workers {
            Some(w) => format!("{} ({w} worker{})", kind.name(), plural(w)),
            None => kind.name().to_owned(),
        };
        if round.of > 1 {
            name.push_str(&format!(", round {}", round.this));
        }
        Label {
            name,
            kind,
            workers,
            round: round.this,
        }
    }
}

/// Which round of how many.
#[derive(Debug, Clone, Copy)]
struct Round {
    this: usize,
    of: usize,
}

/// One target's figures.
struct Measured {
    name: String,
    kind: Kind,
    workers: Option<usize>,
    round: usize,
    fixed: Outcome,
    saturation: Outcome,
    /// Connections the backend accepted during each phase (warm-up included).
    backend_connections: [u64; 2],
    /// The proxy or nginx first, when there is one.
    processes: Vec<ProcessFigures>,
}

fn sample_groups(groups: &[Group]) -> Result<Vec<Sample>> {
    groups
        .iter()
        .map(|g| procfs::sample_all(&g.pids).with_context(|| g.label.clone()))
        .collect()
}

/// Idle figures, a probe, then both load phases against `target`, with the processes of
/// `groups` sampled around each recorded window.
async fn measure(
    label: Label,
    target: &Target,
    backend: &BackendProcess,
    groups: Vec<Group>,
    cfg: &Config,
    ticks: u64,
) -> Result<Measured> {
    let name = label.name;
    eprintln!(
        "==> {name}: idle, then {} rps, then saturation",
        cfg.fixed.rate
    );
    let saturation_shape = saturation_shape(cfg, target.protocol);
    // Let start-up settle (allocator, xDS updates) before the idle figure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = sample_groups(&groups)?;
    load::probe(target).await.map_err(|f| {
        anyhow!(
            "{name}: a probe {} request to {} failed: {f:?}",
            target.protocol.label(),
            target.addr
        )
    })?;
    let monitor = RssMonitor::start(
        groups.iter().map(|g| g.pids.clone()).collect(),
        Duration::from_millis(100),
    )?;
    let c0 = backend.connections().await?;
    let mut marks = Vec::new();
    let fixed = load::fixed_rate(target, cfg.fixed, || marks.push(sample_groups(&groups))).await?;
    let c1 = backend.connections().await?;
    let saturation = load::saturation(target, saturation_shape, || {
        marks.push(sample_groups(&groups))
    })
    .await?;
    let c2 = backend.connections().await?;
    let peaks = monitor.stop();
    let end = sample_groups(&groups)?;
    let marks = marks.into_iter().collect::<Result<Vec<_>>>()?;
    let [fixed_start, fixed_end, sat_start, sat_end] = marks.as_slice() else {
        bail!("expected 4 CPU samples, got {}", marks.len());
    };
    let processes = groups
        .iter()
        .enumerate()
        .map(|(i, g)| ProcessFigures {
            label: g.label.clone(),
            idle: idle[i],
            peak_rss_kib: peaks.get(i).copied().unwrap_or_default(),
            end: end[i],
            fixed_cpu: CpuUse::between(&fixed_start[i], &fixed_end[i], ticks),
            saturation_cpu: CpuUse::between(&sat_start[i], &sat_end[i], ticks),
        })
        .collect();
    Ok(Measured {
        name,
        kind: label.kind,
        workers: label.workers,
        round: label.round,
        fixed,
        saturation,
        backend_connections: [c1.saturating_sub(c0), c2.saturating_sub(c1)],
        processes,
    })
}

/// The closed loop over `protocol`: over HTTP/2 and gRPC its lanes are streams,
/// `PROXY_BENCH_H2_STREAMS` on each of `PROXY_BENCH_H2_CONNECTIONS`.
fn saturation_shape(cfg: &Config, protocol: Protocol) -> Saturation {
    let mut shape = cfg.saturation;
    if protocol != Protocol::Http1 {
        shape.connections = cfg.h2_connections * cfg.h2_streams;
    }
    shape
}

fn target(addr: std::net::SocketAddr, protocol: Protocol, host: String, cfg: &Config) -> Target {
    Target {
        addr,
        host,
        path: "/".into(),
        body_len: cfg.backend.body_bytes,
        timeout: cfg.request_timeout,
        protocol,
        h2_connections: cfg.h2_connections,
    }
}

/// The control plane with the gateway configured, shared by every proxy target of the run.
struct ProxyEnv {
    cp: ControlPlane,
    gateway: Gateway,
    token: String,
}

impl ProxyEnv {
    /// Starts the control plane and configures the gateway; stopped by [`ProxyEnv::finish`].
    async fn start(backend: &BackendProcess) -> Result<ProxyEnv> {
        let mut cp = ControlPlane::start(&Options {
            admin_token: ADMIN_TOKEN.into(),
            log_level: "warn".into(),
            ready_timeout: Duration::from_secs(60),
        })
        .await?;
        let configured = async {
            let gateway = Gateway {
                tenant: "bench".into(),
                mesh: "bench".into(),
                name: "bench".into(),
                port: proxy::free_port()?,
                host: HOST.into(),
            };
            let rest = Rest::new(&cp.rest_url, ADMIN_TOKEN, Duration::from_secs(30))?;
            let token = proxy::configure_gateway(&rest, &gateway, backend.addr).await?;
            Ok::<_, anyhow::Error>((gateway, token))
        }
        .await;
        match configured {
            Ok((gateway, token)) => Ok(ProxyEnv { cp, gateway, token }),
            Err(e) => {
                cp.stop().await;
                Err(e)
            }
        }
    }

    /// The run's environment, started by the first target that needs it.
    async fn once<'a>(
        env: &'a mut Option<ProxyEnv>,
        backend: &BackendProcess,
    ) -> Result<&'a ProxyEnv> {
        if env.is_none() {
            *env = Some(ProxyEnv::start(backend).await?);
        }
        env.as_ref().context("the control plane was not started")
    }

    /// Stops the control plane; when the run went well, fails if it had exited and notes
    /// what it logged at WARN or above.
    async fn finish(mut self, ok: bool, notes: &mut Vec<String>) -> Result<()> {
        let checked = if ok { self.cp.check_alive() } else { Ok(()) };
        let (warnings, first) = self.cp.log_problems(5);
        if ok && warnings > 0 {
            notes.push(format!(
                "the control plane logged {warnings} warnings or errors, first: {}",
                first.join(" | ")
            ));
        }
        self.cp.stop().await;
        checked
    }
}

/// The bench gateway's proxy with `workers` threads; `logged`: its default access log on.
fn proxy_options(cfg: &Config, env: &ProxyEnv, workers: usize, logged: bool) -> ProxyOptions {
    ProxyOptions {
        xds_url: env.cp.xds_url.clone(),
        node_id: env.gateway.node_id("bench-gw"),
        role: Role::Gateway(env.gateway.name.clone()),
        token: env.token.clone(),
        workers,
        log_filter: if logged {
            format!("{},{}=info", cfg.proxy_log, ACCESS_LOG_TARGET)
        } else {
            cfg.proxy_log.clone()
        },
        access_log: (!logged).then(|| "off".into()),
        max_downstream_connections: None,
    }
}

/// One proxy target (`Kind::Proxy` or `Kind::ProxyLog`), once per worker count.
#[allow(clippy::too_many_arguments)]
async fn run_proxy(
    cfg: &Config,
    env: &ProxyEnv,
    backend: &BackendProcess,
    ticks: u64,
    kind: Kind,
    round: Round,
    results: &mut Vec<Measured>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let logged = kind == Kind::ProxyLog;
    let protocol = kind.protocol();
    for &workers in &cfg.workers {
        let mut p = ProxyProcess::start(
            &proxy_options(cfg, env, workers, logged),
            Duration::from_secs(60),
        )
        .await?;
        if !notes.iter().any(|n| n.starts_with(&p.version)) {
            notes.push(format!(
                "{}: gateway listener 0.0.0.0:{} (the translator binds gateways to every \
                 address; load goes to 127.0.0.1 only), `--concurrency {}`; routes by host: \
                 `{}` → service `backend` (`protocol: http`, HTTP/1.1 upstream), `{}` → \
                 `backend-h2` (`http2`: h2c upstream), `{}` → `backend-grpc` (`grpc`: h2c \
                 upstream); access log off (`--access-log-format off`) except `proxy-log`: \
                 the default access log (Envoy's default format) with `RUST_LOG={},{}=info`, \
                 standard error into a file",
                p.version,
                env.gateway.port,
                cfg.workers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("/"),
                env.gateway.host(Protocol::Http1),
                env.gateway.host(Protocol::Http2),
                env.gateway.host(Protocol::Grpc),
                cfg.proxy_log,
                ACCESS_LOG_TARGET,
            ));
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], env.gateway.port));
        let groups = vec![
            Group::new("switchboard-proxy", vec![p.pid]),
            Group::new("backend", vec![backend.pid]),
            Group::new("load generator", vec![std::process::id()]),
            Group::new("control plane (idle)", vec![env.cp.pid()]),
        ];
        let target = target(addr, protocol, env.gateway.host(protocol), cfg);
        let label = Label::new(kind, Some(workers), round);
        let measured = measure(label, &target, backend, groups, cfg, ticks).await;
        let alive = p.check_alive();
        // Envoy's default format renders each of these requests as `"GET / HTTP/1.1" 200`.
        let access_lines = logged.then(|| p.log_lines(r#""GET / HTTP/1.1" 200"#));
        p.stop().await;
        let m = match (measured, alive) {
            (Ok(m), Ok(())) => m,
            (Err(e), _) | (Ok(_), Err(e)) => {
                return Err(e.context(format!("the proxy's log:\n{}", p.log_tail(40))));
            }
        };
        if let Some(lines) = access_lines {
            let (lines, bytes) = lines.context("reading the proxy's access log")?;
            let recorded = m.fixed.ok + m.saturation.ok;
            notes.push(format!(
                "{}: the proxy's log has {lines} access log lines `\"GET / HTTP/1.1\" 200` \
                 ({:.1} MiB in all) for the whole run, warm-ups and probe included{}",
                m.name,
                switchboard_loadtest::mib(bytes / 1024),
                if lines >= recorded {
                    String::new()
                } else {
                    format!(": FEWER than the {recorded} responses recorded")
                }
            ));
        }
        results.push(m);
    }
    Ok(())
}

/// The proxy's access log events' `tracing` target.
const ACCESS_LOG_TARGET: &str = "access_log";

async fn run_nginx(
    cfg: &Config,
    backend: &BackendProcess,
    ticks: u64,
    protocol: Protocol,
    round: Round,
    results: &mut Vec<Measured>,
    notes: &mut Vec<String>,
) -> Result<()> {
    for &workers in &cfg.workers {
        let mut n = Nginx::start(backend.addr, workers, protocol).await?;
        if !notes.iter().any(|note| note.starts_with(&n.version)) {
            notes.push(format!(
                "{}: `worker_processes {}`, upstream `keepalive 64`, `access_log off`, \
                 `keepalive_requests 1000000` (both sides); HTTP/1.1: `proxy_pass` with \
                 `proxy_http_version 1.1` and `Connection \"\"`; HTTP/2: `listen … http2` \
                 without TLS (h2c, prior knowledge) and the same `proxy_pass`, so HTTP/1.1 \
                 upstream; gRPC: `listen … http2` and `grpc_pass grpc://` (HTTP/2 upstream); \
                 as root its workers run as `nobody` (nginx's default)",
                n.version,
                cfg.workers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("/")
            ));
        }
        let groups = vec![
            Group::new(
                format!(
                    "nginx (master + {} worker{})",
                    n.workers.len(),
                    plural(n.workers.len())
                ),
                n.pids(),
            ),
            Group::new("backend", vec![backend.pid]),
            Group::new("load generator", vec![std::process::id()]),
        ];
        let label = Label::new(Kind::Nginx(protocol), Some(workers), round);
        let target = target(n.addr, protocol, HOST.into(), cfg);
        let measured = measure(label, &target, backend, groups, cfg, ticks).await;
        let log = n.log();
        n.stop().await;
        results.push(measured.with_context(|| format!("nginx's log:\n{log}"))?);
    }
    Ok(())
}

async fn run(cfg: Config) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ticks = procfs::clock_ticks_per_second();
    let load_before = load_average();
    // Fail early, before any measurement, on a missing binary.
    let any = |f: fn(&Kind) -> bool| cfg.kinds.iter().any(f);
    if any(|k| {
        matches!(
            k,
            Kind::Proxy(_) | Kind::ProxyLog | Kind::Mesh | Kind::Turns(_) | Kind::Connections
        )
    }) {
        proxy::binary()?;
    }
    if any(|k| matches!(k, Kind::Nginx(_) | Kind::Turns(_))) {
        nginx::binary()?;
    }
    let mut backend = BackendProcess::start(cfg.backend).await?;
    let mut results = Vec::new();
    let mut notes = Vec::new();
    let mut mesh_runs = Vec::new();
    let mut turns_runs = Vec::new();
    let mut connections_runs = Vec::new();
    let mut env: Option<ProxyEnv> = None;
    let outcome = async {
        for (this, &kind) in (1..=cfg.rounds).flat_map(|r| cfg.kinds.iter().map(move |k| (r, k))) {
            let round = Round {
                this,
                of: cfg.rounds,
            };
            match kind {
                Kind::Direct(protocol) => {
                    let groups = vec![
                        Group::new("backend", vec![backend.pid]),
                        Group::new("load generator", vec![std::process::id()]),
                    ];
                    let target = target(backend.addr, protocol, HOST.into(), &cfg);
                    let label = Label::new(kind, None, round);
                    results.push(measure(label, &target, &backend, groups, &cfg, ticks).await?);
                }
                Kind::Connections if this > 1 => {}
                Kind::Connections => {
                    let e = ProxyEnv::once(&mut env, &backend).await?;
                    connections_runs = connections::run(&cfg, e, &backend).await?;
                }
                Kind::Turns(protocol) => {
                    let e = ProxyEnv::once(&mut env, &backend).await?;
                    turns_runs.extend(turns::run(&cfg, e, &backend, ticks, round, protocol).await?);
                }
                Kind::Proxy(_) | Kind::ProxyLog => {
                    let e = ProxyEnv::once(&mut env, &backend).await?;
                    run_proxy(
                        &cfg,
                        e,
                        &backend,
                        ticks,
                        kind,
                        round,
                        &mut results,
                        &mut notes,
                    )
                    .await?;
                }
                Kind::Nginx(protocol) => {
                    run_nginx(
                        &cfg,
                        &backend,
                        ticks,
                        protocol,
                        round,
                        &mut results,
                        &mut notes,
                    )
                    .await?;
                }
                // The mesh pair has its own comparison (plaintext against mTLS): first round only.
                Kind::Mesh if this > 1 => {}
                Kind::Mesh => {
                    mesh_runs = mesh::run(&cfg, &backend, ticks, &mut results, &mut notes).await?;
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let finished = match env {
        Some(e) => e.finish(outcome.is_ok(), &mut notes).await,
        None => Ok(()),
    };
    backend.stop().await;
    outcome?;
    finished?;
    let load_after = load_average();
    report::report(
        &cfg,
        &results,
        &notes,
        &report::RunInfo {
            cores,
            ticks,
            load_before: &load_before,
            load_after: &load_after,
        },
    );
    mesh::report(&cfg, &results, &mesh_runs, ticks);
    turns::report(&cfg, &turns_runs);
    connections::report(&connections_runs);
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn ms(v: f64) -> String {
    format!("{v:.3}")
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("backend") {
        return backend::run(BackendArgs::parse(&args[2..])?);
    }
    if args.get(1).map(String::as_str) == Some("relay") {
        return relay::run(relay::parse(&args[2..])?);
    }
    if args.len() > 1 {
        bail!(
            "proxy-bench takes no arguments (it is configured with PROXY_BENCH_* variables; \
             `backend` and `relay` are its internal subcommands)"
        );
    }
    let cfg = Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.client_threads)
        .enable_all()
        .build()
        .context("building the load generator's runtime")?;
    runtime.block_on(async move {
        let deadline = cfg.deadline;
        tokio::select! {
            r = tokio::time::timeout(deadline, run(cfg)) => {
                r.map_err(|_| anyhow!("the benchmark did not finish within {deadline:?}"))?
            }
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })
}
