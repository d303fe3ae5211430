//! The registration rules, on a synthetic clock against an in-memory store: each test runs
//! the machine the way the task does (a round after every event and at every wake-up, each
//! action answered before the next) and looks at what the store holds.

use std::collections::HashMap;

use serde_json::{Value, json};
use switchboard_store::PROXY_STALE_MS;
use switchboard_translator::SidecarParams;

use super::*;
use crate::node::SidecarEndpointMeta;

mod lifecycle;
mod sweep;

const GRACE: Duration = Duration::from_secs(10);
const SYNC: Duration = Duration::from_millis(250);
const HERE: &str = "here";
const STALE: Duration = Duration::from_millis(PROXY_STALE_MS.unsigned_abs());

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn node(name: &str) -> NodeId {
    NodeId {
        tenant: "acme".to_owned(),
        mesh: "prod".to_owned(),
        name: name.to_owned(),
    }
}

fn key(name: &str) -> ResourceKey {
    ResourceKey::new("acme", "prod", Kind::Endpoint, name)
}

/// The endpoint sidecar `node` of `service` asks for at `address`.
fn desired(node: &str, service: &str, address: &str) -> Desired {
    let params = SidecarParams {
        service: service.to_owned(),
        inbound_port: 15006,
        app_port: 8080,
        outbound_port: 15001,
    };
    let meta = SidecarEndpointMeta {
        address: Some(address.parse().unwrap()),
        ..Default::default()
    };
    Desired::new(node, &params, &meta, None).unwrap()
}

/// Tenant `acme`'s store, as far as registration sees it.
#[derive(Default)]
struct FakeStore {
    revision: i64,
    /// Per resource: its spec and the revision of its last write.
    resources: HashMap<ResourceKey, (Value, i64)>,
    changes: Vec<Change>,
    /// The log keeps only the revisions after this.
    pruned_through: i64,
    /// Committed revisions not yet announced to the machine.
    notices: Vec<i64>,
    /// The replicas holding a stream of a node (`proxies` rows).
    replicas: HashMap<String, Vec<String>>,
    /// Nodes live on any replica.
    live: HashSet<Triple>,
    /// Every call fails.
    down: bool,
    /// Deletes fail.
    deletes_fail: bool,
    /// Writes of endpoints keep being raced.
    contended: bool,
    /// The mesh was deleted.
    mesh_gone: bool,
    /// Every action performed, in order.
    log: Vec<Action>,
}

impl FakeStore {
    fn new() -> Self {
        let mut store = FakeStore {
            revision: 1,
            ..Default::default()
        };
        store.write(
            ResourceKey::new("acme", "prod", Kind::Service, "pay"),
            json!({"port": 8080}),
        );
        store.notices.clear();
        store
    }

    fn commit(&mut self, key: &ResourceKey, op: ChangeOp) -> i64 {
        self.revision += 1;
        self.changes.push(Change {
            revision: self.revision,
            mesh: key.mesh.clone(),
            kind: key.kind,
            name: key.name.clone(),
            op,
            time: 0,
        });
        self.notices.push(self.revision);
        self.revision
    }

    /// A write as a user makes it.
    fn write(&mut self, key: ResourceKey, spec: Value) {
        let revision = self.commit(&key, ChangeOp::Put);
        self.resources.insert(key, (spec, revision));
    }

    fn remove(&mut self, key: &ResourceKey) {
        self.resources.remove(key);
        self.commit(key, ChangeOp::Delete);
    }

    fn stored(&self, key: &ResourceKey) -> Option<StoredResource> {
        self.resources
            .get(key)
            .map(|(spec, revision)| StoredResource {
                key: key.clone(),
                spec: spec.clone(),
                labels: Default::default(),
                revision: *revision,
                create_time: 0,
                update_time: 0,
            })
    }

    fn endpoint(&self, name: &str) -> Option<StoredResource> {
        self.stored(&key(name))
    }

    fn down() -> StoreError {
        StoreError::Config("the database is down".to_owned())
    }

    fn perform(&mut self, action: &Action) -> Input {
        self.log.push(action.clone());
        match action.clone() {
            Action::ReadRevision { tenant } => Input::Revision {
                tenant,
                result: if self.down {
                    Err(Self::down())
                } else {
                    Ok(self.revision)
                },
            },
            Action::Upsert { node, key, spec } => {
                let result = self.upsert(key, &spec);
                Input::Upserted { node, result }
            }
            Action::ListReplicas { node } => Input::Replicas {
                result: if self.down {
                    Err(Self::down())
                } else {
                    Ok(self.replicas.get(&node.name).cloned().unwrap_or_default())
                },
                node,
            },
            Action::Delete { key, etag } => {
                let result = match self.stored(&key) {
                    _ if self.down || self.deletes_fail => Err(Self::down()),
                    None => Err(StoreError::PreconditionFailed { current: None }),
                    Some(r) if r.etag() != etag => Err(StoreError::PreconditionFailed {
                        current: Some(r.etag()),
                    }),
                    Some(_) => {
                        self.remove(&key);
                        Ok(())
                    }
                };
                Input::Deleted { key, result }
            }
            Action::ReadChanges {
                tenant,
                since,
                limit,
            } => {
                let result = if self.down {
                    Err(Self::down())
                } else if since < self.pruned_through {
                    Err(StoreError::Compacted {
                        since,
                        pruned_through: self.pruned_through,
                    })
                } else {
                    Ok(self
                        .changes
                        .iter()
                        .filter(|c| c.revision > since)
                        .take(limit as usize)
                        .cloned()
                        .collect())
                };
                Input::Changes { tenant, result }
            }
            Action::ListManaged => {
                let mut endpoints: Vec<StoredResource> = self
                    .resources
                    .keys()
                    .filter(|k| k.kind == Kind::Endpoint && k.name.starts_with("sidecar-"))
                    .filter_map(|k| self.stored(k))
                    .collect();
                endpoints.sort_by(|a, b| a.key.name.cmp(&b.key.name));
                Input::Managed {
                    result: if self.down {
                        Err(Self::down())
                    } else {
                        Ok((endpoints, self.live.clone()))
                    },
                }
            }
        }
    }

    fn upsert(&mut self, key: ResourceKey, spec: &Spec) -> Result<Upserted, UpsertError> {
        if self.down {
            return Err(Self::down().into());
        }
        if self.mesh_gone {
            return Err(StoreError::NotFound {
                what: "mesh",
                name: key.mesh,
            }
            .into());
        }
        if let Some(r) = self.stored(&key)
            && r.spec == spec.to_json()
        {
            return Ok(Upserted::Unchanged(r.etag()));
        }
        if self.contended {
            return Err(UpsertError::Contended);
        }
        let Spec::Endpoint(e) = spec else {
            panic!("registration writes endpoints only: {spec:?}");
        };
        let service = ResourceKey::new(&key.tenant, &key.mesh, Kind::Service, &e.service);
        if self.stored(&service).is_none() {
            return Err(StoreError::DanglingReference {
                field: "service".to_owned(),
                kind: Kind::Service,
                name: e.service.clone(),
            }
            .into());
        }
        self.write(key.clone(), spec.to_json());
        Ok(Upserted::Written(self.stored(&key).unwrap().etag()))
    }

    /// How many times an action matching `f` was performed.
    fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.log.iter().filter(|a| f(a)).count()
    }

    fn writes_of(&self, name: &str) -> usize {
        self.count(|a| matches!(a, Action::Upsert { key, .. } if key.name == name))
    }

    fn deletes_of(&self, name: &str) -> usize {
        self.count(|a| matches!(a, Action::Delete { key, .. } if key.name == name))
    }
}

/// The machine, driven as the task drives it, on tokio's paused clock: every test runs under
/// `#[tokio::test(start_paused = true)]`, and `advance` moves that clock.
struct Harness {
    machine: Machine,
    store: FakeStore,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        Self::with_grace(GRACE)
    }

    fn with_grace(grace: Duration) -> Self {
        let now = Instant::now();
        Self {
            machine: Machine::new(HERE.to_owned(), grace, SYNC, now),
            store: FakeStore::new(),
            now,
        }
    }

    /// Steps `input` and performs every action that follows, answering each.
    fn step(&mut self, input: Input) {
        self.now = Instant::now();
        let mut next = self.machine.step(input, self.now);
        while let Some(action) = next {
            let answer = self.store.perform(&action);
            next = self.machine.step(answer, self.now);
        }
    }

    /// Takes the store's notices in, then runs a round.
    fn round(&mut self) {
        for revision in std::mem::take(&mut self.store.notices) {
            self.step(Input::Committed {
                tenant: "acme".to_owned(),
                revision,
            });
        }
        self.step(Input::Round);
    }

    /// An event, and the round that follows it.
    fn event(&mut self, input: Input) {
        self.step(input);
        self.round();
    }

    fn open(&mut self, stream: u64, desired: Desired) {
        let node = node(desired.spec_node());
        self.event(Input::Opened {
            stream,
            node,
            desired,
        });
    }

    fn close(&mut self, stream: u64, name: &str) {
        self.event(Input::Closed {
            stream,
            node: node(name),
        });
    }

    /// Lets `d` pass on the paused clock, running a round at every wake-up (and whenever
    /// notices wait).
    async fn advance(&mut self, d: Duration) {
        let until = Instant::now() + d;
        for _ in 0..100_000 {
            let now = Instant::now();
            let wake = if self.store.notices.is_empty() {
                self.machine.wake_at(now)
            } else {
                now
            };
            if wake > until {
                tokio::time::advance(until - now).await;
                self.now = Instant::now();
                return;
            }
            if wake > now {
                tokio::time::advance(wake - now).await;
            }
            self.round();
        }
        panic!("the machine keeps waking up without moving on");
    }

    /// Runs what is due now.
    async fn settle(&mut self) {
        self.advance(Duration::ZERO).await;
    }
}

impl Desired {
    /// The node the endpoint names.
    fn spec_node(&self) -> &str {
        match &self.spec {
            Spec::Endpoint(e) => e.node.as_deref().unwrap_or_default(),
            _ => "",
        }
    }
}
