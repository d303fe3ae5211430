//! The cluster registry: one [`ClusterState`] per cluster name, created when the cluster
//! first serves a request and forgotten when a later snapshot no longer has it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use switchboard_proxy_xds::Snapshot;
use switchboard_proxy_xds::config::cluster::LbPolicy;

use super::FastHash;
use super::endpoint::{EndpointSource, Picked};
use super::state::{Clock, ClusterState};

/// The state of every cluster that has served a request, keyed by cluster name; shared by
/// all requests of all listeners.
#[derive(Debug, Default)]
pub struct ClusterRegistry {
    clusters: Mutex<HashMap<String, Arc<ClusterState>, FastHash>>,
}

impl ClusterRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// An endpoint of `cluster` under `policy`, with no request hash and no outlier
    /// detection; `None` when the cluster has no endpoint to use. Keep the returned
    /// [`Picked`] alive while the request is in flight: least request counts it.
    ///
    /// `assignment` is the `Arc` that owns the endpoints (the EDS resource, or the cluster
    /// itself for a static one): the candidate set is rebuilt when that `Arc` changes.
    pub fn pick<A: EndpointSource>(
        &self,
        cluster: &str,
        policy: LbPolicy,
        assignment: &Arc<A>,
    ) -> Option<Picked> {
        let source: Arc<dyn EndpointSource> = assignment.clone();
        self.cluster(cluster)
            .pick(policy, &source, None, None, Clock)
    }

    /// The state of cluster `name`, created on first use.
    pub(crate) fn cluster(&self, name: &str) -> Arc<ClusterState> {
        let mut map = self.lock();
        if let Some(c) = map.get(name) {
            return c.clone();
        }
        let c = Arc::new(ClusterState::new(name));
        map.insert(name.to_owned(), c.clone());
        c
    }

    /// [`Self::cluster`], forgetting clusters that `snapshot` no longer has whenever a new
    /// one is created (Envoy drops a removed cluster's state too).
    pub(crate) fn cluster_in(&self, name: &str, snapshot: &Snapshot) -> Arc<ClusterState> {
        let mut map = self.lock();
        if let Some(c) = map.get(name) {
            return c.clone();
        }
        map.retain(|n, _| snapshot.clusters.contains_key(n));
        let c = Arc::new(ClusterState::new(name));
        map.insert(name.to_owned(), c.clone());
        c
    }

    /// The state of cluster `name` if it has served a request.
    pub(crate) fn existing(&self, name: &str) -> Option<Arc<ClusterState>> {
        self.lock().get(name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ClusterState>, FastHash>> {
        self.clusters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
