//! Type URLs of the protobuf messages Switchboard sends inside `Any`.
//!
//! xDS identifies every resource, and every typed extension config (HTTP and
//! network filters, transport sockets, protocol options), by a type URL. The
//! strings are spelled out as constants so they can be used in `match` arms and
//! `const` contexts; a unit test checks each one against the `prost::Name` impl
//! of the generated message, so they cannot drift from envoy-types.
//!
//! This file must stay free of crate dependencies: `build.rs` includes it to
//! make sure the descriptor set served over gRPC reflection holds the
//! definition of every message listed in [`ALL`], so `grpcurl` can decode the
//! `Any` payloads a client receives.

/// The prefix shared by every type URL Envoy produces and expects.
pub const PREFIX: &str = "type.googleapis.com/";

// --- xDS resource types (one per discovery service) ---

/// LDS resource: `envoy.config.listener.v3.Listener`.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// RDS resource: `envoy.config.route.v3.RouteConfiguration`.
pub const ROUTE_CONFIGURATION: &str =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// CDS resource: `envoy.config.cluster.v3.Cluster`.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// EDS resource: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
pub const CLUSTER_LOAD_ASSIGNMENT: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// SDS resource: `envoy.extensions.transport_sockets.tls.v3.Secret`.
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

// --- typed extension configs carried in `typed_config` ---

/// Network filter that turns a listener into an HTTP listener (and the
/// `api_listener` that proxyless gRPC clients ask for).
pub const HTTP_CONNECTION_MANAGER: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// Terminal HTTP filter; must be last in every HCM filter chain.
pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
/// HTTP fault injection filter (delays and aborts from route rules).
pub const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
/// HTTP RBAC filter (authorization policies on inbound listeners).
pub const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// Per-route override of the HTTP RBAC filter (`typed_per_filter_config`).
pub const RBAC_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
/// Network (L4) RBAC filter, for TCP services.
pub const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
/// Network filter proxying raw TCP to a cluster.
pub const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// Client-side TLS transport socket (cluster `transport_socket`).
pub const UPSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
/// Server-side TLS transport socket (filter chain `transport_socket`).
pub const DOWNSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
/// Upstream HTTP protocol options (`typed_extension_protocol_options` of a
/// cluster key `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`);
/// how a cluster is told to speak HTTP/2 (gRPC backends).
pub const HTTP_PROTOCOL_OPTIONS: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// The TLS inspector listener filter (TLS and plaintext on one port).
pub const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
/// Access log to a file.
pub const FILE_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
/// Access log to the proxy's standard output.
pub const STDOUT_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";

/// Every type URL above (except [`PREFIX`]).
pub const ALL: &[&str] = &[
    LISTENER,
    ROUTE_CONFIGURATION,
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    SECRET,
    HTTP_CONNECTION_MANAGER,
    ROUTER,
    FAULT,
    RBAC,
    RBAC_PER_ROUTE,
    NETWORK_RBAC,
    TCP_PROXY,
    UPSTREAM_TLS_CONTEXT,
    DOWNSTREAM_TLS_CONTEXT,
    TLS_INSPECTOR,
    HTTP_PROTOCOL_OPTIONS,
    FILE_ACCESS_LOG,
    STDOUT_ACCESS_LOG,
];

/// The fully-qualified message name a type URL refers to: everything after
/// the last `/`, as protobuf defines it (the prefix is arbitrary).
pub fn message_name(type_url: &str) -> &str {
    match type_url.rfind('/') {
        Some(i) => &type_url[i + 1..],
        None => type_url,
    }
}
