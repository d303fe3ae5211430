//! Every registration decision, with no IO and no clock: [`Machine::step`] takes an
//! [`Input`] (a stream event, a store notice, "a round is due", or the result of a store
//! call) and the current time, and answers the next [`Action`] (a store call) if any.
//!
//! The task performs the action and reports its result as the next input. At most one action
//! is out at a time, so a round is one sequential pass: the sweep when due, then the change
//! logs with news, then the nodes whose time has come, each decision seeing the results of
//! the calls before it. [`Machine::wake_at`] says when the next round is due.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use switchboard_model::{Kind, Spec};
use switchboard_store::{Change, ChangeOp, ResourceKey, StoreError, StoredResource};
use tokio::time::Instant;

use super::BATCH;
use super::endpoint::Desired;
use crate::node::NodeId;

mod nodes;
mod sweep;
#[cfg(test)]
mod tests;

use sweep::{sweep_after, sweep_every};

/// How soon store work that failed (database unreachable) is tried again.
pub(super) const STORE_RETRY: Duration = Duration::from_secs(5);

/// Changes read per tenant per round.
const CHANGE_LIMIT: u32 = 1000;

/// (tenant, mesh, name): an endpoint, or a node with a live stream (the `proxies` table).
pub(super) type Triple = (String, String, String);

/// What happens, and what the store answered.
#[derive(Debug)]
pub(super) enum Input {
    /// A stream of `node` was admitted with a proxy token and asks for `desired`.
    Opened {
        stream: u64,
        node: NodeId,
        desired: Desired,
    },
    /// That stream ended.
    Closed { stream: u64, node: NodeId },
    /// The store committed `revision` of `tenant`.
    Committed { tenant: String, revision: i64 },
    /// Store notices may have been lost (a resync, or the task fell behind).
    NoticesLost,
    /// Time for a round (at the latest at [`Machine::wake_at`]).
    Round,
    /// The answer to [`Action::ReadRevision`].
    Revision {
        tenant: String,
        result: Result<i64, StoreError>,
    },
    /// The answer to [`Action::Upsert`].
    Upserted {
        node: NodeId,
        result: Result<Upserted, UpsertError>,
    },
    /// The answer to [`Action::ListReplicas`]: the replicas holding a live stream of `node`.
    Replicas {
        node: NodeId,
        result: Result<Vec<String>, StoreError>,
    },
    /// The answer to [`Action::Delete`].
    Deleted {
        key: ResourceKey,
        result: Result<(), StoreError>,
    },
    /// The answer to [`Action::ReadChanges`].
    Changes {
        tenant: String,
        result: Result<Vec<Change>, StoreError>,
    },
    /// The answer to [`Action::ListManaged`]: the endpoints with the sidecar prefix, and the
    /// nodes with a live stream on any replica.
    Managed {
        result: Result<(Vec<StoredResource>, HashSet<Triple>), StoreError>,
    },
}

/// A store call to make, answered by the matching [`Input`].
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// The tenant's revision, from which its change log is followed.
    ReadRevision { tenant: String },
    /// Write `spec` at `key`, the endpoint of `node`, unless it is there already.
    Upsert {
        node: NodeId,
        key: ResourceKey,
        spec: Box<Spec>,
    },
    /// Which replicas hold a live stream of the node.
    ListReplicas { node: NodeId },
    /// Delete `key` only if its etag is still `etag`.
    Delete { key: ResourceKey, etag: String },
    /// Up to `limit` changes of `tenant` after revision `since`.
    ReadChanges {
        tenant: String,
        since: i64,
        limit: u32,
    },
    /// Every endpoint named with the sidecar prefix, and the nodes live on any replica.
    ListManaged,
}

/// How a write went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Upserted {
    /// The endpoint already had the spec; nothing was written. Its etag.
    Unchanged(String),
    /// Written at this etag.
    Written(String),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum UpsertError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the endpoint kept changing while it was being written")]
    Contended,
}

/// What the machine does next for a node.
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

/// A piece of the round under way.
#[derive(Debug)]
enum Job {
    /// List the managed endpoints.
    Sweep,
    /// Delete an orphaned endpoint, absent since `since`.
    SweepDelete {
        key: ResourceKey,
        node: String,
        etag: String,
        since: Instant,
    },
    /// Find the tenants whose change log has news.
    ReadChanges,
    Changes(String),
    /// Find the nodes whose time has come.
    Work,
    Node(NodeId),
}

/// The registration state of one replica.
#[derive(Debug)]
pub(super) struct Machine {
    /// This replica's id, as in the `proxies` table.
    replica: String,
    grace: Duration,
    /// How long an orphan must stay so before the sweep deletes it.
    sweep_after: Duration,
    nodes: HashMap<NodeId, Entry>,
    /// How many entries of `nodes` each tenant has.
    per_tenant: HashMap<String, usize>,
    tenants: HashMap<String, TenantWatch>,
    /// When the next round sweeps.
    next_sweep: Instant,
    /// Registered endpoints whose node no replica holds a stream of: since when the sweep
    /// has seen it so, at which etag.
    absent: HashMap<Triple, (Instant, String)>,
    /// The rest of the round under way.
    agenda: VecDeque<Job>,
    /// The job whose action is out.
    waiting: Option<Job>,
}

impl Machine {
    /// A replica's machine, with nothing registered; the first round sweeps.
    /// `status_sync`: how often replicas write their streams to the `proxies` table.
    pub(super) fn new(
        replica: String,
        grace: Duration,
        status_sync: Duration,
        now: Instant,
    ) -> Self {
        Self {
            replica,
            grace,
            sweep_after: sweep_after(grace, status_sync),
            nodes: HashMap::new(),
            per_tenant: HashMap::new(),
            tenants: HashMap::new(),
            next_sweep: now,
            absent: HashMap::new(),
            agenda: VecDeque::new(),
            waiting: None,
        }
    }

    /// Takes `input` in at `now`; the store call to make next, if any. Stream events and
    /// notices only change the state; their work happens in the next round.
    pub(super) fn step(&mut self, input: Input, now: Instant) -> Option<Action> {
        match input {
            Input::Opened {
                stream,
                node,
                desired,
            } => {
                self.opened(stream, node, desired, now);
                None
            }
            Input::Closed { stream, node } => {
                self.closed(stream, &node, now);
                None
            }
            Input::Committed { tenant, revision } => {
                if let Some(watch) = self.tenants.get_mut(&tenant)
                    && revision > watch.seen
                {
                    watch.pending = true;
                }
                None
            }
            Input::NoticesLost => {
                tracing::debug!("store notices may have been lost; checking every registration");
                self.check_all(None, now);
                None
            }
            Input::Round => {
                if now >= self.next_sweep {
                    self.agenda.push_back(Job::Sweep);
                }
                self.agenda.push_back(Job::ReadChanges);
                self.agenda.push_back(Job::Work);
                self.advance(now)
            }
            Input::Revision { tenant, result } => {
                let job = self.waiting.take();
                match (result, job) {
                    (Ok(seen), Some(Job::Node(node))) => {
                        // Watch the change log from before the write on, so a later delete
                        // is seen.
                        self.tenants.entry(tenant).or_insert(TenantWatch {
                            seen,
                            pending: false,
                            retry_at: None,
                        });
                        if let Some(action) = self.register(&node) {
                            self.waiting = Some(Job::Node(node));
                            return Some(action);
                        }
                    }
                    (Err(e), Some(Job::Node(node))) => self.store_failed(&node, &e, now),
                    _ => {}
                }
                self.advance(now)
            }
            Input::Upserted { node, result } => {
                self.waiting = None;
                self.upserted(&node, result, now);
                self.advance(now)
            }
            Input::Replicas { node, result } => {
                self.waiting = None;
                if let Some(action) = self.replicas(&node, result, now) {
                    self.waiting = Some(Job::Node(node));
                    return Some(action);
                }
                self.advance(now)
            }
            Input::Deleted { key, result } => {
                match self.waiting.take() {
                    Some(Job::Node(node)) => self.deleted(&node, result, now),
                    Some(Job::SweepDelete {
                        key: k,
                        node,
                        etag,
                        since,
                    }) if k == key => self.swept(key, &node, etag, since, result),
                    _ => {}
                }
                self.advance(now)
            }
            Input::Changes { tenant, result } => {
                self.waiting = None;
                self.changes(&tenant, result, now);
                self.advance(now)
            }
            Input::Managed { result } => {
                self.waiting = None;
                self.sweep(result, now);
                self.advance(now)
            }
        }
    }

    /// When the next round is due: the earliest node or change log due, or the next sweep.
    pub(super) fn wake_at(&self, now: Instant) -> Instant {
        let nodes = self.nodes.values().filter_map(|e| e.next.at());
        let tenants = self
            .tenants
            .values()
            .filter_map(|t| t.pending.then_some(t.retry_at.unwrap_or(now)));
        nodes
            .chain(tenants)
            .fold(self.next_sweep, |earliest, at| earliest.min(at))
    }

    /// Goes on with the round until a job needs the store.
    fn advance(&mut self, now: Instant) -> Option<Action> {
        while let Some(job) = self.agenda.pop_front() {
            let action = match &job {
                Job::Sweep => {
                    self.next_sweep = now + sweep_every(self.grace);
                    Some(Action::ListManaged)
                }
                Job::SweepDelete { key, etag, .. } => Some(Action::Delete {
                    key: key.clone(),
                    etag: etag.clone(),
                }),
                Job::ReadChanges => {
                    let mut due: Vec<&String> = self
                        .tenants
                        .iter()
                        .filter(|(_, w)| w.pending && w.retry_at.is_none_or(|at| at <= now))
                        .map(|(t, _)| t)
                        .collect();
                    due.sort();
                    for tenant in due.into_iter().rev() {
                        self.agenda.push_front(Job::Changes(tenant.clone()));
                    }
                    None
                }
                Job::Changes(tenant) => self.tenants.get(tenant).map(|w| Action::ReadChanges {
                    tenant: tenant.clone(),
                    since: w.seen,
                    limit: CHANGE_LIMIT,
                }),
                Job::Work => {
                    let mut due: Vec<(Instant, &NodeId)> = self
                        .nodes
                        .iter()
                        .filter_map(|(n, e)| e.next.at().filter(|at| *at <= now).map(|at| (at, n)))
                        .collect();
                    due.sort();
                    due.truncate(BATCH);
                    for (_, node) in due.into_iter().rev() {
                        self.agenda.push_front(Job::Node(node.clone()));
                    }
                    None
                }
                Job::Node(node) => match self.nodes.get(node).map(|e| e.next) {
                    Some(Next::Register { .. }) => self.register(node),
                    Some(Next::Deregister { .. }) => self.deregister(node),
                    Some(Next::Idle) | None => None,
                },
            };
            if action.is_some() {
                self.waiting = Some(job);
                return action;
            }
        }
        None
    }

    fn opened(&mut self, stream: u64, node: NodeId, desired: Desired, now: Instant) {
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

    fn closed(&mut self, stream: u64, node: &NodeId, now: Instant) {
        let Some(entry) = self.nodes.get_mut(node) else {
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
                self.forget(node);
            }
        } else if entry.desired() != before.as_ref() {
            entry.next = Next::Register {
                at: now,
                missing_service: false,
            };
        }
    }

    /// Checks, now, every connected registration (of `tenant`, or of every tenant), and
    /// reads the change log on from where it was read.
    fn check_all(&mut self, tenant: Option<&str>, now: Instant) {
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

    /// What the change log says: a created service retries the sidecars waiting for it; a
    /// deleted endpoint of a connected sidecar is written again.
    fn changes(&mut self, tenant: &str, result: Result<Vec<Change>, StoreError>, now: Instant) {
        let Some(watch) = self.tenants.get_mut(tenant) else {
            return;
        };
        let changes = match result {
            Ok(changes) => changes,
            Err(StoreError::Compacted { pruned_through, .. }) => {
                // The log no longer reaches back that far: check everything, then follow it
                // from where it starts.
                watch.retry_at = None;
                watch.seen = watch.seen.max(pruned_through);
                self.check_all(Some(tenant), now);
                return;
            }
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "cannot read the change log for sidecar registrations; retrying");
                watch.retry_at = Some(now + STORE_RETRY);
                return;
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
            self.check_all(Some(tenant), now);
            return;
        }
        let mut by_endpoint: HashMap<(&str, &str), &NodeId> = HashMap::new();
        let mut by_service: HashMap<(&str, &str), Vec<&NodeId>> = HashMap::new();
        for (node, entry) in self.nodes.iter().filter(|(n, _)| n.tenant == tenant) {
            let Some(desired) = entry.desired() else {
                continue;
            };
            by_endpoint.insert((&node.mesh, &desired.name), node);
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
                    .push(node);
            }
        }
        let mut again: Vec<NodeId> = Vec::new();
        for c in &changes {
            match (c.kind, c.op) {
                (Kind::Endpoint, ChangeOp::Delete) => {
                    if let Some(node) = by_endpoint.get(&(c.mesh.as_str(), c.name.as_str())) {
                        again.push((*node).clone());
                    }
                }
                (Kind::Service, ChangeOp::Put) => {
                    if let Some(nodes) = by_service.get(&(c.mesh.as_str(), c.name.as_str())) {
                        again.extend(nodes.iter().map(|n| (*n).clone()));
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
}
