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
//!    configuration loaded and no stream, with every stream converged, after the rounds, and
//!    once the streams are closed. Also the server's own xDS metrics and any warnings it
//!    logged.
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
//! to the store every 250 ms, and a PUT waits for that write). `LOADTEST_SERVER_LOG` is the
//! child's log filter (`warn`).
//!
//! Run with `scripts/bench`, or after `cargo build --release -p switchboard`:
//! `cargo run --release -p switchboard-loadtest --bin xds-convergence`.
//!
//! The load generator shares the machine with the control plane: on a small machine its
//! 1,000 client tasks compete with the server for CPU, which inflates the figures.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::TryStreamExt;
use prost::Message;
use serde_json::{Value, json};
use switchboard_loadtest::{
    ControlPlane, Memory, Options, Rest, Summary, count_from_env, mib, ms,
};
use switchboard_xds_proto::pb::envoy::config::route::v3::{route, route_action};
use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use switchboard_xds_proto::service::ads::AggregatedDiscoveryServiceClient;
use switchboard_xds_proto::{
    Cluster, ClusterLoadAssignment, DiscoveryRequest, DiscoveryResponse, HttpConnectionManager,
    Listener, Node, RouteConfiguration, type_url,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const ADMIN_TOKEN: &str = "loadtest-admin-token-not-secret";
const TENANT: &str = "t";
const MESH: &str = "m";
/// The route every client sees, and its host name (a listener every client subscribes to).
const SHARED: &str = "shared";
const SHARED_HOST: &str = "shared:8080";
/// The backend of `shared` whose weight encodes the round: `ROUND_BASE + round`.
const ROUND_SERVICE: &str = "svc-0";
const ROUND_BASE: u32 = 100;
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

struct Config {
    streams: usize,
    channels: usize,
    services: usize,
    endpoints: usize,
    rounds: u32,
    converge_timeout: Duration,
    round_timeout: Duration,
    /// Between the end of a round and the next PUT.
    pause: Duration,
    deadline: Duration,
    server_log: String,
}

impl Config {
    fn from_env() -> Result<Config> {
        let secs = |var: &str, default: usize| -> Result<Duration> {
            Ok(Duration::from_secs(count_from_env(var, default)? as u64))
        };
        let c = Config {
            streams: count_from_env("LOADTEST_STREAMS", 1000)?,
            channels: count_from_env("LOADTEST_CHANNELS", 10)?,
            services: count_from_env("LOADTEST_SERVICES", 100)?,
            endpoints: count_from_env("LOADTEST_ENDPOINTS", 3)?,
            rounds: u32::try_from(count_from_env("LOADTEST_ROUNDS", 20)?)?,
            converge_timeout: secs("LOADTEST_CONVERGE_TIMEOUT_SECS", 120)?,
            round_timeout: secs("LOADTEST_ROUND_TIMEOUT_SECS", 30)?,
            pause: Duration::from_millis(count_from_env("LOADTEST_PAUSE_MS", 1000)? as u64),
            deadline: secs("LOADTEST_TIMEOUT_SECS", 900)?,
            server_log: std::env::var("LOADTEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        };
        if c.services < 2 {
            bail!("LOADTEST_SERVICES must be at least 2 (route {SHARED} splits between two)");
        }
        if c.rounds > 1000 - ROUND_BASE {
            bail!(
                "LOADTEST_ROUNDS must be at most {} (a weight encodes the round)",
                1000 - ROUND_BASE
            );
        }
        if c.endpoints > 250 {
            bail!("LOADTEST_ENDPOINTS must be at most 250");
        }
        Ok(c)
    }
}

fn mesh_path() -> String {
    format!("/v1/tenants/{TENANT}/meshes/{MESH}")
}

fn service(i: usize) -> String {
    format!("svc-{i}")
}

/// Route `shared` at `round`: only the weights change from one round to the next.
fn shared_route(round: u32) -> Value {
    json!({"spec": {
        "hostnames": [SHARED_HOST],
        "rules": [{
            "backends": [
                {"service": ROUND_SERVICE, "weight": ROUND_BASE + round},
                {"service": service(1), "weight": 100},
            ],
            "timeout": "5s",
        }],
    }})
}

/// PUTs every `(path, body)`, 8 at a time.
async fn put_all(rest: &Rest, writes: Vec<(String, Value)>) -> Result<()> {
    futures::stream::iter(writes.into_iter().map(Ok::<_, anyhow::Error>))
        .try_for_each_concurrent(8, |(path, body)| async move {
            rest.put(&path, &body).await.map(drop)
        })
        .await
}

/// The mesh, through REST. Returns (endpoints, routes) written.
async fn setup(rest: &Rest, cfg: &Config) -> Result<(usize, usize)> {
    let m = mesh_path();
    rest.post("/v1/tenants", &json!({"name": TENANT})).await?;
    rest.put(&m, &json!({"spec": {"allowUnauthenticatedXds": true}}))
        .await?;
    let services = (0..cfg.services)
        .map(|i| {
            (
                format!("{m}/services/{}", service(i)),
                json!({"spec": {"protocol": "grpc", "port": 8080}}),
            )
        })
        .collect();
    put_all(rest, services).await?;
    let mut endpoints = Vec::new();
    for i in 0..cfg.services {
        for j in 0..cfg.endpoints {
            endpoints.push((
                format!("{m}/endpoints/{}-e{j}", service(i)),
                json!({"spec": {
                    "service": service(i),
                    "address": format!("10.{}.{}.{}", i / 256, i % 256, j + 1),
                    "locality": {"region": "region-1", "zone": ZONES[j % ZONES.len()]},
                }}),
            ));
        }
    }
    let endpoint_count = endpoints.len();
    put_all(rest, endpoints).await?;
    let mut routes: Vec<(String, Value)> = (0..cfg.services)
        .map(|i| {
            let next = service((i + 1) % cfg.services);
            (
                format!("{m}/routes/route-{i}"),
                json!({"spec": {
                    "hostnames": [format!("{}:8080", service(i))],
                    "rules": [
                        {"matches": [{"headers": [{"name": "x-canary", "value": "true"}]}],
                         "backends": [{"service": next}]},
                        {"backends": [{"service": service(i), "weight": 90}, {"service": next, "weight": 10}],
                         "timeout": "2s", "retries": {"attempts": 2}},
                    ],
                }}),
            )
        })
        .collect();
    routes.push((format!("{m}/routes/{SHARED}"), shared_route(0)));
    let route_count = routes.len();
    put_all(rest, routes).await?;
    Ok((endpoint_count, route_count))
}

/// What a client reports to the driver.
enum Event {
    /// Holds every resource it subscribed to, `after` its stream was opened.
    Converged {
        after: Duration,
    },
    /// Has ACKed the RouteConfiguration `shared` of `round`, at `acked`.
    Saw {
        client: usize,
        round: u32,
        acked: Instant,
    },
    Failed {
        client: usize,
        error: String,
    },
}

/// One resource type on one client's stream.
#[derive(Default)]
struct Subscription {
    /// Sorted resource names.
    names: Vec<String>,
    /// Whether the type was requested yet.
    requested: bool,
    /// Of the latest response (which the client always ACKs).
    version: String,
    nonce: String,
}

/// One proxyless client: subscriptions, and what it holds of each type.
struct Client {
    id: usize,
    /// Sent with the first request only.
    node: Option<Node>,
    tx: mpsc::Sender<DiscoveryRequest>,
    opened: Instant,
    lds: Subscription,
    rds: Subscription,
    cds: Subscription,
    eds: Subscription,
    /// Listener → the route configuration it names.
    listeners: BTreeMap<String, String>,
    /// Route configuration → the clusters it names.
    routes: BTreeMap<String, BTreeSet<String>>,
    /// Cluster → its EDS service name.
    clusters: BTreeMap<String, String>,
    assignments: BTreeSet<String>,
    /// The round of the `shared` route configuration last received.
    round: Option<u32>,
    converged: bool,
}

/// Which subscription a type URL is.
#[derive(Clone, Copy)]
enum Type {
    Lds,
    Rds,
    Cds,
    Eds,
}

impl Type {
    fn url(self) -> &'static str {
        match self {
            Type::Lds => type_url::LISTENER,
            Type::Rds => type_url::ROUTE_CONFIGURATION,
            Type::Cds => type_url::CLUSTER,
            Type::Eds => type_url::CLUSTER_LOAD_ASSIGNMENT,
        }
    }
}

fn route_config_name(l: &Listener) -> Result<String> {
    let any = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .with_context(|| format!("listener {} has no api_listener", l.name))?;
    let hcm = HttpConnectionManager::decode(any.value.as_slice())
        .with_context(|| format!("listener {}: api_listener", l.name))?;
    match hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => Ok(rds.route_config_name),
        _ => bail!("listener {} does not take its routes from RDS", l.name),
    }
}

/// The clusters a route configuration names, and (for `shared`) the round it encodes.
fn clusters_and_round(rc: &RouteConfiguration) -> (BTreeSet<String>, Option<u32>) {
    let mut clusters = BTreeSet::new();
    let mut round = None;
    let routes = rc.virtual_hosts.iter().flat_map(|vh| vh.routes.iter());
    for r in routes {
        let Some(route::Action::Route(action)) = &r.action else {
            continue;
        };
        match &action.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => {
                clusters.insert(c.clone());
            }
            Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                for c in &w.clusters {
                    clusters.insert(c.name.clone());
                    if rc.name == SHARED && c.name == ROUND_SERVICE {
                        round = c
                            .weight
                            .as_ref()
                            .map(|w| w.value.saturating_sub(ROUND_BASE));
                    }
                }
            }
            _ => {}
        }
    }
    (clusters, round)
}

impl Client {
    fn new(id: usize, tx: mpsc::Sender<DiscoveryRequest>) -> Client {
        Client {
            id,
            node: Some(Node {
                id: format!("tenants/{TENANT}/meshes/{MESH}/nodes/n-{id}"),
                user_agent_name: "switchboard-loadtest".into(),
                ..Default::default()
            }),
            tx,
            opened: Instant::now(),
            lds: Subscription::default(),
            rds: Subscription::default(),
            cds: Subscription::default(),
            eds: Subscription::default(),
            listeners: BTreeMap::new(),
            routes: BTreeMap::new(),
            clusters: BTreeMap::new(),
            assignments: BTreeSet::new(),
            round: None,
            converged: false,
        }
    }

    fn sub(&mut self, t: Type) -> &mut Subscription {
        match t {
            Type::Lds => &mut self.lds,
            Type::Rds => &mut self.rds,
            Type::Cds => &mut self.cds,
            Type::Eds => &mut self.eds,
        }
    }

    async fn send(&mut self, t: Type) -> Result<()> {
        let node = self.node.take();
        let s = self.sub(t);
        let request = DiscoveryRequest {
            version_info: s.version.clone(),
            node,
            resource_names: s.names.clone(),
            type_url: t.url().to_owned(),
            response_nonce: s.nonce.clone(),
            ..Default::default()
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| anyhow!("the request stream is closed"))
    }

    /// ACKs `response` (of type `t`), keeping the subscription.
    async fn ack(&mut self, t: Type, response: &DiscoveryResponse) -> Result<()> {
        let s = self.sub(t);
        s.version.clone_from(&response.version_info);
        s.nonce.clone_from(&response.nonce);
        self.send(t).await
    }

    /// Subscribes to `wanted` of type `t` if that differs from the subscription, carrying the
    /// type's latest version and nonce. Never sends a first request without names (that
    /// would be a wildcard subscription).
    async fn subscribe(&mut self, t: Type, wanted: BTreeSet<String>) -> Result<()> {
        let wanted: Vec<String> = wanted.into_iter().collect();
        let s = self.sub(t);
        if (s.requested && s.names == wanted) || (!s.requested && wanted.is_empty()) {
            return Ok(());
        }
        s.names = wanted;
        s.requested = true;
        self.send(t).await
    }

    async fn handle(
        &mut self,
        response: DiscoveryResponse,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<()> {
        match response.type_url.as_str() {
            type_url::LISTENER => {
                // Listener responses carry the whole subscription.
                let mut listeners = BTreeMap::new();
                for any in &response.resources {
                    let l = Listener::decode(any.value.as_slice())?;
                    let rc = route_config_name(&l)?;
                    listeners.insert(l.name, rc);
                }
                self.listeners = listeners;
                self.ack(Type::Lds, &response).await?;
                let wanted = self
                    .lds
                    .names
                    .iter()
                    .filter_map(|n| self.listeners.get(n).cloned())
                    .collect();
                self.subscribe(Type::Rds, wanted).await?;
            }
            type_url::ROUTE_CONFIGURATION => {
                // Route configuration responses carry what changed or was newly asked for.
                let mut shared_round = None;
                for any in &response.resources {
                    let rc = RouteConfiguration::decode(any.value.as_slice())?;
                    let (clusters, round) = clusters_and_round(&rc);
                    if rc.name == SHARED {
                        shared_round = Some(round.with_context(|| {
                            format!(
                                "route configuration {SHARED} has no weight for {ROUND_SERVICE}"
                            )
                        })?);
                    }
                    self.routes.insert(rc.name, clusters);
                }
                self.ack(Type::Rds, &response).await?;
                if let Some(round) = shared_round {
                    let acked = Instant::now();
                    if self.converged && self.round != Some(round) {
                        let _ = events.send(Event::Saw {
                            client: self.id,
                            round,
                            acked,
                        });
                    }
                    self.round = Some(round);
                }
                let wanted = self
                    .rds
                    .names
                    .iter()
                    .filter_map(|n| self.routes.get(n))
                    .flatten()
                    .cloned()
                    .collect();
                self.subscribe(Type::Cds, wanted).await?;
            }
            type_url::CLUSTER => {
                // Cluster responses carry the whole subscription.
                let mut clusters = BTreeMap::new();
                for any in &response.resources {
                    let c = Cluster::decode(any.value.as_slice())?;
                    let eds = c
                        .eds_cluster_config
                        .as_ref()
                        .map(|e| e.service_name.clone())
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| c.name.clone());
                    clusters.insert(c.name, eds);
                }
                self.clusters = clusters;
                self.ack(Type::Cds, &response).await?;
                let wanted = self.clusters.values().cloned().collect();
                self.subscribe(Type::Eds, wanted).await?;
            }
            type_url::CLUSTER_LOAD_ASSIGNMENT => {
                for any in &response.resources {
                    let cla = ClusterLoadAssignment::decode(any.value.as_slice())?;
                    self.assignments.insert(cla.cluster_name);
                }
                self.ack(Type::Eds, &response).await?;
            }
            other => bail!("a response of a type never asked for: {other:?}"),
        }
        if !self.converged && self.holds_everything() {
            self.converged = true;
            let _ = events.send(Event::Converged {
                after: self.opened.elapsed(),
            });
        }
        Ok(())
    }

    fn holds_everything(&self) -> bool {
        let all = |s: &Subscription, held: &dyn Fn(&str) -> bool| {
            s.requested && s.names.iter().all(|n| held(n))
        };
        all(&self.lds, &|n| self.listeners.contains_key(n))
            && all(&self.rds, &|n| self.routes.contains_key(n))
            && all(&self.cds, &|n| self.clusters.contains_key(n))
            && all(&self.eds, &|n| self.assignments.contains(n))
    }
}

/// Runs client `id` on `channel` until its stream ends (an error) or the task is aborted.
async fn run_client(
    id: usize,
    channel: Channel,
    listeners: BTreeSet<String>,
    events: mpsc::UnboundedSender<Event>,
) -> Result<()> {
    let (tx, rx) = mpsc::channel(16);
    let mut client = Client::new(id, tx);
    // Queued before the call, so the stream opens with it.
    client.subscribe(Type::Lds, listeners).await?;
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut responses = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .context("opening the ADS stream")?
        .into_inner();
    loop {
        match responses.message().await {
            Ok(Some(response)) => client.handle(response, &events).await?,
            Ok(None) => bail!("the server closed the stream"),
            Err(status) => bail!("the stream failed: {status}"),
        }
    }
}

struct RoundRow {
    round: u32,
    put: Duration,
    got: usize,
    summary: Summary,
}

/// The server's xDS metrics that matter here, summed per type label.
fn metrics_summary(text: &str) -> Vec<String> {
    let mut sums: BTreeMap<(String, String), f64> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let wanted = [
            "switchboard_xds_pushes_total",
            "switchboard_xds_nacks_total",
            "switchboard_xds_convergence_seconds_sum",
            "switchboard_xds_convergence_seconds_count",
            "switchboard_xds_snapshot_build_seconds_sum",
            "switchboard_xds_snapshot_build_seconds_count",
        ];
        if !wanted.contains(&name) {
            continue;
        }
        let t = labels
            .split_once("type=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or("", |(t, _)| t);
        *sums.entry((name.to_owned(), t.to_owned())).or_default() += value;
    }
    let get = |name: &str, t: &str| sums.get(&(name.to_owned(), t.to_owned())).copied();
    let mut out = Vec::new();
    let mut pushes = Vec::new();
    let mut convergence = Vec::new();
    let mut nacks = 0.0;
    for t in ["LDS", "RDS", "CDS", "EDS"] {
        if let Some(p) = get("switchboard_xds_pushes_total", t) {
            pushes.push(format!("{t} {p}"));
        }
        nacks += get("switchboard_xds_nacks_total", t).unwrap_or(0.0);
        if let (Some(sum), Some(count)) = (
            get("switchboard_xds_convergence_seconds_sum", t),
            get("switchboard_xds_convergence_seconds_count", t),
        ) && count > 0.0
        {
            convergence.push(format!("{t} {:.2} ms over {count}", sum / count * 1000.0));
        }
    }
    out.push(format!("pushes: {}; NACKs: {nacks}", pushes.join(", ")));
    if !convergence.is_empty() {
        out.push(format!(
            "convergence as the server measures it (commit notice to ACK), mean: {}",
            convergence.join(", ")
        ));
    }
    if let (Some(sum), Some(count)) = (
        get("switchboard_xds_snapshot_build_seconds_sum", ""),
        get("switchboard_xds_snapshot_build_seconds_count", ""),
    ) && count > 0.0
    {
        out.push(format!(
            "snapshot builds: {count}, mean {:.2} ms",
            sum / count * 1000.0
        ));
    }
    out
}

async fn run(cfg: &Config, cp: &mut ControlPlane) -> Result<()> {
    let rest = Rest::new(&cp.rest_url, ADMIN_TOKEN, Duration::from_secs(30))?;
    println!(
        "xds-convergence: {} control plane (pid {}), {} ADS streams over {} HTTP/2 connections, \
         {} services, {} rounds {} ms apart",
        cp.backend,
        cp.pid(),
        cfg.streams,
        cfg.channels,
        cfg.services,
        cfg.rounds,
        cfg.pause.as_millis()
    );

    let started = Instant::now();
    let (endpoints, routes) = setup(&rest, cfg).await?;
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
    let opened = Instant::now();
    for i in 0..cfg.streams {
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
    }
    drop(events_tx);
    let mut per_stream = Vec::with_capacity(cfg.streams);
    let deadline = tokio::time::Instant::from_std(opened + cfg.converge_timeout);
    while per_stream.len() < cfg.streams {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Converged { after })) => per_stream.push(after),
            Ok(Some(Event::Failed { client, error })) => bail!("client n-{client}: {error}"),
            Ok(Some(Event::Saw { .. })) => {}
            Ok(None) => bail!("every client ended"),
            Err(_) => bail!(
                "only {} of {} streams converged within {:?}",
                per_stream.len(),
                cfg.streams,
                cfg.converge_timeout
            ),
        }
    }
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
        // proxies' new status) before the next.
        tokio::time::sleep(cfg.pause).await;
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

    cp.check_alive()?;
    let after_rounds = cp.memory()?;
    let metrics = rest
        .get_text(&format!("{}/metrics", cp.admin_url))
        .await
        .unwrap_or_else(|e| format!("# {e:#}"));
    clients.abort_all();
    while clients.join_next().await.is_some() {}
    drop(channels);
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    mem_row(&format!("{} streams converged", cfg.streams), loaded);
    mem_row(&format!("after {} rounds", cfg.rounds), after_rounds);
    mem_row("streams closed (+2 s)", closed);
    let per_stream_kib = loaded.rss_kib.saturating_sub(idle.rss_kib) as f64 / cfg.streams as f64;
    println!(
        "({:.1} KiB of RSS per stream, counting the mesh's snapshot, which is loaded with the first stream)",
        per_stream_kib
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

fn main() -> Result<()> {
    // `cargo run` passes nothing; any arguments are ignored.
    let cfg = Config::from_env()?;
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
