//! The cluster manager: upstream state shared by every listener of the proxy (balancers,
//! circuit breakers, outlier detection, connection pools), as Envoy's cluster manager is.
//! One per process, so `/clusters` and the stats see each cluster once however many
//! listeners route to it.
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

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use metrics::{Counter, Gauge};
use switchboard_proxy_xds::Snapshot;
use switchboard_proxy_xds::config::cluster::{Discovery, LbPolicy};
use switchboard_proxy_xds::config::endpoint::{Health, LoadAssignment, Locality};

use crate::balancer::Balancers;
use crate::circuit_breaker::{BreakerStatus, Threshold};
use crate::proxy::Upstreams;
use crate::telemetry;

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
                let state = self.balancers.existing(&cluster.name);
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
            .field("balancers", &self.balancers)
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

/// The label of an attempt's outcome in `switchboard_proxy_upstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    Status(u16),
    ConnectFailure,
    Reset,
    Timeout,
}

impl AttemptOutcome {
    const LABELS: [&'static str; 7] = [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "connect_failure",
        "reset",
        "timeout",
    ];

    fn index(self) -> usize {
        match self {
            // 1xx (a 101 upgrade is the only one that reaches here) counts with 2xx.
            AttemptOutcome::Status(s) if s < 300 => 0,
            AttemptOutcome::Status(s) if s < 400 => 1,
            AttemptOutcome::Status(s) if s < 500 => 2,
            AttemptOutcome::Status(_) => 3,
            AttemptOutcome::ConnectFailure => 4,
            AttemptOutcome::Reset => 5,
            AttemptOutcome::Timeout => 6,
        }
    }

    /// Whether outlier detection counts it as a failure.
    pub(crate) fn failed(self) -> bool {
        !matches!(self, AttemptOutcome::Status(s) if s < 500)
    }
}

/// Metric handles of one cluster, registered once.
#[derive(Debug)]
pub(crate) struct ClusterMetrics {
    pub(crate) retries: Counter,
    pub(crate) ejections: Counter,
    pub(crate) ejected: Gauge,
    pub(crate) active: Gauge,
    pub(crate) mirrored: Counter,
    overflows: [Counter; 5],
    outcomes: [Counter; 7],
}

impl ClusterMetrics {
    pub(crate) fn new(cluster: &str) -> Self {
        let label = || ("cluster", cluster.to_owned());
        Self {
            retries: metrics::counter!(telemetry::UPSTREAM_RETRIES_TOTAL, &[label()]),
            ejections: metrics::counter!(telemetry::OUTLIER_EJECTIONS_TOTAL, &[label()]),
            ejected: metrics::gauge!(telemetry::OUTLIER_EJECTED_ENDPOINTS, &[label()]),
            active: metrics::gauge!(telemetry::UPSTREAM_ACTIVE_REQUESTS, &[label()]),
            mirrored: metrics::counter!(telemetry::MIRRORED_REQUESTS_TOTAL, &[label()]),
            overflows: Threshold::ALL.map(|t| {
                metrics::counter!(
                    telemetry::CIRCUIT_BREAKER_OVERFLOWS_TOTAL,
                    &[label(), ("threshold", t.as_str().to_owned())]
                )
            }),
            outcomes: AttemptOutcome::LABELS.map(|o| {
                metrics::counter!(
                    telemetry::UPSTREAM_REQUESTS_TOTAL,
                    &[label(), ("outcome", o.to_owned())]
                )
            }),
        }
    }

    pub(crate) fn overflow(&self, t: Threshold) {
        if let Some(c) = self.overflows.get(t.index()) {
            c.increment(1);
        }
    }

    pub(crate) fn attempt(&self, outcome: AttemptOutcome) {
        if let Some(c) = self.outcomes.get(outcome.index()) {
            c.increment(1);
        }
    }
}
