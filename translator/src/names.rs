//! Resource and extension names.
//!
//! Names a user controls are host names (`payments`, `payments:8080`, `*.example.com`) and
//! resource names (DNS labels). Names the translator makes up for sidecars and gateways contain
//! a `/`, which neither can contain, so a route called `outbound` or a host name `gateway-x`
//! can never collide with them. Default route configurations are named `{service}:{port}`,
//! which no route name (a DNS label) can be.

/// The sidecars' outbound listener on 127.0.0.1:15001, and its route configuration.
pub const OUTBOUND: &str = "sidecar/outbound";
/// A sidecar's inbound listener (per node: see [`crate::sidecar_inbound`]).
pub const INBOUND: &str = "sidecar/inbound";
/// Where the outbound listener binds: loopback only, so it is reachable from the application
/// (`HTTP_PROXY=http://127.0.0.1:15001`) and nothing else.
pub const OUTBOUND_ADDRESS: &str = "127.0.0.1";
/// The outbound listener's port (ARCHITECTURE.md, generated names).
pub const OUTBOUND_PORT: u32 = 15001;

/// HTTP fault injection filter; its per-route config is keyed by this name.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// The terminal HTTP filter.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// The network filter that makes a listener speak HTTP.
pub const HTTP_CONNECTION_MANAGER_FILTER: &str = "envoy.filters.network.http_connection_manager";
/// Authorization of HTTP requests (see `rbac.rs`).
pub const RBAC_HTTP_FILTER: &str = "envoy.filters.http.rbac";
/// Authorization of TCP connections.
pub const RBAC_NETWORK_FILTER: &str = "envoy.filters.network.rbac";
/// The network filter that proxies raw TCP.
pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
/// The key of a cluster's `typed_extension_protocol_options` that holds its upstream HTTP
/// protocol options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The TLS transport socket (`UpstreamTlsContext` on clusters, `DownstreamTlsContext` on
/// filter chains).
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
/// The plaintext transport socket: a mesh cluster's default, for endpoints outside the mesh.
pub const RAW_BUFFER_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
/// The listener filter that tells TLS from plaintext, in front of a permissive inbound
/// listener's two filter chains.
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
/// The transport protocol the TLS inspector detects for TLS (`filter_chain_match`).
pub const TLS_TRANSPORT_PROTOCOL: &str = "tls";
/// The endpoint metadata namespace a cluster's `transport_socket_matches` are matched against.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// Under [`TRANSPORT_SOCKET_MATCH`], the key of a mesh workload's endpoint (with value
/// [`MTLS_MATCH_VALUE`]); also the name of the clusters' transport socket match for them.
pub const MTLS_MATCH_KEY: &str = "mtls";
/// See [`MTLS_MATCH_KEY`].
pub const MTLS_MATCH_VALUE: &str = "true";
/// SDS: the proxy's own certificate and key (Istio's name).
pub const WORKLOAD_CERTIFICATE_SECRET: &str = "default";
/// SDS: the mesh's trust bundle, the roots peers' certificates must chain to (Istio's name).
pub const ROOT_CA_SECRET: &str = "ROOTCA";

/// gRPC certificate provider instance (gRFC A29) that proxyless clients and xDS-enabled gRPC
/// servers are told to use; `switchboard bootstrap grpc --certificate-dir` defines it in the
/// bootstrap's `certificate_providers` (a `file_watcher`). A node without it would NACK every
/// resource naming it, so the translator names it only where the node declares it has it.
pub const CERTIFICATE_PROVIDER_INSTANCE: &str = "default";
/// The `certificate_name` asked of [`CERTIFICATE_PROVIDER_INSTANCE`] for the identity
/// certificate (the file watcher ignores it; named like the SDS secret).
pub const IDENTITY_CERTIFICATE_NAME: &str = WORKLOAD_CERTIFICATE_SECRET;
/// The `certificate_name` asked of [`CERTIFICATE_PROVIDER_INSTANCE`] for the roots.
pub const ROOT_CERTIFICATE_NAME: &str = ROOT_CA_SECRET;
/// What an xDS-enabled gRPC server (gRFC A36) asks LDS for, followed by the `IP:port` it
/// listens on: the bootstrap's `server_listener_resource_name_template` with `%s` taken away.
/// Contains a `/`, so it never collides with a host-named listener.
pub const SERVER_LISTENER_PREFIX: &str = "grpc/server?xds.resource.listening_address=";
/// The inline route configuration (and its virtual host) of an xDS-enabled server's listener.
pub const SERVER_ROUTE_CONFIGURATION: &str = "grpc/server";
/// The template `switchboard bootstrap grpc` writes (gRPC replaces `%s`).
pub const SERVER_LISTENER_TEMPLATE: &str = "grpc/server?xds.resource.listening_address=%s";

/// The listener an xDS-enabled gRPC server listening on `address` asks for. IPv6 addresses
/// are bracketed, as gRPC writes them (`[fd00::1]:50051`).
pub fn server_listener(address: std::net::SocketAddr) -> String {
    format!("{SERVER_LISTENER_PREFIX}{address}")
}

/// True for a listener an xDS-enabled gRPC server asks for ([`server_listener`]).
pub fn is_server_listener(name: &str) -> bool {
    name.starts_with(SERVER_LISTENER_PREFIX)
}

/// SDS: a gateway certificate users uploaded (`certificates` kind) is served as
/// `certificate/{name}`, which neither `default` nor `ROOTCA` can be.
pub const CERTIFICATE_SECRET_PREFIX: &str = "certificate/";

/// The SDS secret of uploaded certificate `name`.
pub fn certificate_secret(name: &str) -> String {
    format!("{CERTIFICATE_SECRET_PREFIX}{name}")
}

/// Cluster (and load assignment) of a service: its name (ARCHITECTURE.md, generated names).
pub fn cluster(service: &str) -> String {
    service.to_owned()
}

/// The listener and route configuration of a gateway.
pub fn gateway(gateway: &str) -> String {
    format!("gateway/{gateway}")
}

/// The listeners a gateway node is sent, so the server can pick them out of a snapshot. One
/// per gateway today; a list so that several ports (e.g. TLS) can come without an API change.
pub fn gateway_listener_names(gateway: &str) -> Vec<String> {
    vec![self::gateway(gateway)]
}

/// The STATIC cluster of a sidecar's local application, as Istio names it.
pub fn inbound_cluster(app_port: u32) -> String {
    format!("inbound|{app_port}")
}

/// The route configuration shared by a route-less service's two default listeners (`{service}`
/// and `{service}:{port}`): named after the one with the port, since `{service}` alone could
/// be the name of a route's route configuration.
pub fn default_route_configuration(service: &str, port: u32) -> String {
    format!("{service}:{port}")
}

/// The two names a proxyless client may use for a service: `{service}:{port}` and `{service}`.
pub fn default_listeners(service: &str, port: u32) -> [String; 2] {
    [format!("{service}:{port}"), service.to_owned()]
}

/// True for a listener named after a host name, i.e. one for proxyless clients.
pub fn is_proxyless_listener(name: &str) -> bool {
    !name.contains('/')
}

/// A stat prefix from a resource name (Envoy stat names use `.` as separator and tag
/// extraction dislikes `/`).
pub(crate) fn stat_prefix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Splits `host:port` into its parts; `None` for a host name without a (numeric) port.
pub(crate) fn split_port(hostname: &str) -> Option<(&str, u32)> {
    let (host, port) = hostname.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}
