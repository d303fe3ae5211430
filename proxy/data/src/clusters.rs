//! The cluster manager: upstream state shared by every listener of the proxy (balancers,
//! connection pools), as Envoy's cluster manager is. One per process, so `/clusters` and the
//! stats see each cluster once however many listeners route to it.

use crate::balancer::Balancers;
use crate::proxy::Upstreams;

/// Balancer state and connection pools for every cluster, keyed by cluster name.
#[derive(Default)]
pub struct ClusterManager {
    pub(crate) balancers: Balancers,
    pub(crate) upstreams: Upstreams,
}

impl ClusterManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// The balancers, for introspection (`/clusters`).
    pub fn balancers(&self) -> &Balancers {
        &self.balancers
    }
}

impl std::fmt::Debug for ClusterManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterManager")
            .field("balancers", &self.balancers)
            .finish_non_exhaustive()
    }
}
