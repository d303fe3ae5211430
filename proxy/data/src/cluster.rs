//! The cluster manager: upstream state shared by every listener of the proxy (balancing,
//! circuit breakers, outlier detection, connection pools, metrics), as Envoy's cluster
//! manager is. One per process, so `/clusters` and the stats see each cluster once however
//! many listeners route to it. The HTTP and TCP proxies build on it; it knows nothing of
//! them.
//!
//! - `registry`: [`ClusterRegistry`], one `ClusterState` per cluster name.
//! - `state`: `ClusterState`, a cluster's lasting state and what a request does with it
//!   (pick, record an attempt's outcome, take circuit breaker slots).
//! - `balance`: the pure part of endpoint choice (candidate set, policies) and
//!   [`pick_weighted`].
//! - `endpoint`: one endpoint's counters, [`Picked`], and [`EndpointSource`].
//! - `breakers`: circuit breaker counts and thresholds ([`Threshold`], [`BreakerStatus`]).
//! - `pool`: each worker's upstream connections, per cluster, transport socket and endpoint,
//!   under the cluster's connection circuit breakers.
//! - `metrics`: the per-cluster metric handles.
//!
//! Upstream metrics, by `cluster` (names in [`crate::telemetry`]):
//! `switchboard_proxy_upstream_requests_total{outcome}` (`2xx`…`5xx`, `connect_failure`,
//! `reset`, `timeout`; one per attempt), `switchboard_proxy_upstream_active_requests`,
//! `switchboard_proxy_upstream_retries_total`,
//! `switchboard_proxy_circuit_breaker_overflows_total{threshold}`,
//! `switchboard_proxy_outlier_ejections_total`, `switchboard_proxy_outlier_ejected_endpoints`
//! and `switchboard_proxy_mirrored_requests_total` (by mirror cluster). Handles are
//! registered when a cluster first serves a request, so the recorder must be installed
//! before traffic starts (the binary installs it first thing).

mod balance;
mod breakers;
mod endpoint;
mod h1;
mod metrics;
mod pool;
mod registry;
mod state;
#[cfg(test)]
mod tests;
mod transport;
mod upstream_body;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use switchboard_proxy_xds::Snapshot;
use switchboard_proxy_xds::config::cluster::{Discovery, LbPolicy};
use switchboard_proxy_xds::config::endpoint::{Health, LoadAssignment, Locality};

pub use balance::pick_weighted;
pub use breakers::{BreakerStatus, Overflow, Threshold};
pub use endpoint::{EndpointSource, Picked};
pub(crate) use endpoint::{HostState, endpoint_source};
pub(crate) use metrics::AttemptOutcome;
pub(crate) use pool::{ConnectionPools, Lease, Pool, SendError};
pub use registry::ClusterRegistry;
pub(crate) use state::{Clock, ClusterState, ConnectionSlot, RequestSlot};
pub(crate) use upstream_body::UpstreamBody;

/// The hasher of the maps a request looks up (pools by cluster name, connections by
/// endpoint, cluster state by name): foldhash is several times cheaper per lookup than
/// std's SipHash, and the keys come from the control plane, not from requests.
pub(crate) type FastHash = foldhash::fast::RandomState;

/// The state and connection pool of every cluster, keyed by cluster name.
#[derive(Default)]
pub struct ClusterManager {
    pub(crate) registry: Arc<ClusterRegistry>,
    pub(crate) pools: ConnectionPools,
}

impl ClusterManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// A manager for another worker thread: the same cluster state (balancing, circuit
    /// breakers, outlier detection, metrics), but connection pools of its own, so that a
    /// worker's upstream connections are driven by, and used from, that worker's runtime.
    pub fn for_worker(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            pools: ConnectionPools::default(),
        }
    }

    /// Every cluster of `snapshot` (by name), with its endpoints as the snapshot has them
    /// and what this process knows of each: requests, failures, outlier ejection.
    /// Clusters that have not served a request yet show zero counters.
    pub fn describe(&self, snapshot: &Snapshot) -> Vec<ClusterStatus> {
        let now = Instant::now();
        let wall = SystemTime::now();
        snapshot
            .clusters
            .values()
            .map(|cluster| {
                let la: Option<&LoadAssignment> = match &cluster.discovery {
                    Discovery::Static(la) => Some(la),
                    Discovery::Eds { service_name } => {
                        snapshot.endpoints.get(service_name).map(|la| la.as_ref())
                    }
                };
                let state = self.registry.existing(&cluster.name);
                let od = cluster.outlier_detection.as_ref();
                let mut endpoints = Vec::new();
                for l in la.iter().flat_map(|la| &la.localities) {
                    for e in &l.endpoints {
                        let stats = state
                            .as_ref()
                            .map(|s| s.host_stats(&e.address, od, now))
                            .unwrap_or_default();
                        let ejected_until = stats
                            .ejected_until
                            .map(|until| wall + until.saturating_duration_since(now));
                        endpoints.push(EndpointStatus {
                            address: e.address,
                            priority: l.priority,
                            locality: l.locality.clone(),
                            weight: e.weight,
                            health: e.health,
                            ejected: ejected_until.is_some(),
                            ejected_until,
                            times_ejected: stats.times_ejected,
                            active_requests: stats.active,
                            total_requests: stats.total,
                            failures: stats.failures,
                        });
                    }
                }
                ClusterStatus {
                    name: cluster.name.clone(),
                    lb_policy: cluster.lb_policy,
                    endpoints,
                    circuit_breakers: state
                        .as_ref()
                        .map(|s| s.breakers.status())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }
}

impl std::fmt::Debug for ClusterManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterManager")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// One cluster as `/clusters` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterStatus {
    pub name: String,
    pub lb_policy: LbPolicy,
    pub endpoints: Vec<EndpointStatus>,
    /// Resources in use and overflows so far.
    pub circuit_breakers: BreakerStatus,
}

impl ClusterStatus {
    /// Overflows so far of threshold `t`.
    pub fn overflows(&self, t: Threshold) -> u64 {
        self.circuit_breakers
            .overflows
            .get(t.index())
            .copied()
            .unwrap_or(0)
    }
}

/// One endpoint of a cluster as `/clusters` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStatus {
    pub address: SocketAddr,
    pub priority: u32,
    pub locality: Locality,
    pub weight: u32,
    /// The health EDS gave it.
    pub health: Health,
    /// Ejected by outlier detection now.
    pub ejected: bool,
    /// When the ejection ends (wall clock).
    pub ejected_until: Option<SystemTime>,
    pub times_ejected: u32,
    pub active_requests: u64,
    pub total_requests: u64,
    /// 5xx responses, connect failures, resets and timeouts.
    pub failures: u64,
}

impl EndpointStatus {
    /// Envoy's `health_flags`: `healthy`, or `/`-prefixed reasons the endpoint is not.
    pub fn health_flags(&self) -> String {
        let mut out = String::new();
        match self.health {
            Health::Healthy => {}
            Health::Unhealthy => out.push_str("/failed_eds_health"),
            Health::Degraded => out.push_str("/degraded_eds_health"),
            Health::Draining => out.push_str("/eds_status_draining"),
        }
        if self.ejected {
            out.push_str("/failed_outlier_check");
        }
        if out.is_empty() {
            out.push_str("healthy");
        }
        out
    }
}
