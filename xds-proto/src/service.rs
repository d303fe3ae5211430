//! Generated tonic servers and clients, one module per discovery service.
//!
//! Each module re-exports tonic's `server` and `client` modules and, flat, the
//! service trait to implement, the server and client types, and
//! `SERVICE_NAME`, so callers write `service::ads::AggregatedDiscoveryServiceServer`
//! instead of a six-segment path into [`crate::pb`].

/// Aggregated Discovery Service: every resource type on one stream (Envoy with `ads_config`, proxyless gRPC).
pub mod ads {
    pub use crate::pb::envoy::service::discovery::v3::{
        aggregated_discovery_service_client as client,
        aggregated_discovery_service_server as server,
    };
    pub use client::AggregatedDiscoveryServiceClient;
    pub use server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer, SERVICE_NAME};
}

/// Listener Discovery Service.
pub mod lds {
    pub use crate::pb::envoy::service::listener::v3::{
        listener_discovery_service_client as client, listener_discovery_service_server as server,
    };
    pub use client::ListenerDiscoveryServiceClient;
    pub use server::{ListenerDiscoveryService, ListenerDiscoveryServiceServer, SERVICE_NAME};
}

/// Route Discovery Service.
pub mod rds {
    pub use crate::pb::envoy::service::route::v3::{
        route_discovery_service_client as client, route_discovery_service_server as server,
    };
    pub use client::RouteDiscoveryServiceClient;
    pub use server::{RouteDiscoveryService, RouteDiscoveryServiceServer, SERVICE_NAME};
}

/// Cluster Discovery Service.
pub mod cds {
    pub use crate::pb::envoy::service::cluster::v3::{
        cluster_discovery_service_client as client, cluster_discovery_service_server as server,
    };
    pub use client::ClusterDiscoveryServiceClient;
    pub use server::{ClusterDiscoveryService, ClusterDiscoveryServiceServer, SERVICE_NAME};
}

/// Endpoint Discovery Service.
pub mod eds {
    pub use crate::pb::envoy::service::endpoint::v3::{
        endpoint_discovery_service_client as client, endpoint_discovery_service_server as server,
    };
    pub use client::EndpointDiscoveryServiceClient;
    pub use server::{EndpointDiscoveryService, EndpointDiscoveryServiceServer, SERVICE_NAME};
}

/// Secret Discovery Service.
pub mod sds {
    pub use crate::pb::envoy::service::secret::v3::{
        secret_discovery_service_client as client, secret_discovery_service_server as server,
    };
    pub use client::SecretDiscoveryServiceClient;
    pub use server::{SERVICE_NAME, SecretDiscoveryService, SecretDiscoveryServiceServer};
}

/// Client Status Discovery Service: what each connected client has applied.
pub mod csds {
    pub use crate::pb::envoy::service::status::v3::{
        client_status_discovery_service_client as client,
        client_status_discovery_service_server as server,
    };
    pub use client::ClientStatusDiscoveryServiceClient;
    pub use server::{
        ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer, SERVICE_NAME,
    };
}
