//! The xDS server's metrics, recorded through the `metrics` facade (the server installs the
//! Prometheus exporter).
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `switchboard_xds_streams` | gauge | `tenant`, `type` (LDS, RDS, CDS, EDS, SDS) |
//! | `switchboard_xds_pushes_total` | counter | `tenant`, `type` |
//! | `switchboard_xds_nacks_total` | counter | `tenant`, `type` |
//! | `switchboard_xds_push_bytes` | histogram | `type` |
//! | `switchboard_xds_convergence_seconds` | histogram | `type`: from the commit of a revision (the committing replica's clock) to a client's ACK of it |
//! | `switchboard_xds_snapshot_build_seconds` | histogram | |
//! | `switchboard_certificates_issued_total` | counter | `tenant`: workload certificates issued for SDS `default` |
//! | `switchboard_certificate_issue_errors_total` | counter | `tenant`: issuances the mesh CA refused or could not do |

use std::collections::BTreeSet;
use std::time::Duration;

use switchboard_xds_proto::ResourceType;

pub(crate) fn pushed(tenant: &str, t: ResourceType, bytes: usize) {
    metrics::counter!("switchboard_xds_pushes_total", "tenant" => tenant.to_owned(), "type" => t.short_name())
        .increment(1);
    metrics::histogram!("switchboard_xds_push_bytes", "type" => t.short_name())
        .record(bytes as f64);
}

pub(crate) fn nacked(tenant: &str, t: ResourceType) {
    metrics::counter!("switchboard_xds_nacks_total", "tenant" => tenant.to_owned(), "type" => t.short_name())
        .increment(1);
}

pub(crate) fn converged(t: ResourceType, elapsed: Duration) {
    metrics::histogram!("switchboard_xds_convergence_seconds", "type" => t.short_name())
        .record(elapsed.as_secs_f64());
}

pub(crate) fn snapshot_built(elapsed: Duration) {
    metrics::histogram!("switchboard_xds_snapshot_build_seconds").record(elapsed.as_secs_f64());
}

pub(crate) fn certificate_issued(tenant: &str) {
    metrics::counter!("switchboard_certificates_issued_total", "tenant" => tenant.to_owned())
        .increment(1);
}

pub(crate) fn certificate_issue_failed(tenant: &str) {
    metrics::counter!("switchboard_certificate_issue_errors_total", "tenant" => tenant.to_owned())
        .increment(1);
}

/// Counts one stream in `switchboard_xds_streams` for each type it has asked for, until
/// dropped.
#[derive(Debug)]
pub(crate) struct StreamGauge {
    tenant: String,
    types: BTreeSet<ResourceType>,
}

impl StreamGauge {
    pub(crate) fn new(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            types: BTreeSet::new(),
        }
    }

    pub(crate) fn subscribed(&mut self, t: ResourceType) {
        if self.types.insert(t) {
            metrics::gauge!("switchboard_xds_streams", "tenant" => self.tenant.clone(), "type" => t.short_name())
                .increment(1.0);
        }
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        for t in &self.types {
            metrics::gauge!("switchboard_xds_streams", "tenant" => self.tenant.clone(), "type" => t.short_name())
                .decrement(1.0);
        }
    }
}
