//! The applied configuration the data path reads: one immutable [`Snapshot`] behind a lock
//! that is held only to swap or clone an `Arc`, so readers never wait on conversion.
//!
//! Updates are two-phase (as ztunnel's): the client converts protos into [`crate::config`]
//! types without any lock, then each handler call builds the next snapshot and swaps it in
//! once, so the data path never sees half of a response.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::watch;

use crate::config::{Cluster, Listener, LoadAssignment, RouteConfig, Secret};
use crate::handler::{Handler, Rejected};

/// Everything applied, by resource name. Values are `Arc`s so that a new snapshot shares the
/// unchanged resources of the previous one.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub listeners: BTreeMap<String, Arc<Listener>>,
    pub routes: BTreeMap<String, Arc<RouteConfig>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Load assignments by EDS name (the cluster's `service_name`, usually its name).
    pub endpoints: BTreeMap<String, Arc<LoadAssignment>>,
    /// SDS secrets by name; TLS configurations are built from the latest of each.
    pub secrets: BTreeMap<String, Arc<Secret>>,
    /// Bumped on every swap, so watchers can tell snapshots apart.
    pub generation: u64,
}

/// A handle on the applied configuration; clones share it.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    current: RwLock<Arc<Snapshot>>,
    /// Serialises writers, so two updates cannot both start from the same snapshot.
    writer: Mutex<()>,
    changes: watch::Sender<u64>,
}

impl Default for ConfigStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigStore {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(Snapshot::default())),
                writer: Mutex::new(()),
                changes: watch::channel(0).0,
            }),
        }
    }

    /// The current configuration; hold it for the duration of one request or connection.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Receives the generation of each new snapshot (listeners to bind or drain, pools to
    /// rebuild).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Builds the next snapshot from a copy of the current one and swaps it in.
    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = Snapshot::clone(&self.snapshot());
        change(&mut next);
        next.generation += 1;
        let generation = next.generation;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        self.inner.changes.send_replace(generation);
    }
}

fn apply_to<T>(
    map: &mut BTreeMap<String, Arc<T>>,
    updates: Vec<(String, T)>,
    removed: Vec<String>,
) {
    for name in removed {
        map.remove(&name);
    }
    for (name, value) in updates {
        map.insert(name, Arc::new(value));
    }
}

macro_rules! store_handler {
    ($t:ty, $field:ident) => {
        impl Handler<$t> for ConfigStore {
            fn apply(
                &mut self,
                updates: Vec<(String, $t)>,
                removed: Vec<String>,
            ) -> Result<(), Vec<Rejected>> {
                self.update(|s| apply_to(&mut s.$field, updates, removed));
                Ok(())
            }
        }
    };
}

store_handler!(Listener, listeners);
store_handler!(RouteConfig, routes);
store_handler!(Cluster, clusters);
store_handler!(LoadAssignment, endpoints);
store_handler!(Secret, secrets);
