//! Per-cluster metric handles, registered once when a cluster first serves a request, and
//! the outcome label of one upstream attempt. Names are in [`crate::telemetry`].

use metrics::{Counter, Gauge};

use super::breakers::Threshold;
use crate::telemetry;

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
