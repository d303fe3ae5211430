//! The xDS server's metrics, recorded through the `metrics` facade (the server installs the
//! Prometheus exporter). [`METRICS`] documents each one (name, type, labels, meaning); the
//! README's Metrics section is checked against it, and the server describes every metric
//! with it. Labels stay bounded: per tenant and resource type at most, never per node,
//! stream or mesh. Counters that alerts take `rate()` or `increase()` of are created at zero
//! ([`init`], and per tenant when its first stream is admitted), so the first event shows
//! as an increase rather than as a new series.

use std::collections::BTreeSet;
use std::time::Duration;

use switchboard_xds_proto::ResourceType;

pub use switchboard_runtime::MetricDoc;

const fn doc(
    name: &'static str,
    kind: &'static str,
    labels: &'static str,
    help: &'static str,
) -> MetricDoc {
    MetricDoc {
        name,
        kind,
        labels,
        help,
    }
}

/// Every metric the xDS server records.
pub const METRICS: &[MetricDoc] = &[
    doc(
        "switchboard_xds_streams",
        "gauge",
        "tenant, type",
        "Open xDS streams that subscribed to each resource type (LDS, RDS, CDS, EDS, SDS); an ADS stream counts once per type",
    ),
    doc(
        "switchboard_xds_streams_admitted_total",
        "counter",
        "tenant, service, protocol",
        "Streams past authentication and quotas; service is ADS, LDS, …, protocol sotw or delta",
    ),
    doc(
        "switchboard_xds_stream_errors_total",
        "counter",
        "code",
        "Streams that ended with a gRPC status other than OK (UNAUTHENTICATED, RESOURCE_EXHAUSTED, …), before or after admission",
    ),
    doc(
        "switchboard_xds_pushes_total",
        "counter",
        "tenant, type",
        "Discovery responses sent",
    ),
    doc(
        "switchboard_xds_push_bytes",
        "histogram",
        "type",
        "Size of each discovery response sent, in bytes",
    ),
    doc(
        "switchboard_xds_acks_total",
        "counter",
        "tenant, type",
        "Responses the clients accepted (ACK)",
    ),
    doc(
        "switchboard_xds_nacks_total",
        "counter",
        "tenant, type",
        "Responses the clients rejected (NACK): they keep their previous configuration",
    ),
    doc(
        "switchboard_xds_convergence_seconds",
        "histogram",
        "type",
        "From the commit of a revision (the committing replica's clock) to a client's ACK of the first response carrying it; streams that connected after the commit are not measured",
    ),
    doc(
        "switchboard_xds_snapshot_build_seconds",
        "histogram",
        "",
        "Building one mesh's snapshot from its stored configuration: translation (incremental) and the trust bundle; the store read is in switchboard_store_seconds{op=\"mesh_snapshot\"}",
    ),
    doc(
        "switchboard_xds_snapshot_build_errors_total",
        "counter",
        "",
        "Mesh snapshot builds that failed (store unreachable, trust bundle unreadable); the last good snapshot keeps being served",
    ),
    doc(
        "switchboard_xds_initial_push_waiting",
        "gauge",
        "",
        "Admitted streams waiting for their turn to send their initial responses (admission control after a reconnect storm)",
    ),
    doc(
        "switchboard_xds_connections_aged_total",
        "counter",
        "",
        "Connections sent GOAWAY at their maximum age",
    ),
    doc(
        "switchboard_xds_quota_refusals_total",
        "counter",
        "tenant",
        "Streams refused by the tenant's streams quota",
    ),
    doc(
        "switchboard_xds_unverified_lookups_refused_total",
        "counter",
        "",
        "Streams without verified credentials refused for naming a mesh not loaded, past the lookup limit",
    ),
    doc(
        "switchboard_xds_changelog_lag_revisions",
        "gauge",
        "",
        "How many revisions this replica's loaded meshes are behind the store's newest, the worst tenant (sampled every 5 s)",
    ),
    doc(
        "switchboard_xds_changelog_lag_seconds",
        "gauge",
        "",
        "How long ago the oldest commit this replica has not applied to its loaded meshes was made, the worst tenant; 0 when current (sampled every 5 s)",
    ),
    doc(
        "switchboard_xds_notice_gaps_total",
        "counter",
        "reason",
        "Times commit notices may have been lost, so every loaded mesh was re-read: reconnect (the PostgreSQL listener reconnected) or lagged (the watcher fell behind the notices)",
    ),
    doc(
        "switchboard_xds_catchups_total",
        "counter",
        "mode",
        "Rounds that brought a tenant's loaded meshes up to a notified revision: changelog (from the change log) or reread (every loaded mesh of the tenant re-read: the log was pruned, too long or empty)",
    ),
    doc(
        "switchboard_replicas",
        "gauge",
        "state",
        "Replicas sharing the database as this one sees them: live (heartbeat within 15 s) or missing (silent longer, not yet forgotten after 10 min; a stopping replica removes itself)",
    ),
    doc(
        "switchboard_replica_heartbeat_age_seconds",
        "gauge",
        "",
        "Age of the oldest heartbeat among the replicas listed, by this replica's clock (sampled every 5 s)",
    ),
    doc(
        "switchboard_store_up",
        "gauge",
        "",
        "1 when this replica's last heartbeat write reached the store, else 0 (sampled every 5 s)",
    ),
    doc(
        "switchboard_certificates_issued_total",
        "counter",
        "tenant",
        "Workload certificates issued for SDS default",
    ),
    doc(
        "switchboard_certificate_issue_errors_total",
        "counter",
        "tenant",
        "Workload certificate issuances the mesh CA refused or could not do",
    ),
    doc(
        "switchboard_sidecar_registrations_total",
        "counter",
        "tenant",
        "Sidecar endpoints registered (written) from their xDS streams",
    ),
    doc(
        "switchboard_sidecar_deregistrations_total",
        "counter",
        "tenant",
        "Sidecar endpoints removed after their grace period",
    ),
];

/// Creates at zero the counters whose label values are known in advance.
pub(crate) fn init() {
    metrics::counter!("switchboard_xds_connections_aged_total").increment(0);
    metrics::counter!("switchboard_xds_unverified_lookups_refused_total").increment(0);
    metrics::counter!("switchboard_xds_snapshot_build_errors_total").increment(0);
    metrics::gauge!("switchboard_xds_initial_push_waiting").increment(0.0);
    for reason in ["reconnect", "lagged"] {
        metrics::counter!("switchboard_xds_notice_gaps_total", "reason" => reason).increment(0);
    }
    for mode in ["changelog", "reread"] {
        metrics::counter!("switchboard_xds_catchups_total", "mode" => mode).increment(0);
    }
}

/// Creates at zero a tenant's counters of rare events, when its first stream is admitted.
fn init_tenant(tenant: &str) {
    for name in [
        "switchboard_certificates_issued_total",
        "switchboard_certificate_issue_errors_total",
        "switchboard_xds_quota_refusals_total",
        "switchboard_sidecar_registrations_total",
        "switchboard_sidecar_deregistrations_total",
    ] {
        metrics::counter!(name, "tenant" => tenant.to_owned()).increment(0);
    }
}

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
    init_tenant(tenant);
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

pub(crate) fn snapshot_build_failed() {
    metrics::counter!("switchboard_xds_snapshot_build_errors_total").increment(1);
}

/// Notices may have been lost (`reason`: "reconnect" or "lagged").
pub(crate) fn notice_gap(reason: &'static str) {
    metrics::counter!("switchboard_xds_notice_gaps_total", "reason" => reason).increment(1);
}

/// A tenant's loaded meshes were brought up to date (`mode`: "changelog" or "reread").
pub(crate) fn caught_up(mode: &'static str) {
    metrics::counter!("switchboard_xds_catchups_total", "mode" => mode).increment(1);
}

/// The change-log lag of this replica's loaded meshes, the worst tenant.
pub(crate) fn changelog_lag(revisions: i64, seconds: f64) {
    metrics::gauge!("switchboard_xds_changelog_lag_revisions").set(revisions as f64);
    metrics::gauge!("switchboard_xds_changelog_lag_seconds").set(seconds);
}

/// The replicas this one sees, and the age of the oldest heartbeat among them.
pub(crate) fn replicas(live: usize, missing: usize, oldest_age: f64) {
    metrics::gauge!("switchboard_replicas", "state" => "live").set(live as f64);
    metrics::gauge!("switchboard_replicas", "state" => "missing").set(missing as f64);
    metrics::gauge!("switchboard_replica_heartbeat_age_seconds").set(oldest_age);
}

pub(crate) fn store_up(up: bool) {
    metrics::gauge!("switchboard_store_up").set(if up { 1.0 } else { 0.0 });
}
