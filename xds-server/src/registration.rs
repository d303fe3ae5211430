//! Sidecar self-registration (DESIGN.md): "A connected sidecar registers itself as an endpoint
//! of its service; it leaves when its stream has been gone for a grace period."
//!
//! When a stream of a sidecar (node metadata `role: sidecar`) is admitted with a proxy token,
//! the stream sends [`Event::Register`] through the [`Registrar`]; when the stream ends, the
//! guard it holds sends [`Event::Deregister`]. Anonymous streams never write to the store.
//! One task per replica owns all the state and does all the store work, so a stream's own
//! path never waits on the database:
//!
//! - **Register**: the endpoint `sidecar-{node}` ([`endpoint_name`]) of the sidecar's service,
//!   at metadata `address` or else the stream's peer IP, port `inbound_port`, weight 1, the
//!   node's locality. It is written through the REST API's validation (`Spec::parse`,
//!   `validate`, references), and not at all when the stored endpoint already has that spec:
//!   a reconnect does not bump the revision. A missing service is logged and retried when
//!   the service is created, or every [`RETRY`].
//! - **Deregister**: when a node has no stream left on this replica, its endpoint is deleted
//!   after the grace period, unless the node came back here, or holds a stream on another
//!   replica (the `proxies` table every replica keeps current), and only with `If-Match` the
//!   etag this replica wrote or found: an endpoint a user has replaced since is left alone.
//! - **Healing**: the task reads the change log of tenants with registered sidecars; when a
//!   connected sidecar's endpoint is deleted (by a user, or by another replica whose grace
//!   period ended just as the node moved here), it is written again.
//!
//! - **Sweeping**: a registered endpoint names its node (`spec.node`). Every replica
//!   periodically lists them and deletes, with `If-Match`, those whose node has had no live
//!   stream on any replica, nor a grace period running here, for the grace period.
//!
//! A replica that stops simply stops: its sidecars reconnect elsewhere within the grace
//! period, and nothing is deleted at shutdown. An endpoint whose grace period was running
//! on a replica that stopped is swept by the others.
//!
//! Metrics: `switchboard_sidecar_registrations_total{tenant}` (endpoints written) and
//! `switchboard_sidecar_deregistrations_total{tenant}` (endpoints deleted).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};
use switchboard_model::{Kind, Spec, ValidationErrors, validate_name};
use switchboard_store::{
    ChangeOp, Notice, PROXY_STALE_MS, Precondition, ResourceKey, Store, StoreError, WriteOptions,
};
use switchboard_translator::SidecarParams;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::node::{NodeId, SidecarEndpointMeta};

/// Every endpoint name a sidecar registers starts with this.
pub const ENDPOINT_PREFIX: &str = "sidecar-";

/// How often an endpoint whose service does not exist is tried again (also tried as soon as
/// the service is created).
pub const RETRY: Duration = Duration::from_secs(30);

/// How soon store work that failed (database unreachable) is tried again.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// Events taken, and nodes worked on, per round of the task.
const BATCH: usize = 256;

/// Changes read per tenant per round.
const CHANGE_LIMIT: u32 = 1000;

/// Writes tried in a row when another writer keeps changing the endpoint.
const WRITE_ATTEMPTS: usize = 3;

/// The longest name a resource may have (a DNS label).
const MAX_NAME: usize = 63;

/// The hex digits of the hash suffix of an altered node name.
const HASH_LEN: usize = 8;

/// The default grace period (setting `sidecar_grace_period`).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Parses a grace period as every Switchboard duration is written (`30s`, `1m30s`, `500ms`).
pub fn parse_grace_period(text: &str) -> Result<Duration, String> {
    switchboard_model::duration::parse(text).map(|d| d.as_std())
}

/// The endpoint a sidecar registers as: `sidecar-{node name}` when the node name is already a
/// valid resource name, else the node name lowercased, with every character a name cannot
/// hold turned into `-`, cut to fit, and a short hash of the original name appended so two
/// names that alter alike stay apart. Deterministic: every replica derives the same name.
pub fn endpoint_name(node_name: &str) -> String {
    let plain = format!("{ENDPOINT_PREFIX}{node_name}");
    if validate_name("name", &plain).is_ok() {
        return plain;
    }
    let hash = hex::encode(Sha256::digest(node_name.as_bytes()));
    let hash = &hash[..HASH_LEN];
    let room = MAX_NAME - ENDPOINT_PREFIX.len() - HASH_LEN - 1;
    let body: String = node_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(room)
        .collect();
    let body = body.trim_matches('-');
    if body.is_empty() {
        format!("{ENDPOINT_PREFIX}{hash}")
    } else {
        format!("{ENDPOINT_PREFIX}{body}-{hash}")
    }
}

/// Why a sidecar cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error(
        "no address to register: the node metadata has no address and the stream's peer \
         address is unknown"
    )]
    NoAddress,
    #[error("the endpoint would not be valid: {0}")]
    Invalid(#[from] ValidationErrors),
}

/// The endpoint a sidecar stream asks for, validated as a REST write would be.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub name: String,
    pub spec: Spec,
}

impl Desired {
    /// The endpoint of a sidecar named `node_name` with `params` and `meta`, reached at
    /// `meta.address` or else at `peer`'s IP.
    pub fn new(
        node_name: &str,
        params: &SidecarParams,
        meta: &SidecarEndpointMeta,
        peer: Option<SocketAddr>,
    ) -> Result<Desired, DesiredError> {
        let address: IpAddr = meta
            .address
            .or_else(|| peer.map(|p| p.ip().to_canonical()))
            .ok_or(DesiredError::NoAddress)?;
        let name = endpoint_name(node_name);
        validate_name("name", &name).map_err(|e| ValidationErrors(vec![e]))?;
        let spec = Spec::parse(
            Kind::Endpoint,
            serde_json::json!({
                "service": params.service,
                "address": address.to_string(),
                "port": params.inbound_port,
                "weight": 1,
                "locality": {
                    "region": meta.region,
                    "zone": meta.zone,
                    "subZone": meta.sub_zone,
                },
                "node": node_name,
            }),
        )?;
        spec.validate()?;
        Ok(Desired { name, spec })
    }

    fn service(&self) -> &str {
        match &self.spec {
            Spec::Endpoint(e) => &e.service,
            _ => "",
        }
    }
}

/// What streams tell the registration task.
#[derive(Debug)]
pub(crate) enum Event {
    Register {
        stream: u64,
        node: NodeId,
        desired: Desired,
    },
    Deregister {
        stream: u64,
        node: NodeId,
    },
}

/// The streams' side of the registration task: off until [`spawn`] starts the task.
#[derive(Debug, Default)]
pub(crate) struct Registrar {
    tx: OnceLock<mpsc::UnboundedSender<Event>>,
}

impl Registrar {
    /// Registers stream `stream` of `node`; the endpoint is deregistered (after the grace
    /// period) once the returned guard of every stream of the node has dropped. `None` when
    /// registration is off.
    pub(crate) fn register(
        &self,
        stream: u64,
        node: &NodeId,
        desired: Desired,
    ) -> Option<Registered> {
        let tx = self.tx.get()?;
        tx.send(Event::Register {
            stream,
            node: node.clone(),
            desired,
        })
        .ok()?;
        Some(Registered {
            tx: tx.clone(),
            stream,
            node: node.clone(),
        })
    }

    /// Whether the registration task was started.
    pub(crate) fn enabled(&self) -> bool {
        self.tx.get().is_some()
    }
}

/// Held by a registered stream; its drop tells the task the stream ended.
#[derive(Debug)]
pub(crate) struct Registered {
    tx: mpsc::UnboundedSender<Event>,
    stream: u64,
    node: NodeId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = self.tx.send(Event::Deregister {
            stream: self.stream,
            node: self.node.clone(),
        });
    }
}

/// Starts the registration task for `registrar`'s streams. It runs until every stream guard
/// and the registrar are gone; pending grace periods are then abandoned, not cut short.
pub(crate) fn spawn(
    store: Store,
    registrar: &Registrar,
    replica: String,
    grace: Duration,
) -> JoinHandle<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    if registrar.tx.set(tx).is_err() {
        tracing::warn!("sidecar registration was already started; not starting it twice");
        return tokio::spawn(async {});
    }
    let task = Task {
        notices: Some(store.subscribe()),
        store,
        replica,
        grace,
        rx,
        nodes: HashMap::new(),
        per_tenant: HashMap::new(),
        tenants: HashMap::new(),
        next_sweep: Instant::now(),
        absent: HashMap::new(),
    };
    tokio::spawn(task.run())
}

/// What the task does next for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Nothing: the endpoint is as the node's newest stream wants it.
    Idle,
    /// Write (or check) the endpoint at `at`. `missing_service`: the last try found no
    /// service, so creating it retries at once.
    Register { at: Instant, missing_service: bool },
    /// Delete the endpoint at `at` unless the node is back. `rechecked`: the node was seen
    /// on another replica once already.
    Deregister { at: Instant, rechecked: bool },
}

impl Next {
    fn at(self) -> Option<Instant> {
        match self {
            Next::Idle => None,
            Next::Register { at, .. } | Next::Deregister { at, .. } => Some(at),
        }
    }
}

/// One node's registration on this replica.
#[derive(Debug)]
struct Entry {
    /// The node's open streams on this replica and what each asks for.
    streams: BTreeMap<u64, Desired>,
    /// The etag of the endpoint as this replica last wrote or found it with the wanted spec:
    /// the only version it will delete.
    etag: Option<String>,
    /// The endpoint's name (the same for every stream of the node).
    name: String,
    next: Next,
}

impl Entry {
    /// What the node's newest stream asks for.
    fn desired(&self) -> Option<&Desired> {
        self.streams.values().next_back()
    }
}

/// A tenant with registrations here: the change log is read from `seen` on.
#[derive(Debug)]
struct TenantWatch {
    seen: i64,
    /// A notice came after `seen`.
    pending: bool,
    /// When the change log may be read again after a failure.
    retry_at: Option<Instant>,
}

struct Task {
    store: Store,
    replica: String,
    grace: Duration,
    rx: mpsc::UnboundedReceiver<Event>,
    /// `None` once the store's notices closed.
    notices: Option<tokio::sync::broadcast::Receiver<Notice>>,
    nodes: HashMap<NodeId, Entry>,
    /// How many entries of `nodes` each tenant has.
    per_tenant: HashMap<String, usize>,
    tenants: HashMap<String, TenantWatch>,
    /// When [`Task::sweep`] runs next.
    next_sweep: Instant,
    /// Registered endpoints (tenant, mesh, endpoint name) whose node no replica holds a
    /// stream of: since when this task has seen it so, at which etag.
    absent: HashMap<(String, String, String), (Instant, String)>,
}

/// How often a replica sweeps for registered endpoints that no replica looks after:
/// half the grace period, within 100 ms and 1 min.
fn sweep_every(grace: Duration) -> Duration {
    (grace / 2).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// How long a node must be seen without a stream before its endpoint is swept: the grace
/// period, but never less than a few status syncs, since a new stream's `proxies` row
/// appears up to one sync interval after the stream (and its endpoint) does.
fn sweep_after(grace: Duration) -> Duration {
    grace.max(crate::report::SYNC_INTERVAL * 4)
}

/// How a write went.
enum Upserted {
    /// The endpoint already had the spec; nothing was written.
    Unchanged(String),
    /// Written at this etag.
    Written(String),
}

#[derive(Debug, thiserror::Error)]
enum UpsertError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the endpoint kept changing while it was being written")]
    Contended,
}

impl Task {
    async fn run(mut self) {
        loop {
            let deadline = self.deadline();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(event) => self.apply(event),
                    None => return,
                },
                notice = recv_notice(&mut self.notices) => self.notice(notice),
                () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {}
                () = tokio::time::sleep_until(self.next_sweep) => self.sweep().await,
            }
            // Take what else is queued, so reconnect storms coalesce per node and bursts of
            // commits per tenant.
            for _ in 0..BATCH {
                match self.rx.try_recv() {
                    Ok(event) => self.apply(event),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            for _ in 0..BATCH {
                let Some(rx) = self.notices.as_mut() else {
                    break;
                };
                match rx.try_recv() {
                    Ok(notice) => self.notice(Ok(notice)),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(n)) => self.notice(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Closed) => self.notice(Err(RecvError::Closed)),
                }
            }
            self.read_changes().await;
            self.work().await;
        }
    }

    /// Deletes self-registered endpoints that no replica looks after: the node has no live
    /// stream on any replica (the `proxies` table), this replica is not running its grace
    /// period, and it has stayed so, at the same etag, for the grace period. This is how an
    /// endpoint whose replica stopped during its grace period still goes. Every replica
    /// sweeps; `If-Match` makes the first delete win and the others find it gone.
    async fn sweep(&mut self) {
        let now = Instant::now();
        self.next_sweep = now + sweep_every(self.grace);
        let (endpoints, live) = match tokio::try_join!(
            self.store.list_everywhere(Kind::Endpoint, ENDPOINT_PREFIX),
            self.store.live_nodes()
        ) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sweep for orphaned sidecar endpoints; retrying (hint: is the database reachable?)");
                return;
            }
        };
        let mut absent = HashMap::new();
        for endpoint in endpoints {
            let Some(node) = endpoint.spec.get("node").and_then(|n| n.as_str()) else {
                continue;
            };
            let k = &endpoint.key;
            let node_id = NodeId {
                tenant: k.tenant.clone(),
                mesh: k.mesh.clone(),
                name: node.to_owned(),
            };
            if self.nodes.contains_key(&node_id)
                || live.contains(&(node_id.tenant, node_id.mesh, node_id.name))
            {
                continue;
            }
            let etag = endpoint.etag();
            let id = (k.tenant.clone(), k.mesh.clone(), k.name.clone());
            let since = match self.absent.remove(&id) {
                Some((since, seen)) if seen == etag => since,
                _ => now,
            };
            if now.saturating_duration_since(since) < sweep_after(self.grace) {
                absent.insert(id, (since, etag));
                continue;
            }
            let opts = WriteOptions {
                precondition: Precondition::IfMatch(etag),
                dry_run: false,
            };
            match self.store.delete(k, &opts).await {
                Ok(_) => {
                    tracing::info!(
                        tenant = %k.tenant, mesh = %k.mesh, endpoint = %k.name, %node,
                        "deleted an orphaned sidecar endpoint: no replica has had a stream of \
                         its node for the grace period"
                    );
                    metrics::counter!("switchboard_sidecar_deregistrations_total", "tenant" => k.tenant.clone())
                        .increment(1);
                }
                Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(endpoint = %k.name, error = %e, "cannot delete an orphaned sidecar endpoint; retrying");
                    absent.insert(id, (since, endpoint.etag()));
                }
            }
        }
        self.absent = absent;
    }

    /// The earliest time something is due.
    fn deadline(&self) -> Option<Instant> {
        let nodes = self.nodes.values().filter_map(|e| e.next.at());
        let tenants = self
            .tenants
            .values()
            .filter_map(|t| t.pending.then_some(t.retry_at.unwrap_or_else(Instant::now)));
        nodes.chain(tenants).min()
    }

    fn apply(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Register {
                stream,
                node,
                desired,
            } => {
                let entry = self.nodes.entry(node).or_insert_with_key(|node| {
                    *self.per_tenant.entry(node.tenant.clone()).or_default() += 1;
                    Entry {
                        streams: BTreeMap::new(),
                        etag: None,
                        name: desired.name.clone(),
                        next: Next::Idle,
                    }
                });
                entry.streams.insert(stream, desired);
                // Also ends a running grace period. The write checks the store first, so a
                // reconnect with the same spec writes nothing.
                entry.next = Next::Register {
                    at: now,
                    missing_service: false,
                };
            }
            Event::Deregister { stream, node } => {
                let Some(entry) = self.nodes.get_mut(&node) else {
                    return;
                };
                let before = entry.desired().cloned();
                entry.streams.remove(&stream);
                if entry.streams.is_empty() {
                    if entry.etag.is_some() {
                        tracing::debug!(%node, grace = ?self.grace, "the sidecar's last stream here ended; deregistering after the grace period");
                        entry.next = Next::Deregister {
                            at: now + self.grace,
                            rechecked: false,
                        };
                    } else {
                        // Nothing was written: nothing to take back.
                        self.forget(&node);
                    }
                } else if entry.desired() != before.as_ref() {
                    entry.next = Next::Register {
                        at: now,
                        missing_service: false,
                    };
                }
            }
        }
    }

    fn notice(&mut self, notice: Result<Notice, RecvError>) {
        match notice {
            Ok(Notice::Committed { tenant, revision }) => {
                if let Some(watch) = self.tenants.get_mut(&tenant)
                    && revision > watch.seen
                {
                    watch.pending = true;
                }
            }
            Ok(Notice::Revoked { .. }) => {}
            Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => {
                tracing::debug!("store notices may have been lost; checking every registration");
                self.check_all(None);
            }
            Err(RecvError::Closed) => self.notices = None,
        }
    }

    /// Reads the change log of tenants with news: a created service retries the sidecars
    /// waiting for it; a deleted endpoint of a connected sidecar is written again.
    async fn read_changes(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, i64)> = self
            .tenants
            .iter()
            .filter(|(_, w)| w.pending && w.retry_at.is_none_or(|at| at <= now))
            .map(|(t, w)| (t.clone(), w.seen))
            .collect();
        for (tenant, seen) in due {
            let result = self.store.changes_since(&tenant, seen, CHANGE_LIMIT).await;
            let Some(watch) = self.tenants.get_mut(&tenant) else {
                continue;
            };
            let changes = match result {
                Ok(changes) => changes,
                Err(StoreError::Compacted { pruned_through, .. }) => {
                    // The log no longer reaches back that far: check everything, then
                    // follow it from where it starts.
                    watch.retry_at = None;
                    watch.seen = watch.seen.max(pruned_through);
                    self.check_all(Some(&tenant));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "cannot read the change log for sidecar registrations; retrying");
                    watch.retry_at = Some(now + STORE_RETRY);
                    continue;
                }
            };
            watch.retry_at = None;
            let full = changes.len() >= CHANGE_LIMIT as usize;
            watch.pending = full;
            if let Some(last) = changes.last() {
                watch.seen = watch.seen.max(last.revision);
            }
            if full {
                // More changed than one read shows: check every registration of the tenant.
                self.check_all(Some(&tenant));
                continue;
            }
            let mut by_endpoint: HashMap<(&str, &str), NodeId> = HashMap::new();
            let mut by_service: HashMap<(&str, &str), Vec<NodeId>> = HashMap::new();
            for (node, entry) in self.nodes.iter().filter(|(n, _)| n.tenant == tenant) {
                let Some(desired) = entry.desired() else {
                    continue;
                };
                by_endpoint.insert((&node.mesh, &desired.name), node.clone());
                if matches!(
                    entry.next,
                    Next::Register {
                        missing_service: true,
                        ..
                    }
                ) {
                    by_service
                        .entry((&node.mesh, desired.service()))
                        .or_default()
                        .push(node.clone());
                }
            }
            let mut again: Vec<NodeId> = Vec::new();
            for c in &changes {
                match (c.kind, c.op) {
                    (Kind::Endpoint, ChangeOp::Delete) => {
                        if let Some(node) = by_endpoint.get(&(c.mesh.as_str(), c.name.as_str())) {
                            again.push(node.clone());
                        }
                    }
                    (Kind::Service, ChangeOp::Put) => {
                        if let Some(nodes) = by_service.get(&(c.mesh.as_str(), c.name.as_str())) {
                            again.extend(nodes.iter().cloned());
                        }
                    }
                    _ => {}
                }
            }
            for node in again {
                if let Some(entry) = self.nodes.get_mut(&node)
                    && !entry.streams.is_empty()
                {
                    entry.next = Next::Register {
                        at: now,
                        missing_service: false,
                    };
                }
            }
        }
    }

    /// Checks, now, every connected registration (of `tenant`, or of every tenant), and
    /// reads the change log on from where it was read.
    fn check_all(&mut self, tenant: Option<&str>) {
        let now = Instant::now();
        let selected = |t: &str| tenant.is_none_or(|only| only == t);
        for (node, entry) in &mut self.nodes {
            if selected(&node.tenant) && !entry.streams.is_empty() {
                entry.next = Next::Register {
                    at: now,
                    missing_service: false,
                };
            }
        }
        for (t, watch) in &mut self.tenants {
            if selected(t) {
                watch.pending = true;
            }
        }
    }

    /// Does what is due, at most [`BATCH`] nodes.
    async fn work(&mut self) {
        let now = Instant::now();
        let mut due: Vec<(Instant, NodeId)> = self
            .nodes
            .iter()
            .filter_map(|(n, e)| {
                e.next
                    .at()
                    .filter(|at| *at <= now)
                    .map(|at| (at, n.clone()))
            })
            .collect();
        due.sort();
        due.truncate(BATCH);
        for (_, node) in due {
            let Some(next) = self.nodes.get(&node).map(|e| e.next) else {
                continue;
            };
            match next {
                Next::Idle => {}
                Next::Register {
                    missing_service, ..
                } => self.register(&node, missing_service).await,
                Next::Deregister { rechecked, .. } => self.deregister(&node, rechecked).await,
            }
        }
    }

    fn set_next(&mut self, node: &NodeId, next: Next) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.next = next;
        }
    }

    /// Drops a node's entry, and its tenant's watch when it was the tenant's last.
    fn forget(&mut self, node: &NodeId) {
        if self.nodes.remove(node).is_none() {
            return;
        }
        if let Some(count) = self.per_tenant.get_mut(&node.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_tenant.remove(&node.tenant);
                self.tenants.remove(&node.tenant);
            }
        }
    }

    async fn register(&mut self, node: &NodeId, was_missing: bool) {
        let Some(desired) = self.nodes.get(node).and_then(|e| e.desired().cloned()) else {
            self.set_next(node, Next::Idle);
            return;
        };
        if !self.tenants.contains_key(&node.tenant) {
            // Watch the change log from before the write on, so a later delete is seen.
            match self.store.revision(&node.tenant).await {
                Ok(seen) => {
                    self.tenants.insert(
                        node.tenant.clone(),
                        TenantWatch {
                            seen,
                            pending: false,
                            retry_at: None,
                        },
                    );
                }
                Err(e) => return self.store_failed(node, &e),
            }
        }
        let key = ResourceKey::new(&node.tenant, &node.mesh, Kind::Endpoint, &desired.name);
        let result = upsert(&self.store, &key, &desired.spec).await;
        let service = desired.service();
        match result {
            Ok(Upserted::Unchanged(etag)) => {
                tracing::debug!(%node, endpoint = %desired.name, "the sidecar's endpoint is up to date");
                self.registered(node, etag);
            }
            Ok(Upserted::Written(etag)) => {
                tracing::info!(%node, endpoint = %desired.name, service, "registered the sidecar as an endpoint of its service");
                metrics::counter!("switchboard_sidecar_registrations_total", "tenant" => node.tenant.clone())
                    .increment(1);
                self.registered(node, etag);
            }
            Err(UpsertError::Store(StoreError::DanglingReference { .. })) => {
                if was_missing {
                    tracing::debug!(%node, service, "the sidecar's service still does not exist");
                } else {
                    tracing::warn!(
                        %node, service, mesh = %node.mesh,
                        "cannot register the sidecar as an endpoint: its service does not exist \
                         in the mesh; create the service (retrying when it appears, and every {}s)",
                        RETRY.as_secs()
                    );
                }
                self.set_next(
                    node,
                    Next::Register {
                        at: Instant::now() + RETRY,
                        missing_service: true,
                    },
                );
            }
            Err(UpsertError::Store(StoreError::NotFound { what, .. })) => {
                // The mesh or tenant is gone; the node's streams are ending.
                tracing::debug!(%node, what, "not registering the sidecar: its mesh is gone");
                self.set_next(node, Next::Idle);
            }
            Err(UpsertError::Store(e)) => self.store_failed(node, &e),
            Err(e @ UpsertError::Contended) => {
                tracing::info!(%node, endpoint = %desired.name, error = %e, "retrying the sidecar's registration");
                self.set_next(
                    node,
                    Next::Register {
                        at: Instant::now() + STORE_RETRY,
                        missing_service: false,
                    },
                );
            }
        }
    }

    fn registered(&mut self, node: &NodeId, etag: String) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.etag = Some(etag);
            // A stream that ended while the write was out is handled here.
            entry.next = if entry.streams.is_empty() {
                Next::Deregister {
                    at: Instant::now() + self.grace,
                    rechecked: false,
                }
            } else {
                Next::Idle
            };
        }
    }

    fn store_failed(&mut self, node: &NodeId, e: &StoreError) {
        tracing::warn!(%node, error = %e, "cannot update the sidecar's endpoint; retrying (hint: is the database reachable?)");
        let at = Instant::now() + STORE_RETRY;
        let next = match self.nodes.get(node).map(|e| e.next) {
            Some(Next::Deregister { rechecked, .. }) => Next::Deregister { at, rechecked },
            _ => Next::Register {
                at,
                missing_service: false,
            },
        };
        self.set_next(node, next);
    }

    async fn deregister(&mut self, node: &NodeId, rechecked: bool) {
        let Some(entry) = self.nodes.get(node) else {
            return;
        };
        if !entry.streams.is_empty() {
            self.set_next(node, Next::Idle);
            return;
        }
        let Some(etag) = entry.etag.clone() else {
            self.forget(node);
            return;
        };
        let name = entry.name.clone();
        // Connected to another replica? Its rows are current to within a heartbeat.
        match self
            .store
            .list_proxies(&node.tenant, &node.mesh, Some(&node.name))
            .await
        {
            Ok(rows) if rows.iter().any(|r| r.replica != self.replica) => {
                if rechecked {
                    tracing::info!(%node, endpoint = %name, "the sidecar is connected to another replica, which keeps its endpoint");
                    self.forget(node);
                } else {
                    // A replica that died leaves rows for a while: look again once they
                    // would have expired.
                    tracing::debug!(%node, "the sidecar is connected to another replica; checking again later");
                    self.set_next(
                        node,
                        Next::Deregister {
                            at: Instant::now()
                                + Duration::from_millis(PROXY_STALE_MS.unsigned_abs()),
                            rechecked: true,
                        },
                    );
                }
                return;
            }
            Ok(_) => {}
            Err(e) => return self.store_failed(node, &e),
        }
        let key = ResourceKey::new(&node.tenant, &node.mesh, Kind::Endpoint, &name);
        let opts = WriteOptions {
            precondition: Precondition::IfMatch(etag),
            dry_run: false,
        };
        match self.store.delete(&key, &opts).await {
            Ok(_) => {
                tracing::info!(%node, endpoint = %name, grace = ?self.grace, "deregistered the sidecar: its stream has been gone for the grace period");
                metrics::counter!("switchboard_sidecar_deregistrations_total", "tenant" => node.tenant.clone())
                    .increment(1);
                self.forget(node);
            }
            Err(StoreError::PreconditionFailed {
                current: Some(current),
            }) => {
                tracing::info!(
                    %node, endpoint = %name, etag = %current,
                    "not deregistering the sidecar: its endpoint was replaced since it was \
                     registered (by a user or another replica), so it is theirs now"
                );
                self.forget(node);
            }
            Err(StoreError::PreconditionFailed { current: None } | StoreError::NotFound { .. }) => {
                tracing::debug!(%node, endpoint = %name, "the sidecar's endpoint is already gone");
                self.forget(node);
            }
            Err(e) => self.store_failed(node, &e),
        }
    }
}

/// The next store notice, or never once they closed.
async fn recv_notice(
    notices: &mut Option<tokio::sync::broadcast::Receiver<Notice>>,
) -> Result<Notice, RecvError> {
    match notices {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes `spec` at `key` unless it is there already, as the REST API writes (references
/// checked in the transaction). `If-Match` the version read, so a concurrent change is
/// looked at again rather than overwritten blindly.
async fn upsert(store: &Store, key: &ResourceKey, spec: &Spec) -> Result<Upserted, UpsertError> {
    for _ in 0..WRITE_ATTEMPTS {
        let existing = match store.get(key).await {
            Ok(r) => Some(r),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(r) = &existing
            && Spec::parse(key.kind, r.spec.clone()).is_ok_and(|s| s == *spec)
        {
            return Ok(Upserted::Unchanged(r.etag()));
        }
        let precondition = match &existing {
            Some(r) => Precondition::IfMatch(r.etag()),
            None => Precondition::Create,
        };
        let opts = WriteOptions {
            precondition,
            dry_run: false,
        };
        match store
            .put(
                key,
                &spec.to_json(),
                &spec.references(),
                &spec.claims(),
                &opts,
            )
            .await
        {
            Ok(stored) => return Ok(Upserted::Written(stored.etag())),
            Err(StoreError::PreconditionFailed { .. } | StoreError::AlreadyExists { .. }) => {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(UpsertError::Contended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_are_valid_and_stable() {
        assert_eq!(endpoint_name("pay-7f9c"), "sidecar-pay-7f9c");
        for node in [
            "Pay-1",
            "pay.default.svc:8080",
            "pay_1",
            "a-",
            "-",
            "...",
            &"x".repeat(253),
            &"X.".repeat(120),
        ] {
            let name = endpoint_name(node);
            assert!(validate_name("name", &name).is_ok(), "{node:?} → {name:?}");
            assert!(name.starts_with(ENDPOINT_PREFIX), "{name}");
            assert_eq!(name, endpoint_name(node), "deterministic");
        }
        // Altered names keep apart what alters alike.
        assert_ne!(endpoint_name("Pay-1"), endpoint_name("pay.1"));
        assert_ne!(endpoint_name("Pay-1"), endpoint_name("pay-1"));
        assert!(endpoint_name("Pay.1").starts_with("sidecar-pay-1-"));
        assert_eq!(endpoint_name(&"x".repeat(55)).len(), MAX_NAME);
        assert_ne!(
            endpoint_name(&"x".repeat(56)),
            format!("sidecar-{}", "x".repeat(56))
        );
    }

    fn params() -> SidecarParams {
        SidecarParams {
            service: "pay".to_owned(),
            inbound_port: 15006,
            app_port: 8080,
            outbound_port: 15001,
        }
    }

    #[test]
    fn desired_endpoint() {
        let peer: SocketAddr = "[::ffff:10.1.2.3]:4567".parse().unwrap();
        let d = Desired::new(
            "pay-1",
            &params(),
            &SidecarEndpointMeta::default(),
            Some(peer),
        )
        .unwrap();
        assert_eq!(d.name, "sidecar-pay-1");
        let Spec::Endpoint(e) = &d.spec else {
            panic!("{d:?}")
        };
        assert_eq!(e.address, "10.1.2.3");
        assert_eq!(e.port, Some(15006));
        assert_eq!(e.weight, 1);
        assert_eq!(e.service, "pay");
        let meta = SidecarEndpointMeta {
            address: Some("fd00::7".parse().unwrap()),
            region: "eu".to_owned(),
            zone: "eu-1".to_owned(),
            sub_zone: String::new(),
        };
        let d = Desired::new("pay-1", &params(), &meta, Some(peer)).unwrap();
        let Spec::Endpoint(e) = &d.spec else {
            panic!("{d:?}")
        };
        assert_eq!(e.address, "fd00::7");
        assert_eq!(
            (e.locality.region.as_str(), e.locality.zone.as_str()),
            ("eu", "eu-1")
        );
        assert!(matches!(
            Desired::new("pay-1", &params(), &SidecarEndpointMeta::default(), None),
            Err(DesiredError::NoAddress)
        ));
    }

    #[test]
    fn grace_periods_parse_like_every_duration() {
        assert_eq!(parse_grace_period("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_grace_period("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_grace_period("200ms"), Ok(Duration::from_millis(200)));
        assert!(
            parse_grace_period("30")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
