//! The proxy benchmark: requests per second, latency, memory and CPU of `switchboard-proxy`
//! on loopback, in one run, against the same backend reached directly and through nginx.
//!
//! Not a test: a bounded workload that prints figures (markdown tables). It asserts nothing
//! about speed; it fails when a process does not start or a probe request is not answered.
//!
//! 1. Backend: this binary started again as `proxy-bench backend` (its own process, so its
//!    CPU is not the load generator's): hyper 1, HTTP/1.1, 200 with a body of
//!    `PROXY_BENCH_BODY_BYTES` (1024) bytes to every request.
//! 2. Targets, in this order, each measured the same way:
//!    - `direct`: the backend itself;
//!    - `switchboard-proxy`: the real control plane (`switchboard serve` on SQLite in a
//!      temporary directory, free ports) configured over REST with a tenant, mesh, service
//!      `backend` (its one endpoint the backend), route `bench` (host name `bench.local`)
//!      and an HTTP gateway on a free port; then `switchboard-proxy` as that gateway's node
//!      `bench-gw` (metadata `role=gateway`, `gateway=bench`, a proxy token from the REST
//!      API), access log off, `--concurrency W`, once its admin `/ready` answers 200;
//!    - `nginx`: a reverse proxy with the equivalent configuration (`worker_processes W`,
//!      upstream keep-alive pool of 64, HTTP/1.1 upstream, `Connection ""`, access log off);
//!    - `mesh` (not in the default list): a pair of sidecars, one hop between them, in a mesh
//!      with `mtls.mode: off` and in one with `strict`, plus the TLS handshake rate at the
//!      server sidecar's inbound port (see `mesh.rs`).
//! 3. Load (this process, tokio + hyper client, keep-alive connections, `Host: bench.local`):
//!    - fixed rate: an open loop of `PROXY_BENCH_RATE` (1000) requests per second over
//!      `PROXY_BENCH_RATE_CONNECTIONS` (16) connections for `PROXY_BENCH_SECS` (10) s after
//!      `PROXY_BENCH_RATE_WARMUP_SECS` (1) s unrecorded; latency from each request's intended
//!      send time, so queueing behind a slow response counts (no coordinated omission);
//!    - saturation: a closed loop of `PROXY_BENCH_CONNECTIONS` (64) connections, one request
//!      in flight each, for `PROXY_BENCH_SECS` s after `PROXY_BENCH_WARMUP_SECS` (2) s.
//!
//!    p50/p90/p99/max from an HDR histogram (µs resolution), errors by kind, achieved rate.
//! 4. Processes (the proxy, nginx's master + workers summed, the backend, the load generator,
//!    the idle control plane): VmRSS when idle (ready, before any load), the highest VmRSS
//!    sampled every 100 ms under load, VmHWM at the end, and CPU time (utime + stime from
//!    `/proc/<pid>/stat`) over each recorded window: cores busy and CPU-ms per 1,000
//!    requests.
//!
//! Knobs: `PROXY_BENCH_WORKERS` (`1`; a comma list such as `1,2` runs the proxy and nginx
//! once per value), `PROXY_BENCH_CLIENT_THREADS` (1), `PROXY_BENCH_BACKEND_THREADS` (1),
//! `PROXY_BENCH_TARGETS` (`direct,proxy,nginx`; `mesh` also), `PROXY_BENCH_HANDSHAKE_CONNECTIONS`
//! (8, the mesh's new-connection loop), `PROXY_BENCH_TIMEOUT_SECS` (600, the whole run), `PROXY_BENCH_PROXY_LOG` (`warn`, the proxy's `RUST_LOG`). Binaries:
//! `SWITCHBOARD_BIN`, `SWITCHBOARD_PROXY_BIN` (default `target/release/…`), `NGINX_BIN`.
//! Every child is killed on every exit path, and on Ctrl-C.
//!
//! Run with `scripts/bench`, or after `cargo build --release -p switchboard -p
//! switchboard-proxy`: `cargo run --release -p switchboard-loadtest --bin proxy-bench`.

// The `mesh` target, in a file of its own (a crate root looks for modules beside itself).
#[path = "proxy-bench/mesh.rs"]
mod mesh;

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use switchboard_loadtest::backend::{self, BackendArgs, BackendProcess};
use switchboard_loadtest::load::{self, FixedRate, Outcome, Saturation, Target};
use switchboard_loadtest::nginx::{self, Nginx};
use switchboard_loadtest::procfs::{self, CpuUse, RssMonitor, Sample};
use switchboard_loadtest::proxy::{self, Gateway, ProxyOptions, ProxyProcess, Role};
use switchboard_loadtest::{ControlPlane, Options, Rest, count_from_env, mib};

const ADMIN_TOKEN: &str = "proxy-bench-admin-token-not-secret";
const HOST: &str = "bench.local";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Proxy,
    Nginx,
    Mesh,
}

struct Config {
    kinds: Vec<Kind>,
    workers: Vec<usize>,
    fixed: FixedRate,
    saturation: Saturation,
    client_threads: usize,
    /// The mesh's new-connection loop: connections at a time.
    handshake_connections: usize,
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
        let kinds = list("PROXY_BENCH_TARGETS", "direct,proxy,nginx")
            .split(',')
            .map(|k| match k.trim() {
                "direct" => Ok(Kind::Direct),
                "proxy" => Ok(Kind::Proxy),
                "nginx" => Ok(Kind::Nginx),
                "mesh" => Ok(Kind::Mesh),
                other => bail!(
                    "PROXY_BENCH_TARGETS: unknown target {other:?} (direct, proxy, nginx, mesh)"
                ),
            })
            .collect::<Result<Vec<_>>>()?;
        let workers = list("PROXY_BENCH_WORKERS", "1")
            .split(',')
            .map(|w| match w.trim().parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => Ok(n),
                _ => bail!("PROXY_BENCH_WORKERS: {w:?} is not a worker count (1 to 64)"),
            })
            .collect::<Result<Vec<_>>>()?;
        let duration = secs("PROXY_BENCH_SECS", 10)?;
        Ok(Config {
            kinds,
            workers,
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
            client_threads: count_from_env("PROXY_BENCH_CLIENT_THREADS", 1)?,
            handshake_connections: count_from_env("PROXY_BENCH_HANDSHAKE_CONNECTIONS", 8)?,
            backend: BackendArgs {
                threads: count_from_env("PROXY_BENCH_BACKEND_THREADS", 1)?,
                body_bytes: count_from_env("PROXY_BENCH_BODY_BYTES", 1024)?,
            },
            request_timeout: Duration::from_secs(5),
            deadline: secs("PROXY_BENCH_TIMEOUT_SECS", 600)?,
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

/// One target's figures.
struct Measured {
    name: String,
    fixed: Outcome,
    saturation: Outcome,
    /// Connections the backend accepted during each phase (warm-up included).
    backend_connections: [u64; 2],
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
    name: String,
    target: &Target,
    backend: &BackendProcess,
    groups: Vec<Group>,
    cfg: &Config,
    ticks: u64,
) -> Result<Measured> {
    eprintln!(
        "==> {name}: idle, then {} rps, then saturation",
        cfg.fixed.rate
    );
    // Let start-up settle (allocator, xDS updates) before the idle figure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = sample_groups(&groups)?;
    load::probe(target)
        .await
        .map_err(|f| anyhow!("{name}: a probe GET to {} failed: {f:?}", target.addr))?;
    let monitor = RssMonitor::start(
        groups.iter().map(|g| g.pids.clone()).collect(),
        Duration::from_millis(100),
    )?;
    let c0 = backend.connections().await?;
    let mut marks = Vec::new();
    let fixed = load::fixed_rate(target, cfg.fixed, || marks.push(sample_groups(&groups))).await?;
    let c1 = backend.connections().await?;
    let saturation = load::saturation(target, cfg.saturation, || {
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
        fixed,
        saturation,
        backend_connections: [c1.saturating_sub(c0), c2.saturating_sub(c1)],
        processes,
    })
}

fn target(addr: std::net::SocketAddr, cfg: &Config) -> Target {
    Target {
        addr,
        host: HOST.into(),
        path: "/".into(),
        body_len: cfg.backend.body_bytes,
        timeout: cfg.request_timeout,
    }
}

/// The control plane, configured with the gateway; stopped by the caller.
async fn start_control_plane() -> Result<(ControlPlane, Gateway)> {
    let cp = ControlPlane::start(&Options {
        admin_token: ADMIN_TOKEN.into(),
        log_level: "warn".into(),
        ready_timeout: Duration::from_secs(60),
    })
    .await?;
    let gateway = Gateway {
        tenant: "bench".into(),
        mesh: "bench".into(),
        name: "bench".into(),
        port: proxy::free_port()?,
        host: HOST.into(),
    };
    Ok((cp, gateway))
}

async fn run_proxy(
    cfg: &Config,
    backend: &BackendProcess,
    ticks: u64,
    results: &mut Vec<Measured>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let (mut cp, gateway) = start_control_plane().await?;
    let outcome = async {
        let rest = Rest::new(&cp.rest_url, ADMIN_TOKEN, Duration::from_secs(30))?;
        let token = proxy::configure_gateway(&rest, &gateway, backend.addr).await?;
        for &workers in &cfg.workers {
            let mut p = ProxyProcess::start(
                &ProxyOptions {
                    xds_url: cp.xds_url.clone(),
                    node_id: gateway.node_id("bench-gw"),
                    role: Role::Gateway(gateway.name.clone()),
                    token: token.clone(),
                    workers,
                    log_filter: cfg.proxy_log.clone(),
                },
                Duration::from_secs(60),
            )
            .await?;
            if workers == cfg.workers[0] {
                notes.push(format!(
                    "{}: gateway listener 0.0.0.0:{} (the translator binds gateways to every \
                     address; load goes to 127.0.0.1 only), `--concurrency {}`, access log off",
                    p.version,
                    gateway.port,
                    cfg.workers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("/")
                ));
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], gateway.port));
            let groups = vec![
                Group::new("switchboard-proxy", vec![p.pid]),
                Group::new("backend", vec![backend.pid]),
                Group::new("load generator", vec![std::process::id()]),
                Group::new("control plane (idle)", vec![cp.pid()]),
            ];
            let name = format!("switchboard-proxy ({workers} worker{})", plural(workers));
            let measured = measure(name, &target(addr, cfg), backend, groups, cfg, ticks).await;
            let alive = p.check_alive();
            p.stop().await;
            match (measured, alive) {
                (Ok(m), Ok(())) => results.push(m),
                (Err(e), _) | (Ok(_), Err(e)) => {
                    return Err(e.context(format!("the proxy's log:\n{}", p.log_tail(40))));
                }
            }
        }
        cp.check_alive()?;
        let (warnings, first) = cp.log_problems(5);
        if warnings > 0 {
            notes.push(format!(
                "the control plane logged {warnings} warnings or errors, first: {}",
                first.join(" | ")
            ));
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    cp.stop().await;
    outcome
}

async fn run_nginx(
    cfg: &Config,
    backend: &BackendProcess,
    ticks: u64,
    results: &mut Vec<Measured>,
    notes: &mut Vec<String>,
) -> Result<()> {
    for &workers in &cfg.workers {
        let mut n = Nginx::start(backend.addr, workers).await?;
        if workers == cfg.workers[0] {
            notes.push(format!(
                "{}: `worker_processes {}`, upstream `keepalive 64`, `proxy_http_version 1.1`, \
                 `Connection \"\"`, `access_log off`, `keepalive_requests 1000000`; as root its \
                 workers run as `nobody` (nginx's default)",
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
        let name = format!("nginx ({workers} worker{})", plural(workers));
        let measured = measure(name, &target(n.addr, cfg), backend, groups, cfg, ticks).await;
        let log = n.log();
        n.stop().await;
        results.push(measured.with_context(|| format!("nginx's log:\n{log}"))?);
    }
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

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

async fn run(cfg: Config) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ticks = procfs::clock_ticks_per_second();
    let load_before = load_average();
    // Fail early, before any measurement, on a missing binary.
    if cfg.kinds.contains(&Kind::Proxy) || cfg.kinds.contains(&Kind::Mesh) {
        proxy::binary()?;
    }
    if cfg.kinds.contains(&Kind::Nginx) {
        nginx::binary()?;
    }
    let mut backend = BackendProcess::start(cfg.backend).await?;
    let mut results = Vec::new();
    let mut notes = Vec::new();
    let mut mesh_runs = Vec::new();
    let outcome = async {
        for kind in &cfg.kinds {
            match kind {
                Kind::Direct => {
                    let groups = vec![
                        Group::new("backend", vec![backend.pid]),
                        Group::new("load generator", vec![std::process::id()]),
                    ];
                    let m = measure(
                        "direct".into(),
                        &target(backend.addr, &cfg),
                        &backend,
                        groups,
                        &cfg,
                        ticks,
                    )
                    .await?;
                    results.push(m);
                }
                Kind::Proxy => run_proxy(&cfg, &backend, ticks, &mut results, &mut notes).await?,
                Kind::Nginx => run_nginx(&cfg, &backend, ticks, &mut results, &mut notes).await?,
                Kind::Mesh => {
                    mesh_runs = mesh::run(&cfg, &backend, ticks, &mut results, &mut notes).await?;
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    backend.stop().await;
    outcome?;
    let load_after = load_average();
    report(
        &cfg,
        &results,
        &notes,
        cores,
        ticks,
        &load_before,
        &load_after,
    );
    mesh::report(&cfg, &results, &mesh_runs, ticks);
    Ok(())
}

fn ms(v: f64) -> String {
    format!("{v:.3}")
}

fn report(
    cfg: &Config,
    results: &[Measured],
    notes: &[String],
    cores: usize,
    ticks: u64,
    load_before: &str,
    load_after: &str,
) {
    let f = cfg.fixed;
    let s = cfg.saturation;
    println!(
        "## Proxy benchmark (loopback, {} B responses)\n",
        cfg.backend.body_bytes
    );
    println!(
        "Machine: {cores} cores ({}), load average {load_before} before and {load_after} after \
         the run; CLK_TCK {ticks}.",
        cpu_model()
    );
    println!(
        "Everything shares those {cores} cores: the load generator ({} thread{}), the backend \
         ({} thread{}) and the proxy or nginx ({} worker{}), so the saturation figures are of \
         the whole system on this machine, not of the proxy alone.",
        cfg.client_threads,
        plural(cfg.client_threads),
        cfg.backend.threads,
        plural(cfg.backend.threads),
        cfg.workers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("/"),
        plural(cfg.workers.iter().copied().max().unwrap_or(1)),
    );
    println!(
        "Fixed rate: open loop, {} rps over {} keep-alive connections for {} s after {} s \
         unrecorded, latency from each request's intended send time. Saturation: closed loop, \
         {} connections with one request in flight each, for {} s after {} s unrecorded.\n",
        f.rate,
        f.connections,
        f.duration.as_secs(),
        f.warmup.as_secs(),
        s.connections,
        s.duration.as_secs(),
        s.warmup.as_secs()
    );
    for n in notes {
        println!("- {n}");
    }
    println!();

    println!(
        "| target | {} rps: achieved | p50 ms | p99 ms | errors | saturation: rps | p50 ms | p99 ms | errors |",
        f.rate
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {:.0} | {} | {} | {} | {:.0} | {} | {} | {} |",
            r.name,
            r.fixed.rps(),
            ms(r.fixed.ms(50.0)),
            ms(r.fixed.ms(99.0)),
            r.fixed.errors.describe(),
            r.saturation.rps(),
            ms(r.saturation.ms(50.0)),
            ms(r.saturation.ms(99.0)),
            r.saturation.errors.describe(),
        );
    }
    println!();

    println!("Latency detail (ms):\n");
    println!(
        "| target | phase | responses | rps | p50 | p90 | p99 | max | errors | client reconnects | backend connections opened |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        for (phase, o, opened) in [
            ("fixed rate", &r.fixed, r.backend_connections[0]),
            ("saturation", &r.saturation, r.backend_connections[1]),
        ] {
            println!(
                "| {} | {phase} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {opened} |",
                r.name,
                o.ok,
                o.rps(),
                ms(o.ms(50.0)),
                ms(o.ms(90.0)),
                ms(o.ms(99.0)),
                ms(o.max_ms()),
                o.errors.describe(),
                o.reconnects,
            );
        }
    }
    println!(
        "\nClient reconnects: connections the target closed and the client reopened. Backend \
         connections opened: connections the backend accepted during the phase, warm-up \
         included (direct, that is the client's own; through a proxy, how well it pools).\n"
    );
    let lags: Vec<String> = results
        .iter()
        .filter_map(|r| {
            let lag = r.fixed.pacer_lag.as_ref()?;
            Some(format!(
                "{} p50 {} / p99 {}",
                r.name,
                ms(lag.value_at_quantile(0.5) as f64 / 1000.0),
                ms(lag.value_at_quantile(0.99) as f64 / 1000.0)
            ))
        })
        .collect();
    println!(
        "Pacer lateness at the fixed rate (ms; the floor of the fixed-rate latencies, a cost \
         of this client): {}.\n",
        lags.join("; ")
    );

    println!("Processes (RSS in MiB; CPU as cores busy and CPU-ms per 1,000 requests):\n");
    println!(
        "| target | process | threads | RSS idle | RSS peak under load | VmHWM | CPU @ {} rps | CPU-ms / 1k req @ {} rps | CPU @ saturation | CPU-ms / 1k req @ saturation |",
        f.rate, f.rate
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let fixed_requests = r.fixed.ok + r.fixed.errors.total();
        for p in &r.processes {
            println!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.1} | {:.3} | {:.1} |",
                r.name,
                p.label,
                p.end.threads,
                mib(p.idle.rss_kib),
                mib(p.peak_rss_kib),
                mib(p.end.hwm_kib),
                p.fixed_cpu.cores(),
                p.fixed_cpu.ms_per_1k(fixed_requests),
                p.saturation_cpu.cores(),
                p.saturation_cpu.ms_per_1k(r.saturation.ok),
            );
        }
    }
    println!(
        "\nCPU times are in clock ticks of 1/{ticks} s: over {} s at {} rps a figure is good to \
         about ±{:.1} CPU-ms per 1,000 requests. CPU-ms per 1,000 requests at {} rps equals \
         ten times the percent of one core that {} rps costs.",
        f.duration.as_secs(),
        f.rate,
        1000.0 / ticks.max(1) as f64 / (f.rate as f64 * f.duration.as_secs_f64() / 1000.0),
        f.rate,
        f.rate,
    );
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("backend") {
        return backend::run(BackendArgs::parse(&args[2..])?);
    }
    if args.len() > 1 {
        bail!(
            "proxy-bench takes no arguments (it is configured with PROXY_BENCH_* variables; \
             `backend` is its internal subcommand)"
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
