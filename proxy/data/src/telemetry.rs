//! Observability of the data path, as an Envoy or Istio user expects it:
//!
//! - **Metrics** through the `metrics` facade (the binary installs the Prometheus recorder
//!   and passes [`LATENCY_BUCKETS`] for the `_seconds` histograms). Every metric name the
//!   proxy emits is a constant here, and [`describe_metrics`] registers their help texts
//!   and units.
//! - **Access logs** ([`AccessLog`]): one `tracing` event per request at INFO with target
//!   [`ACCESS_LOG_TARGET`] (`RUST_LOG=access_log=off` silences them), rendered from an
//!   Envoy-style format string parsed once ([`Template`]) or as one JSON object, written when
//!   the response body ends so that byte counts and durations are final.
//! - **W3C trace context** ([`TraceParent`]): every forwarded request carries a
//!   `traceparent` naming the proxy's span as parent, in the caller's trace if it sent a
//!   valid one, else in a new trace sampled at [`set_trace_sampling_ratio`].
//! - **Spans**: one `proxy_request` span per request (INFO), exportable over OTLP with
//!   [`otlp_layer`]; its parent is the incoming `traceparent`, so exported spans join the
//!   caller's trace.
//!
//! Configuration is process-wide ([`set_access_log`], [`set_trace_sampling_ratio`]), set by
//! the binary from its flags before serving.

mod access_log;
pub(crate) mod meters;
mod otlp;
pub(crate) mod request;
mod trace_context;

use std::net::SocketAddr;

pub use access_log::{
    ACCESS_LOG_TARGET, AccessLog, AccessLogFormat, DEFAULT_FORMAT, Template, set_access_log,
};
pub use otlp::{OtlpGuard, OtlpLayer, otlp_layer};
pub use trace_context::{TraceParent, set_trace_sampling_ratio, trace_sampling_ratio};

/// Downstream requests, by listener, route configuration, virtual host, cluster (empty
/// for local replies that never chose one: no route, direct responses, redirects, fault
/// aborts) and status class (`2xx`…). Counted when the response headers are sent.
pub const REQUESTS_TOTAL: &str = "switchboard_proxy_requests_total";
/// Time from the request's arrival to its response headers, by listener and cluster.
pub const REQUEST_DURATION_SECONDS: &str = "switchboard_proxy_request_duration_seconds";
/// Downstream requests in flight (until the response body ends), by listener.
pub const ACTIVE_REQUESTS: &str = "switchboard_proxy_active_requests";
/// Retries sent upstream, by cluster.
pub const UPSTREAM_RETRIES_TOTAL: &str = "switchboard_proxy_upstream_retries_total";
/// Endpoints ejected by outlier detection, by cluster.
pub const OUTLIER_EJECTIONS_TOTAL: &str = "switchboard_proxy_outlier_ejections_total";
/// Endpoints currently ejected by outlier detection, by cluster.
pub const OUTLIER_EJECTED_ENDPOINTS: &str = "switchboard_proxy_outlier_ejected_endpoints";
/// Requests refused because a circuit breaker was full, by cluster.
pub const CIRCUIT_BREAKER_OVERFLOWS_TOTAL: &str =
    "switchboard_proxy_circuit_breaker_overflows_total";
/// Requests sent upstream (every attempt), by cluster.
pub const UPSTREAM_REQUESTS_TOTAL: &str = "switchboard_proxy_upstream_requests_total";
/// Upstream requests in flight, by cluster.
pub const UPSTREAM_ACTIVE_REQUESTS: &str = "switchboard_proxy_upstream_active_requests";
/// Requests copied to a mirror cluster, by cluster.
pub const MIRRORED_REQUESTS_TOTAL: &str = "switchboard_proxy_mirrored_requests_total";
/// Open downstream connections, by listener.
pub const LISTENER_ACTIVE_CONNECTIONS: &str = "switchboard_proxy_listener_active_connections";
/// Accepted downstream connections, by listener.
pub const LISTENER_CONNECTIONS_TOTAL: &str = "switchboard_proxy_listener_connections_total";
/// Downstream connections closed at accept because the process was at its connection limit
/// (`--max-downstream-connections`), by listener: Envoy's `downstream_global_cx_overflow`.
pub const LISTENER_CONNECTIONS_OVERFLOW_TOTAL: &str =
    "switchboard_proxy_listener_connections_overflow_total";
/// Bytes relayed by TCP proxy listeners, by listener and direction.
pub const TCP_BYTES_TOTAL: &str = "switchboard_proxy_tcp_bytes_total";
/// Requests (`filter="http"`, answered 403) and connections (`filter="network"`, closed)
/// denied by RBAC, by listener and policy (`none`: no policy allowed it). Envoy's
/// `http.<stat_prefix>.rbac.denied` and `<stat_prefix>.rbac.denied`, per policy.
pub const RBAC_DENIED_TOTAL: &str = "switchboard_proxy_rbac_denied_total";

/// Histogram buckets in seconds for latencies, from 0.5 ms to 30 s; the binary passes them
/// to the Prometheus exporter for the `_seconds` histograms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Registers the help text and unit of every metric above with the installed recorder.
/// Call it once, after installing the recorder.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Downstream HTTP requests by listener, route configuration, virtual host, cluster and status class"
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from a downstream request's arrival to its response headers"
    );
    describe_gauge!(
        ACTIVE_REQUESTS,
        Unit::Count,
        "Downstream HTTP requests in flight"
    );
    describe_counter!(
        UPSTREAM_RETRIES_TOTAL,
        Unit::Count,
        "Retries of upstream requests"
    );
    describe_counter!(
        OUTLIER_EJECTIONS_TOTAL,
        Unit::Count,
        "Endpoints ejected by outlier detection"
    );
    describe_gauge!(
        OUTLIER_EJECTED_ENDPOINTS,
        Unit::Count,
        "Endpoints currently ejected by outlier detection"
    );
    describe_counter!(
        CIRCUIT_BREAKER_OVERFLOWS_TOTAL,
        Unit::Count,
        "Upstream requests refused because a circuit breaker was full"
    );
    describe_counter!(
        UPSTREAM_REQUESTS_TOTAL,
        Unit::Count,
        "Requests sent upstream, retries included"
    );
    describe_gauge!(
        UPSTREAM_ACTIVE_REQUESTS,
        Unit::Count,
        "Upstream requests in flight"
    );
    describe_counter!(
        MIRRORED_REQUESTS_TOTAL,
        Unit::Count,
        "Requests copied to a mirror cluster"
    );
    describe_gauge!(
        LISTENER_ACTIVE_CONNECTIONS,
        Unit::Count,
        "Open downstream connections"
    );
    describe_counter!(
        LISTENER_CONNECTIONS_TOTAL,
        Unit::Count,
        "Accepted downstream connections"
    );
    describe_counter!(
        LISTENER_CONNECTIONS_OVERFLOW_TOTAL,
        Unit::Count,
        "Downstream connections closed at accept because the process was at its connection limit"
    );
    describe_counter!(
        RBAC_DENIED_TOTAL,
        Unit::Count,
        "Requests and connections denied by RBAC, by listener, filter and policy"
    );
    describe_counter!(
        TCP_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes relayed by TCP proxy listeners"
    );
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An access log format string that cannot be used; `offset` is the byte offset in it.
    #[error("access log format, at byte {offset}: {message}")]
    AccessLogFormat { offset: usize, message: String },
    #[error("trace sampling ratio {0} is not between 0 and 1")]
    SamplingRatio(f64),
    #[error("OTLP exporter for {endpoint:?}: {message}")]
    Otlp { endpoint: String, message: String },
}

/// Envoy's response flags: why a response is not simply the upstream's. The forward path
/// and local replies insert them into the response extensions; the access log's
/// `%RESPONSE_FLAGS%` prints them (Envoy's short names, in Envoy's order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ResponseFlags(u16);

impl ResponseFlags {
    /// `UH`: no healthy upstream endpoint.
    pub(crate) const NO_HEALTHY_UPSTREAM: Self = Self(1);
    /// `UF`: the upstream connection failed.
    pub(crate) const UPSTREAM_CONNECTION_FAILURE: Self = Self(1 << 1);
    /// `UO`: a circuit breaker overflowed.
    pub(crate) const UPSTREAM_OVERFLOW: Self = Self(1 << 2);
    /// `NR`: no route (or no route configuration) for the request.
    pub(crate) const NO_ROUTE: Self = Self(1 << 3);
    /// `URX`: the retry limit was reached and the last attempt's answer was passed on.
    pub(crate) const UPSTREAM_RETRY_LIMIT_EXCEEDED: Self = Self(1 << 4);
    /// `NC`: the route's cluster is not configured.
    pub(crate) const NO_CLUSTER: Self = Self(1 << 5);
    /// `DC`: the downstream went away before the response ended.
    pub(crate) const DOWNSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 6);
    /// `UT`: the upstream request timed out.
    pub(crate) const UPSTREAM_REQUEST_TIMEOUT: Self = Self(1 << 7);
    /// `UR`: the upstream reset the stream.
    pub(crate) const UPSTREAM_REMOTE_RESET: Self = Self(1 << 8);
    /// `DI`: a fault delay was injected.
    pub(crate) const DELAY_INJECTED: Self = Self(1 << 9);
    /// `FI`: a fault abort was injected.
    pub(crate) const FAULT_INJECTED: Self = Self(1 << 10);
    /// `SI`: the stream moved nothing for `stream_idle_timeout`.
    pub(crate) const STREAM_IDLE_TIMEOUT: Self = Self(1 << 11);

    const NAMES: [(Self, &'static str); 12] = [
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::UPSTREAM_CONNECTION_FAILURE, "UF"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::NO_ROUTE, "NR"),
        (Self::UPSTREAM_RETRY_LIMIT_EXCEEDED, "URX"),
        (Self::NO_CLUSTER, "NC"),
        (Self::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
        (Self::UPSTREAM_REQUEST_TIMEOUT, "UT"),
        (Self::UPSTREAM_REMOTE_RESET, "UR"),
        (Self::DELAY_INJECTED, "DI"),
        (Self::FAULT_INJECTED, "FI"),
        (Self::STREAM_IDLE_TIMEOUT, "SI"),
    ];

    pub(crate) const fn empty() -> Self {
        Self(0)
    }

    pub(crate) fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    pub(crate) const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub(crate) const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Envoy's spelling: short names joined by `,`, or `-` for none.
impl std::fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Response extension: the response was made by the proxy itself (not relayed from an
/// upstream). Inserted by every local reply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalReply;

/// The addresses of the downstream connection a request arrived on
/// (`%DOWNSTREAM_REMOTE_ADDRESS%`, `%DOWNSTREAM_LOCAL_ADDRESS%`), handed with each request
/// to the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamAddrs {
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_display_in_envoy_order() {
        assert_eq!(ResponseFlags::empty().to_string(), "-");
        let mut f = ResponseFlags::FAULT_INJECTED;
        f.insert(ResponseFlags::DELAY_INJECTED);
        f.insert(ResponseFlags::NO_HEALTHY_UPSTREAM);
        assert_eq!(f.to_string(), "UH,DI,FI");
        assert!(f.contains(ResponseFlags::DELAY_INJECTED));
        assert!(!f.contains(ResponseFlags::NO_ROUTE));
    }

    #[test]
    fn buckets_are_increasing_seconds() {
        assert_eq!(LATENCY_BUCKETS.first(), Some(&0.0005));
        assert_eq!(LATENCY_BUCKETS.last(), Some(&30.0));
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
