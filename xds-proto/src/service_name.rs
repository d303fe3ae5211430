//! Fully-qualified gRPC names of the xDS services Switchboard serves.
//!
//! Used to register health status per service, to advertise services over
//! gRPC reflection, and by `build.rs` (which includes this file, so it must
//! stay free of crate dependencies) to choose which protobuf files go into
//! [`crate::FILE_DESCRIPTOR_SET`]. A unit test checks each name against the
//! `SERVICE_NAME` that tonic generated for the server.

/// ADS: every resource type multiplexed on one stream (what Envoy and
/// proxyless gRPC use).
pub const AGGREGATED_DISCOVERY: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
/// LDS on its own stream.
pub const LISTENER_DISCOVERY: &str = "envoy.service.listener.v3.ListenerDiscoveryService";
/// RDS on its own stream.
pub const ROUTE_DISCOVERY: &str = "envoy.service.route.v3.RouteDiscoveryService";
/// CDS on its own stream.
pub const CLUSTER_DISCOVERY: &str = "envoy.service.cluster.v3.ClusterDiscoveryService";
/// EDS on its own stream.
pub const ENDPOINT_DISCOVERY: &str = "envoy.service.endpoint.v3.EndpointDiscoveryService";
/// SDS on its own stream.
pub const SECRET_DISCOVERY: &str = "envoy.service.secret.v3.SecretDiscoveryService";
/// CSDS: reports what each connected client has ACKed/NACKed.
pub const CLIENT_STATUS_DISCOVERY: &str = "envoy.service.status.v3.ClientStatusDiscoveryService";

/// Every service above.
pub const ALL: &[&str] = &[
    AGGREGATED_DISCOVERY,
    LISTENER_DISCOVERY,
    ROUTE_DISCOVERY,
    CLUSTER_DISCOVERY,
    ENDPOINT_DISCOVERY,
    SECRET_DISCOVERY,
    CLIENT_STATUS_DISCOVERY,
];
