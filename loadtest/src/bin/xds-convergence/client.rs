//! One proxyless ADS client: follows LDS -> RDS -> CDS -> EDS as gRPC's xDS client does, ACKs
//! everything, and reports to the driver when it has converged and when it sees a round. When
//! its stream ends it can open a new one after a backoff with jitter, as a proxy does when its
//! control plane restarts; a mirror client also hands the driver everything it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use prost::Message;
use switchboard_xds_proto::pb::envoy::config::route::v3::{route, route_action};
use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use switchboard_xds_proto::service::ads::AggregatedDiscoveryServiceClient;
use switchboard_xds_proto::{
    Any, Cluster, ClusterLoadAssignment, DiscoveryRequest, DiscoveryResponse, HttpConnectionManager,
    Listener, Node, RouteConfiguration, type_url,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::scenario::{MESH, ROUND_BASE, ROUND_SERVICE, SHARED, TENANT};

/// What a client reports to the driver.
pub enum Event {
    /// Holds every resource it subscribed to (the `shared` route at `round`), at `at`,
    /// `after` its stream was opened. Sent again by each new stream after a reconnection.
    Converged {
        client: usize,
        at: Instant,
        after: Duration,
        round: Option<u32>,
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

/// What a mirror client holds once converged, and each time the `shared` route changes: the
/// round, and every resource it holds (of every type).
pub type Held = (u32, Vec<Any>);

/// How a client lives.
#[derive(Clone, Default)]
pub struct Mode {
    /// Open a new stream (after a backoff) when the stream ends, instead of failing.
    pub reconnect: bool,
    /// Keep every resource received and send it here.
    pub mirror: Option<mpsc::UnboundedSender<Held>>,
}

/// Reconnection backoff, gRPC's connection backoff shape: 1 s, times 1.6 per attempt, at most
/// 10 s, each ±20 % at random; at most `MAX_ATTEMPTS` attempts in a row without convergence.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const MAX_ATTEMPTS: u32 = 20;

/// The delay before reconnection attempt `attempt` (0 for the first).
fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_BASE.as_secs_f64() * 1.6f64.powi(attempt.min(16) as i32);
    let capped = base.min(BACKOFF_MAX.as_secs_f64());
    Duration::from_secs_f64(capped * rand::random_range(0.8..1.2))
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
    /// A mirror's resources, by type (LDS, RDS, CDS, EDS) and name.
    held: Option<[BTreeMap<String, Any>; 4]>,
    mirror: Option<mpsc::UnboundedSender<Held>>,
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
    fn index(self) -> usize {
        self as usize
    }

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
    fn new(
        id: usize,
        tx: mpsc::Sender<DiscoveryRequest>,
        mirror: Option<mpsc::UnboundedSender<Held>>,
    ) -> Client {
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
            held: mirror.as_ref().map(|_| Default::default()),
            mirror,
        }
    }

    /// A mirror keeps `response`'s resources; `whole`: they replace those of the type.
    fn keep(&mut self, t: Type, whole: bool, response: &DiscoveryResponse, names: &[String]) {
        if let Some(held) = &mut self.held {
            let map = &mut held[t.index()];
            if whole {
                map.clear();
            }
            for (name, any) in names.iter().zip(&response.resources) {
                map.insert(name.clone(), any.clone());
            }
        }
    }

    /// A mirror hands over everything it holds, at `round`.
    fn hand_over(&self, round: u32) {
        if let (Some(held), Some(mirror)) = (&self.held, &self.mirror) {
            let all = held.iter().flat_map(|m| m.values().cloned()).collect();
            let _ = mirror.send((round, all));
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
                let mut names = Vec::new();
                for any in &response.resources {
                    let l = Listener::decode(any.value.as_slice())?;
                    let rc = route_config_name(&l)?;
                    names.push(l.name.clone());
                    listeners.insert(l.name, rc);
                }
                self.listeners = listeners;
                self.keep(Type::Lds, true, &response, &names);
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
                let mut names = Vec::new();
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
                    names.push(rc.name.clone());
                    self.routes.insert(rc.name, clusters);
                }
                self.keep(Type::Rds, false, &response, &names);
                self.ack(Type::Rds, &response).await?;
                if let Some(round) = shared_round {
                    let acked = Instant::now();
                    if self.converged && self.round != Some(round) {
                        let _ = events.send(Event::Saw {
                            client: self.id,
                            round,
                            acked,
                        });
                        self.hand_over(round);
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
                let mut names = Vec::new();
                for any in &response.resources {
                    let c = Cluster::decode(any.value.as_slice())?;
                    let eds = c
                        .eds_cluster_config
                        .as_ref()
                        .map(|e| e.service_name.clone())
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| c.name.clone());
                    names.push(c.name.clone());
                    clusters.insert(c.name, eds);
                }
                self.clusters = clusters;
                self.keep(Type::Cds, true, &response, &names);
                self.ack(Type::Cds, &response).await?;
                let wanted = self.clusters.values().cloned().collect();
                self.subscribe(Type::Eds, wanted).await?;
            }
            type_url::CLUSTER_LOAD_ASSIGNMENT => {
                let mut names = Vec::new();
                for any in &response.resources {
                    let cla = ClusterLoadAssignment::decode(any.value.as_slice())?;
                    names.push(cla.cluster_name.clone());
                    self.assignments.insert(cla.cluster_name);
                }
                self.keep(Type::Eds, false, &response, &names);
                self.ack(Type::Eds, &response).await?;
            }
            other => bail!("a response of a type never asked for: {other:?}"),
        }
        if !self.converged && self.holds_everything() {
            self.converged = true;
            let _ = events.send(Event::Converged {
                client: self.id,
                at: Instant::now(),
                after: self.opened.elapsed(),
                round: self.round,
            });
            if let Some(round) = self.round {
                self.hand_over(round);
            }
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

/// Runs client `id` on `channel` until its stream ends (an error, unless `mode.reconnect`:
/// then a new stream after a backoff), it is sent something it cannot follow (an error), or
/// the task is aborted. Each stream starts afresh (no versions), so that it is sent everything.
pub async fn run_client(
    id: usize,
    channel: Channel,
    listeners: BTreeSet<String>,
    events: mpsc::UnboundedSender<Event>,
    mode: Mode,
) -> Result<()> {
    let mut attempt = 0u32;
    loop {
        let (tx, rx) = mpsc::channel(16);
        let mut client = Client::new(id, tx, mode.mirror.clone());
        let ended = stream(&mut client, channel.clone(), rx, &listeners, &events).await?;
        if !mode.reconnect {
            return Err(ended);
        }
        if client.converged {
            attempt = 0;
        }
        if attempt >= MAX_ATTEMPTS {
            return Err(ended.context(format!("{MAX_ATTEMPTS} reconnection attempts in a row")));
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

/// One stream: returns why it ended (the server closed it, or it could not be opened), or
/// fails when the client was sent something it cannot follow.
async fn stream(
    client: &mut Client,
    channel: Channel,
    rx: mpsc::Receiver<DiscoveryRequest>,
    listeners: &BTreeSet<String>,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<anyhow::Error> {
    // Queued before the call, so the stream opens with it.
    client.subscribe(Type::Lds, listeners.clone()).await?;
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut responses = match ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok(anyhow!("opening the ADS stream: {status}")),
    };
    loop {
        match responses.message().await {
            Ok(Some(response)) => client.handle(response, events).await?,
            Ok(None) => return Ok(anyhow!("the server closed the stream")),
            Err(status) => return Ok(anyhow!("the stream failed: {status}")),
        }
    }
}
