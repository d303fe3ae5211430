//! Envoy v3 xDS API types for Switchboard.
//!
//! The generated code comes from the `envoy-types` crate ([`pb`]), so the
//! project never runs `protoc` or vendors Envoy's protos. This crate adds what
//! every other crate would otherwise repeat: short paths to the types we use
//! most, the tonic service modules, type URL constants, the
//! [`ResourceType`] enum with its push order, `Any` helpers, and the
//! descriptor set for gRPC reflection.

mod any;
mod descriptor;
mod json;
mod resource_type;
pub mod service;
pub mod service_name;
pub mod type_url;

pub use any::{UnpackError, from_prost_any, pack, to_prost_any, unpack};
pub use descriptor::FILE_DESCRIPTOR_SET;
/// Every generated Envoy, xDS, udpa and Google protobuf type.
pub use envoy_types::pb;
pub use json::{JsonError, any_to_json};
pub use resource_type::ResourceType;

// --- Discovery protocol messages ---
pub use pb::envoy::config::core::v3::Node;
pub use pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
/// The `Any` that xDS messages carry (envoy-types' own, not `prost_types::Any`).
pub use pb::google::protobuf::Any;
/// `google.rpc.Status`, the `error_detail` of a NACK.
pub use pb::google::rpc::Status;

// --- Resources ---
pub use pb::envoy::config::cluster::v3::Cluster;
pub use pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
pub use pb::envoy::config::listener::v3::Listener;
pub use pb::envoy::config::route::v3::RouteConfiguration;
pub use pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret, UpstreamTlsContext,
};

// --- Extension configs (several Envoy messages share a name, hence aliases) ---
/// HTTP fault injection filter config.
pub use pb::envoy::extensions::filters::http::fault::v3::HttpFault;
/// HTTP RBAC filter config (`envoy.extensions.filters.http.rbac.v3.RBAC`).
pub use pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
/// Per-route HTTP RBAC override.
pub use pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute as HttpRbacPerRoute;
/// HTTP router filter config (the terminal filter of every HCM).
pub use pb::envoy::extensions::filters::http::router::v3::Router;
pub use pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
/// Network RBAC filter config (`envoy.extensions.filters.network.rbac.v3.RBAC`).
pub use pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
pub use pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
pub use pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;

#[cfg(test)]
mod tests {
    use prost::Name;

    use super::*;

    /// The hand-written constants must match what envoy-types generated.
    #[test]
    fn type_url_constants_match_generated_names() {
        let generated = [
            (type_url::LISTENER, Listener::type_url()),
            (
                type_url::ROUTE_CONFIGURATION,
                RouteConfiguration::type_url(),
            ),
            (type_url::CLUSTER, Cluster::type_url()),
            (
                type_url::CLUSTER_LOAD_ASSIGNMENT,
                ClusterLoadAssignment::type_url(),
            ),
            (type_url::SECRET, Secret::type_url()),
            (
                type_url::HTTP_CONNECTION_MANAGER,
                HttpConnectionManager::type_url(),
            ),
            (type_url::ROUTER, Router::type_url()),
            (type_url::FAULT, HttpFault::type_url()),
            (type_url::RBAC, HttpRbac::type_url()),
            (type_url::RBAC_PER_ROUTE, HttpRbacPerRoute::type_url()),
            (type_url::NETWORK_RBAC, NetworkRbac::type_url()),
            (type_url::TCP_PROXY, TcpProxy::type_url()),
            (
                type_url::UPSTREAM_TLS_CONTEXT,
                UpstreamTlsContext::type_url(),
            ),
            (
                type_url::DOWNSTREAM_TLS_CONTEXT,
                DownstreamTlsContext::type_url(),
            ),
            (
                type_url::TLS_INSPECTOR,
                pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector::type_url(
                ),
            ),
            (
                type_url::HTTP_PROTOCOL_OPTIONS,
                HttpProtocolOptions::type_url(),
            ),
            (
                type_url::FILE_ACCESS_LOG,
                pb::envoy::extensions::access_loggers::file::v3::FileAccessLog::type_url(),
            ),
            (
                type_url::STDOUT_ACCESS_LOG,
                pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog::type_url(),
            ),
        ];
        assert_eq!(generated.len(), type_url::ALL.len());
        for ((constant, generated), listed) in generated.iter().zip(type_url::ALL) {
            assert_eq!(constant, generated);
            assert_eq!(constant, listed);
            assert!(constant.starts_with(type_url::PREFIX));
        }
    }

    #[test]
    fn service_names_match_generated_servers() {
        let generated = [
            service::ads::SERVICE_NAME,
            service::lds::SERVICE_NAME,
            service::rds::SERVICE_NAME,
            service::cds::SERVICE_NAME,
            service::eds::SERVICE_NAME,
            service::sds::SERVICE_NAME,
            service::csds::SERVICE_NAME,
        ];
        assert_eq!(generated, service_name::ALL);
    }

    #[test]
    fn resource_type_urls_match_messages() {
        assert_eq!(ResourceType::Listener.type_url(), Listener::type_url());
        assert_eq!(ResourceType::Secret.type_url(), Secret::type_url());
        assert_eq!(
            ResourceType::ClusterLoadAssignment.type_url(),
            ClusterLoadAssignment::type_url()
        );
    }
}
