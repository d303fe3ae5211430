//! Per-proxy status: who is connected, what each was sent, what it ACKed and NACKed.
//!
//! The [`ProxyRegistry`] is shared by every stream (each updates its own entry, under its own
//! lock) and read by CSDS and, through [`ProxyRegistry::list`] and
//! [`ProxyRegistry::resources`], by the REST API. Resources are held as the snapshot's `Arc`s:
//! reporting costs pointers, not copies. Secrets are the exception: the registry keeps them
//! without their private key ([`Registration::record_sent`]), so nothing that reads it (CSDS,
//! the REST API, the store) can show one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use switchboard_translator::XdsResource;
use switchboard_xds_proto::{Node, ResourceType};

use crate::node::NodeId;
use crate::sds::CertificateInfo;
use crate::sds::secrets::redact;

/// One connected stream of a proxy.
#[derive(Debug, Clone)]
pub struct ProxyStatus {
    /// Unique per server process.
    pub stream_id: u64,
    pub node_id: NodeId,
    /// The node as the first request described it (the stream's protocol state holds the
    /// same `Arc`).
    pub node: Arc<Node>,
    /// "proxyless", "sidecar of {service}", "gateway {name}".
    pub role: String,
    /// "ADS", or the single-type service ("CDS", ...); "delta ADS", "delta CDS", ... for
    /// incremental streams.
    pub service: &'static str,
    /// Whether the stream presented a proxy token (else the mesh admits anonymous clients).
    pub authenticated: bool,
    pub connected_since: SystemTime,
    /// Boxed: a map node has room for 11 entries, a stream has at most 5 types.
    pub types: BTreeMap<ResourceType, Box<TypeStatus>>,
    /// The `default` certificate last sent to the proxy (public facts only).
    pub certificate: Option<CertificateInfo>,
    /// The latest mesh revision the proxy has everything for (see
    /// [`Registration::caught_up`]); `None` until it first has.
    pub acked_revision: Option<i64>,
}

/// One resource type of one stream.
#[derive(Debug, Clone, Default)]
pub struct TypeStatus {
    /// Subscribed to everything the node may see.
    pub wildcard: bool,
    /// Explicitly subscribed names.
    pub names: Vec<String>,
    /// The latest response.
    pub sent: Option<Sent>,
    /// The latest ACK.
    pub acked: Option<Acked>,
    /// The latest NACK (kept after later ACKs, for the record; see [`TypeStatus::state`]).
    pub nack: Option<Nacked>,
    /// What the proxy is being sent: every resource of this type it holds once it accepts
    /// the latest response. Decode with `XdsResource::decode` or the descriptor set.
    pub resources: Vec<Arc<XdsResource>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub version: String,
    pub nonce: String,
    /// The mesh revision the response was built from.
    pub revision: i64,
    pub time: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub version: String,
    pub nonce: String,
    /// The mesh revision the ACKed response was built from.
    pub revision: i64,
    pub time: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nacked {
    /// The rejected version.
    pub version: String,
    pub nonce: String,
    pub revision: i64,
    /// The client's `error_detail.message`.
    pub message: String,
    /// The resources the rejected response carried.
    pub names: Vec<String>,
    pub time: SystemTime,
}

/// Where a type stands with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Asked for, nothing sent yet (e.g. the named resources do not exist).
    Requested,
    /// A response is out and not answered yet.
    Pending,
    /// The latest response was ACKed.
    Acked,
    /// The latest response was NACKed; the client runs its previous version.
    Nacked,
}

impl TypeStatus {
    pub fn state(&self) -> ClientState {
        let Some(sent) = &self.sent else {
            return ClientState::Requested;
        };
        if self.nack.as_ref().is_some_and(|n| n.nonce == sent.nonce) {
            ClientState::Nacked
        } else if self.acked.as_ref().is_some_and(|a| a.nonce == sent.nonce) {
            ClientState::Acked
        } else {
            ClientState::Pending
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_id: AtomicU64,
    streams: Mutex<BTreeMap<u64, Arc<Mutex<ProxyStatus>>>>,
    /// What changed since the last [`ProxyRegistry::take_changes`]: streams updated, streams
    /// ended. Lets the status sync write only what changed.
    changes: Mutex<Changes>,
}

#[derive(Debug, Default)]
struct Changes {
    updated: BTreeSet<u64>,
    ended: BTreeSet<u64>,
}

/// Every connected stream's status. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ProxyRegistry {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ProxyRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh stream id.
    pub(crate) fn next_stream_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds a stream; it leaves the registry when the registration drops.
    pub(crate) fn register(&self, status: ProxyStatus) -> Registration {
        let id = status.stream_id;
        let entry = Arc::new(Mutex::new(status));
        lock(&self.inner.streams).insert(id, Arc::clone(&entry));
        lock(&self.inner.changes).updated.insert(id);
        Registration {
            registry: self.clone(),
            id,
            entry,
        }
    }

    fn select(&self, keep: impl Fn(&ProxyStatus) -> bool) -> Vec<ProxyStatus> {
        let entries: Vec<_> = lock(&self.inner.streams).values().cloned().collect();
        entries
            .iter()
            .map(|e| lock(e).clone())
            .filter(|s| keep(s))
            .collect()
    }

    /// Every connected stream.
    pub fn all(&self) -> Vec<ProxyStatus> {
        self.select(|_| true)
    }

    /// The streams of a tenant, or of one of its meshes.
    pub fn list(&self, tenant: &str, mesh: Option<&str>) -> Vec<ProxyStatus> {
        self.select(|s| s.node_id.tenant == tenant && mesh.is_none_or(|m| s.node_id.mesh == m))
    }

    /// The streams of one node (a proxy may have several: one per single-type service, or
    /// an old one not yet closed after a reconnect).
    pub fn node(&self, tenant: &str, mesh: &str, name: &str) -> Vec<ProxyStatus> {
        self.select(|s| {
            s.node_id.tenant == tenant && s.node_id.mesh == mesh && s.node_id.name == name
        })
    }

    /// What a node is being sent, per type, over all its streams (newest stream wins a
    /// type both carry).
    pub fn resources(
        &self,
        tenant: &str,
        mesh: &str,
        name: &str,
    ) -> BTreeMap<ResourceType, Vec<Arc<XdsResource>>> {
        let mut out = BTreeMap::new();
        for stream in self.node(tenant, mesh, name) {
            for (t, status) in stream.types {
                out.insert(t, status.resources);
            }
        }
        out
    }

    /// The ids of the streams updated and of the streams ended since the last call. The
    /// status sync reads the updated ones a chunk at a time ([`ProxyRegistry::map`]), so that
    /// a fleet's worth of changes is never copied at once.
    pub fn take_changes(&self) -> (Vec<u64>, Vec<u64>) {
        let changes = std::mem::take(&mut *lock(&self.inner.changes));
        (
            changes.updated.into_iter().collect(),
            changes.ended.into_iter().collect(),
        )
    }

    /// `f` of the current status of each stream of `ids` still connected, in the order of
    /// `ids`, without copying the statuses.
    pub fn map<R>(&self, ids: &[u64], f: impl Fn(&ProxyStatus) -> R) -> Vec<R> {
        let entries: Vec<_> = {
            let streams = lock(&self.inner.streams);
            ids.iter()
                .filter_map(|id| streams.get(id).cloned())
                .collect()
        };
        entries.iter().map(|e| f(&lock(e))).collect()
    }

    /// Marks streams as changed again (their last write failed).
    pub fn retry_changes(
        &self,
        updated: impl IntoIterator<Item = u64>,
        ended: impl IntoIterator<Item = u64>,
    ) {
        let mut c = lock(&self.inner.changes);
        c.updated.extend(updated);
        c.ended.extend(ended);
    }

    /// How many streams are connected.
    pub fn len(&self) -> usize {
        lock(&self.inner.streams).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stream's entry in the registry; removes it when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: ProxyRegistry,
    id: u64,
    entry: Arc<Mutex<ProxyStatus>>,
}

impl Registration {
    /// Updates the status of type `t`.
    pub(crate) fn update_type(&self, t: ResourceType, f: impl FnOnce(&mut TypeStatus)) {
        f(lock(&self.entry).types.entry(t).or_default());
        lock(&self.registry.inner.changes).updated.insert(self.id);
    }

    /// Records a response of type `t`: `sent`, and every resource the proxy holds once it
    /// accepts it. Secrets are recorded without their private key.
    pub(crate) fn record_sent(
        &self,
        t: ResourceType,
        sent: Sent,
        resources: Vec<Arc<XdsResource>>,
    ) {
        let resources = if t == ResourceType::Secret {
            resources.iter().map(redact).collect()
        } else {
            resources
        };
        self.update_type(t, |s| {
            s.sent = Some(sent);
            s.resources = resources;
        });
    }

    /// Called when every response owed for the snapshot of `revision` has been written, and
    /// again after each ACK: if no type awaits an answer or stands NACKed, the proxy has
    /// everything `revision` means for it, which [`ProxyStatus::acked_revision`] records (it
    /// only grows). A type whose resources a later revision left unchanged is not re-sent
    /// and keeps its older ACK, so this is the figure that says "the proxy has revision N".
    pub(crate) fn caught_up(&self, revision: i64) {
        let mut entry = lock(&self.entry);
        if entry.acked_revision.is_some_and(|r| r >= revision) {
            return;
        }
        let settled = entry
            .types
            .values()
            .all(|t| matches!(t.state(), ClientState::Acked | ClientState::Requested));
        if !settled {
            return;
        }
        entry.acked_revision = Some(revision);
        drop(entry);
        lock(&self.registry.inner.changes).updated.insert(self.id);
    }

    /// Records the certificate last sent to the proxy.
    pub(crate) fn record_certificate(&self, info: CertificateInfo) {
        let mut entry = lock(&self.entry);
        if entry.certificate.as_ref() == Some(&info) {
            return;
        }
        entry.certificate = Some(info);
        drop(entry);
        lock(&self.registry.inner.changes).updated.insert(self.id);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.registry.inner.streams).remove(&self.id);
        let mut c = lock(&self.registry.inner.changes);
        c.updated.remove(&self.id);
        c.ended.insert(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, node: &str) -> ProxyStatus {
        ProxyStatus {
            stream_id: id,
            node_id: NodeId::parse(node).unwrap(),
            node: Arc::new(Node::default()),
            role: "proxyless".to_owned(),
            service: "ADS",
            authenticated: true,
            connected_since: SystemTime::now(),
            types: BTreeMap::new(),
            certificate: None,
            acked_revision: None,
        }
    }

    #[test]
    fn registrations_come_and_go() {
        let registry = ProxyRegistry::new();
        let a = registry.register(status(1, "tenants/acme/meshes/prod/nodes/a"));
        let b = registry.register(status(2, "tenants/acme/meshes/dev/nodes/b"));
        let _c = registry.register(status(3, "tenants/globex/meshes/prod/nodes/a"));
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.list("acme", None).len(), 2);
        assert_eq!(registry.list("acme", Some("prod")).len(), 1);
        assert_eq!(registry.node("acme", "prod", "a").len(), 1);
        a.update_type(ResourceType::Cluster, |t| {
            t.sent = Some(Sent {
                version: "v1".to_owned(),
                nonce: "1".to_owned(),
                revision: 4,
                time: SystemTime::now(),
            });
        });
        let got = registry.node("acme", "prod", "a");
        assert_eq!(
            got[0].types[&ResourceType::Cluster].state(),
            ClientState::Pending
        );
        assert!(
            registry
                .resources("acme", "prod", "a")
                .contains_key(&ResourceType::Cluster)
        );
        drop(b);
        assert_eq!(registry.list("acme", None).len(), 1);
    }

    #[test]
    fn caught_up_waits_for_every_answer_and_a_nack_blocks_it() {
        let registry = ProxyRegistry::new();
        let r = registry.register(status(1, "tenants/acme/meshes/prod/nodes/a"));
        let now = SystemTime::now();
        let sent = |nonce: &str, revision| Sent {
            version: format!("v{revision}"),
            nonce: nonce.to_owned(),
            revision,
            time: now,
        };
        let acked = |nonce: &str, revision| Acked {
            version: format!("v{revision}"),
            nonce: nonce.to_owned(),
            revision,
            time: now,
        };
        let got = || registry.node("acme", "prod", "a")[0].acked_revision;
        // Nothing sent yet (only requested): nothing is owed.
        r.update_type(ResourceType::Listener, |_| {});
        r.caught_up(3);
        assert_eq!(got(), Some(3));
        r.update_type(ResourceType::Cluster, |t| t.sent = Some(sent("1", 5)));
        r.update_type(ResourceType::Listener, |t| t.sent = Some(sent("2", 5)));
        r.caught_up(5);
        assert_eq!(got(), Some(3), "responses are out, not answered");
        r.update_type(ResourceType::Cluster, |t| t.acked = Some(acked("1", 5)));
        r.caught_up(5);
        assert_eq!(got(), Some(3), "LDS not answered yet");
        r.update_type(ResourceType::Listener, |t| t.acked = Some(acked("2", 5)));
        r.caught_up(5);
        assert_eq!(got(), Some(5));
        // Revision 7 changes only clusters: LDS keeps its revision-5 ACK.
        r.update_type(ResourceType::Cluster, |t| {
            t.sent = Some(sent("3", 7));
            t.nack = Some(Nacked {
                version: "v7".to_owned(),
                nonce: "3".to_owned(),
                revision: 7,
                message: "bad cluster".to_owned(),
                names: vec!["pay".to_owned()],
                time: now,
            });
        });
        r.caught_up(7);
        assert_eq!(got(), Some(5), "a NACK is not having it");
        r.update_type(ResourceType::Cluster, |t| {
            t.sent = Some(sent("4", 8));
            t.acked = Some(acked("4", 8));
        });
        r.caught_up(8);
        assert_eq!(got(), Some(8));
        r.caught_up(6);
        assert_eq!(got(), Some(8), "never goes back");
    }

    #[test]
    fn client_state() {
        let mut t = TypeStatus::default();
        assert_eq!(t.state(), ClientState::Requested);
        let now = SystemTime::now();
        t.sent = Some(Sent {
            version: "v1".to_owned(),
            nonce: "1".to_owned(),
            revision: 1,
            time: now,
        });
        assert_eq!(t.state(), ClientState::Pending);
        t.acked = Some(Acked {
            version: "v1".to_owned(),
            nonce: "1".to_owned(),
            revision: 1,
            time: now,
        });
        assert_eq!(t.state(), ClientState::Acked);
        t.sent = Some(Sent {
            version: "v2".to_owned(),
            nonce: "2".to_owned(),
            revision: 2,
            time: now,
        });
        t.nack = Some(Nacked {
            version: "v2".to_owned(),
            nonce: "2".to_owned(),
            revision: 2,
            message: "bad".to_owned(),
            names: vec![],
            time: now,
        });
        assert_eq!(t.state(), ClientState::Nacked);
    }
}
