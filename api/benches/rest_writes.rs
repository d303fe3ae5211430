//! Write throughput and latency of the REST API over a real socket, on SQLite and, when
//! `SWITCHBOARD_TEST_DATABASE_URL` is set (`scripts/bench` starts a throwaway cluster), on
//! PostgreSQL.
//!
//! Not criterion: a bounded workload that prints figures. Per backend: a fresh store, the API
//! router served by axum on 127.0.0.1:0 inside this process, reqwest clients with keep-alive.
//! Setup (not timed): a tenant, a mesh and `BENCH_SERVICES` (1,000) services. Timed phases:
//!
//! - `create x1`: `BENCH_ROUTES` (2,000) route creates, one after another from one client;
//!   each route has its own host name and one rule with 1 to 3 weighted backends;
//! - `update x1`: a PUT of each of those routes (other backends and weights), with If-Match of
//!   the etag its create returned;
//! - `create xN`, `update xN`: the same for `BENCH_ROUTES` further routes, split among
//!   `BENCH_CONCURRENCY` (8) clients running at once, each on its own route names.
//!
//! Every response must be 2xx: the first that is not ends the run with a non-zero exit.
//! Run with `scripts/bench`, or `cargo bench -p switchboard-api --bench rest_writes` for
//! SQLite only.

use anyhow::{Context, Result, bail};
use axum::serve::ListenerExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_MATCH};
use reqwest::{Client, Method};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_api::{AdminToken, AppState, NodeConfigFuture, NodeConfigs, router};
use switchboard_loadtest::{Summary, ms};
use switchboard_store::{Backend, testing};
use tokio::task::JoinSet;

const ADMIN_TOKEN: &str = "bench-admin-token";
const TENANT: &str = "bench";
const MESH: &str = "mesh";

/// No proxy is connected: the benchmark writes configuration only.
struct NoStreams;

impl NodeConfigs for NoStreams {
    fn node_config<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> NodeConfigFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}

struct Counts {
    services: usize,
    routes: usize,
    concurrency: usize,
}

impl Counts {
    fn from_env() -> Result<Counts> {
        Ok(Counts {
            services: count("BENCH_SERVICES", 1000)?,
            routes: count("BENCH_ROUTES", 2000)?,
            concurrency: count("BENCH_CONCURRENCY", 8)?,
        })
    }
}

fn count(var: &str, default: usize) -> Result<usize> {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{var}={v:?}: expected a whole number above 0"),
        },
        Err(e) => bail!("{var}: {e}"),
    }
}

/// One write, prepared before the clock starts.
struct Write {
    method: Method,
    path: String,
    body: serde_json::Value,
    if_match: Option<String>,
}

/// What one client did: the latency of each write and the etag each returned, in order.
#[derive(Default)]
struct ClientRun {
    latencies: Vec<Duration>,
    etags: Vec<Option<String>>,
}

/// One timed phase.
struct Stats {
    backend: &'static str,
    phase: String,
    clients: usize,
    writes: usize,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Stats {
    fn new(
        backend: &'static str,
        phase: String,
        clients: usize,
        wall: Duration,
        runs: &[ClientRun],
    ) -> Stats {
        let all: Vec<Duration> = runs
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect();
        let summary = Summary::of(&all);
        Stats {
            backend,
            phase,
            clients,
            writes: summary.count,
            wall,
            p50: summary.p50,
            p99: summary.p99,
            max: summary.max,
        }
    }

    fn per_sec(&self) -> f64 {
        self.writes as f64 / self.wall.as_secs_f64().max(f64::EPSILON)
    }
}

/// Sends each client's writes one after another, all clients at once. Returns the wall time
/// and each client's run; fails on the first transport error or non-2xx response.
async fn drive(
    base: &str,
    clients: &[Client],
    work: Vec<Vec<Write>>,
) -> Result<(Duration, Vec<ClientRun>)> {
    // Build every request (URL parsing, body serialisation) before the clock starts.
    let mut prepared = Vec::with_capacity(work.len());
    for (client, writes) in clients.iter().zip(work) {
        let mut reqs = Vec::with_capacity(writes.len());
        for w in writes {
            let mut b = client
                .request(w.method, format!("{base}{}", w.path))
                .header(CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(&w.body)?);
            if let Some(tag) = w.if_match {
                b = b.header(IF_MATCH, tag);
            }
            reqs.push(b.build()?);
        }
        prepared.push((client.clone(), reqs));
    }

    let start = Instant::now();
    let mut set = JoinSet::new();
    for (i, (client, reqs)) in prepared.into_iter().enumerate() {
        set.spawn(async move { (i, run_client(client, reqs).await) });
    }
    let mut runs: Vec<ClientRun> = std::iter::repeat_with(ClientRun::default)
        .take(clients.len())
        .collect();
    while let Some(joined) = set.join_next().await {
        let (i, run) = joined.context("a client task panicked")?;
        // Returning drops `set`, which aborts the other clients.
        runs[i] = run?;
    }
    Ok((start.elapsed(), runs))
}

async fn run_client(client: Client, reqs: Vec<reqwest::Request>) -> Result<ClientRun> {
    let mut run = ClientRun {
        latencies: Vec::with_capacity(reqs.len()),
        etags: Vec::with_capacity(reqs.len()),
    };
    for req in reqs {
        let what = format!("{} {}", req.method(), req.url().path());
        let t = Instant::now();
        let resp = client.execute(req).await.with_context(|| what.clone())?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Read the whole body so the connection goes back to the pool for the next write.
        let body = resp.bytes().await.with_context(|| what.clone())?;
        let latency = t.elapsed();
        if !status.is_success() {
            bail!("{what}: {status}: {}", String::from_utf8_lossy(&body));
        }
        run.latencies.push(latency);
        run.etags.push(etag);
    }
    Ok(run)
}

/// splitmix64: cheap, deterministic pseudo-randomness for picking backends and weights.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// Route `k`'s body at `version` (0 on create, 1 on update): its own host name and one rule
/// with 1 to 3 distinct backends of weight 1 to 100, chosen from `seed`.
fn route_body(name: &str, k: usize, version: u64, services: usize) -> serde_json::Value {
    let seed = mix(((k as u64) << 1) | version);
    let n = (1 + (seed % 3) as usize).min(services);
    let first = (seed >> 8) as usize % services;
    let stride = (services / 3).max(1);
    let backends: Vec<_> = (0..n)
        .map(|j| {
            let weight = 1 + (mix(seed ^ j as u64) % 100);
            json!({ "service": service_name((first + j * stride) % services), "weight": weight })
        })
        .collect();
    json!({
        "name": name,
        "spec": {
            "hostnames": [format!("{name}.bench.internal")],
            "rules": [{ "backends": backends }],
        },
    })
}

/// A route to write: its name and its index `k` (which seeds its body).
struct RouteRef {
    name: String,
    k: usize,
}

fn creates(routes: &[Vec<RouteRef>], services: usize) -> Vec<Vec<Write>> {
    let path = format!("/v1/tenants/{TENANT}/meshes/{MESH}/routes");
    routes
        .iter()
        .map(|rs| {
            rs.iter()
                .map(|r| Write {
                    method: Method::POST,
                    path: path.clone(),
                    body: route_body(&r.name, r.k, 0, services),
                    if_match: None,
                })
                .collect()
        })
        .collect()
}

fn updates(
    routes: &[Vec<RouteRef>],
    created: &[ClientRun],
    services: usize,
) -> Result<Vec<Vec<Write>>> {
    let mut work = Vec::with_capacity(routes.len());
    for (rs, run) in routes.iter().zip(created) {
        let mut writes = Vec::with_capacity(rs.len());
        for (r, etag) in rs.iter().zip(&run.etags) {
            let Some(etag) = etag else {
                bail!("creating route {} returned no ETag", r.name);
            };
            writes.push(Write {
                method: Method::PUT,
                path: format!("/v1/tenants/{TENANT}/meshes/{MESH}/routes/{}", r.name),
                body: route_body(&r.name, r.k, 1, services),
                if_match: Some(etag.clone()),
            });
        }
        work.push(writes);
    }
    Ok(work)
}

fn clients(n: usize) -> Result<Vec<Client>> {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {ADMIN_TOKEN}"))?,
    );
    (0..n)
        .map(|_| {
            Client::builder()
                .default_headers(headers.clone())
                .tcp_nodelay(true)
                .pool_idle_timeout(None)
                .build()
                .context("building an HTTP client")
        })
        .collect()
}

fn report(s: &Stats) {
    println!(
        "{:<8} {:<9} {:>6} writes in {:>6.2} s: {:>8.1} writes/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
        s.backend,
        s.phase,
        s.writes,
        s.wall.as_secs_f64(),
        s.per_sec(),
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
    );
}

async fn bench(
    backend: Backend,
    label: &'static str,
    counts: &Counts,
) -> Result<Option<Vec<Stats>>> {
    // `_db` keeps the SQLite file's directory alive until the end.
    let Some((store, _db)) = testing::store(backend).await else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = router(AppState {
        store,
        admin: AdminToken::new(ADMIN_TOKEN),
        node_configs: Arc::new(NoStreams),
        kek: Arc::new(switchboard_pki::Kek::parse(&"11".repeat(32))?),
    });
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let result = phases(&format!("http://{addr}"), label, counts).await;
    server.abort();
    result.map(Some)
}

async fn phases(base: &str, label: &'static str, counts: &Counts) -> Result<Vec<Stats>> {
    let one = clients(1)?;
    let many = clients(counts.concurrency)?;

    // Setup, not timed: the tenant, the mesh, then the services from all clients at once.
    let setup = Instant::now();
    let tenant = Write {
        method: Method::POST,
        path: "/v1/tenants".into(),
        body: json!({ "name": TENANT }),
        if_match: None,
    };
    let mesh = Write {
        method: Method::POST,
        path: format!("/v1/tenants/{TENANT}/meshes"),
        body: json!({ "name": MESH, "spec": {} }),
        if_match: None,
    };
    drive(base, &one, vec![vec![tenant, mesh]]).await?;
    let mut services: Vec<Vec<Write>> = (0..many.len()).map(|_| Vec::new()).collect();
    for i in 0..counts.services {
        services[i % many.len()].push(Write {
            method: Method::POST,
            path: format!("/v1/tenants/{TENANT}/meshes/{MESH}/services"),
            body: json!({ "name": service_name(i), "spec": { "port": 8080 } }),
            if_match: None,
        });
    }
    drive(base, &many, services).await?;
    println!(
        "{label:<8} setup: tenant, mesh and {} services in {:.2} s",
        counts.services,
        setup.elapsed().as_secs_f64()
    );

    let mut stats = Vec::new();
    let mut phase = |name: String, clients: usize, wall: Duration, runs: &[ClientRun]| {
        let s = Stats::new(label, name, clients, wall, runs);
        report(&s);
        stats.push(s);
    };

    // Sequential: one client, one write at a time.
    let seq = vec![
        (0..counts.routes)
            .map(|k| RouteRef {
                name: format!("seq-{k:05}"),
                k,
            })
            .collect::<Vec<_>>(),
    ];
    let (wall, created) = drive(base, &one, creates(&seq, counts.services)).await?;
    phase("create x1".into(), 1, wall, &created);
    let (wall, updated) = drive(base, &one, updates(&seq, &created, counts.services)?).await?;
    phase("update x1".into(), 1, wall, &updated);

    // Concurrent: the clients at once, each on its own route names.
    let c = many.len();
    let mut conc: Vec<Vec<RouteRef>> = (0..c).map(|_| Vec::new()).collect();
    for i in 0..counts.routes {
        let client = i % c;
        conc[client].push(RouteRef {
            name: format!("c{client}-{:05}", i / c),
            k: counts.routes + i,
        });
    }
    let (wall, created) = drive(base, &many, creates(&conc, counts.services)).await?;
    phase(format!("create x{c}"), c, wall, &created);
    let (wall, updated) = drive(base, &many, updates(&conc, &created, counts.services)?).await?;
    phase(format!("update x{c}"), c, wall, &updated);

    Ok(stats)
}

fn table(all: &[Stats]) {
    println!();
    println!(
        "{:<8} {:<9} {:>7} {:>7} {:>9} {:>8} {:>8} {:>8}",
        "backend", "phase", "clients", "writes", "writes/s", "p50 ms", "p99 ms", "max ms"
    );
    for s in all {
        println!(
            "{:<8} {:<9} {:>7} {:>7} {:>9.1} {:>8.2} {:>8.2} {:>8.2}",
            s.backend,
            s.phase,
            s.clients,
            s.writes,
            s.per_sec(),
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
        );
    }
}

fn main() -> Result<()> {
    // cargo bench passes `--bench` (and any filter); this binary has nothing to select.
    let counts = Counts::from_env()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "rest_writes: {} services, {} routes per phase, {} concurrent clients",
            counts.services, counts.routes, counts.concurrency
        );
        let mut all = Vec::new();
        for (backend, label) in [(Backend::Sqlite, "sqlite"), (Backend::Postgres, "postgres")] {
            if let Some(stats) = bench(backend, label, &counts)
                .await
                .with_context(|| format!("the {label} run"))?
            {
                all.extend(stats);
            }
        }
        table(&all);
        Ok(())
    })
}
