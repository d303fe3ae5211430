//! The xDS server's metrics, recorded through the `metrics` facade (the server installs the
//! Prometheus exporter).
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `switchboard_xds_streams` | gauge | `tenant`, `type` (LDS, RDS, CDS, EDS, SDS) |
//! | `switchboard_xds_pushes_total` | counter | `tenant`, `type` |
//! | `switchboard_xds_nacks_total` | counter | `tenant`, `type` |
//! | `switchboard_xds_acks_total` | counter | `tenant`, `type` |
//! | `switchboard_xds_streams_admitted_total` | counter | `tenant`, `service` (ADS, LDS, …): streams past authentication |
//! | `switchboard_xds_stream_errors_total` | counter | `code`: streams that ended with a gRPC status other than OK, before or after admission |
//! | `switchboard_xds_connections_aged_total` | counter | connections sent GOAWAY at their maximum age |
//! | `switchboard_xds_initial_push_waiting` | gauge | streams admitted and waiting for their turn to push their initial responses |
//! | `switchboard_xds_push_bytes` | histogram | `type` |
//! | `switchboard_xds_convergence_seconds` | histogram | `type`: from the commit of a revision (the committing replica's clock) to a client's ACK of it |
//! | `switchboard_xds_snapshot_build_seconds` | histogram | |
//! | `switchboard_certificates_issued_total` | counter | `tenant`: workload certificates issued for SDS `default` |
//! | `switchboard_certificate_issue_errors_total` | counter | `tenant`: issuances the mesh CA refused or could not do |
//! | `switchboard_xds_quota_refusals_total` | counter | `tenant`: streams refused by the tenant's `streams` quota |
//! | `switchboard_xds_unverified_lookups_refused_total` | counter | | streams without verified credentials refused for naming a mesh not loaded past the lookup limit |

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

pub(crate) fn acked(tenant: &str, t: ResourceType) {
    metrics::counter!("switchboard_xds_acks_total", "tenant" => tenant.to_owned(), "type" => t.short_name())
        .increment(1);
}

/// A stream was admitted. `service` is the name its status shows ("ADS", "delta CDS"); the
/// metric splits it into `service` ("ADS", "CDS") and `protocol` ("sotw" or "delta"), since
/// label values are best kept free of spaces.
pub(crate) fn admitted(tenant: &str, service: &'static str) {
    let (protocol, service) = match service.strip_prefix("delta ") {
        Some(service) => ("delta", service),
        None => ("sotw", service),
    };
    metrics::counter!(
        "switchboard_xds_streams_admitted_total",
        "tenant" => tenant.to_owned(), "service" => service, "protocol" => protocol
    )
    .increment(1);
}

/// A stream ended with `code` (not OK).
pub(crate) fn stream_failed(code: tonic::Code) {
    metrics::counter!("switchboard_xds_stream_errors_total", "code" => code_name(code))
        .increment(1);
}

/// The canonical name of a gRPC status code, as gRPC tools print it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pub(crate) fn connection_aged() {
    metrics::counter!("switchboard_xds_connections_aged_total").increment(1);
}

/// Counts one stream in `switchboard_xds_initial_push_waiting` until dropped.
#[derive(Debug)]
pub(crate) struct InitialPushWaiting(());

impl InitialPushWaiting {
    pub(crate) fn new() -> Self {
        metrics::gauge!("switchboard_xds_initial_push_waiting").increment(1.0);
        Self(())
    }
}

impl Drop for InitialPushWaiting {
    fn drop(&mut self) {
        metrics::gauge!("switchboard_xds_initial_push_waiting").decrement(1.0);
    }
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

pub(crate) fn stream_quota_refused(tenant: &str) {
    metrics::counter!("switchboard_xds_quota_refusals_total", "tenant" => tenant.to_owned())
        .increment(1);
}

pub(crate) fn unverified_lookup_refused() {
    metrics::counter!("switchboard_xds_unverified_lookups_refused_total").increment(1);
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
