//! Mesh mTLS for proxyless gRPC (gRFC A29) and xDS-enabled gRPC servers (gRFC A36).
//!
//! gRPC does not speak SDS: its TLS contexts name *certificate provider instances*, which the
//! node's bootstrap defines (`certificate_providers`, a `file_watcher` over files the operator
//! keeps fresh). Every context here names instance [`names::CERTIFICATE_PROVIDER_INSTANCE`]
//! for both the identity (`tls_certificate_provider_instance`) and the roots
//! (`validation_context.ca_certificate_provider_instance`). gRPC NACKs a resource naming an
//! instance its bootstrap lacks, even on a channel with insecure credentials, so:
//!
//! - Client side: a service's cluster carries an `UpstreamTlsContext` verifying the
//!   destination's exact SPIFFE ID (`match_subject_alt_names`, the field gRPC reads) only in
//!   [`crate::MeshResources::proxyless_mtls_clusters`], which the xDS server sends to proxyless
//!   nodes that declare the instance in their metadata; others keep the plaintext
//!   [`crate::MeshResources::clusters`]. It applies when the effective mode is not `off` and
//!   every endpoint of the service (at least one) is a mesh workload (`EndpointSpec.mtls`):
//!   gRPC has no `transport_socket_matches`, so a cluster is all TLS or all plaintext. A
//!   channel with insecure credentials ignores the context and stays plaintext.
//! - Server side: the Listener `grpc/server?xds.resource.listening_address=IP:PORT` an
//!   xDS-enabled server asks for, built for the endpoint of a `grpc` service at that address:
//!   one filter chain with an HTTP connection manager (inline routes, every RPC allowed through
//!   `non_forwarding_action`), the service's RBAC filters, the router, and, when the endpoint
//!   is a mesh workload and the mode is not `off`, a `DownstreamTlsContext` requiring a client
//!   certificate that chains to the mesh's roots. gRPC refuses SAN matchers on servers, and
//!   cannot tell TLS from plaintext on one port (so `permissive` cannot accept both there): an
//!   endpoint marked `mtls` is mTLS only; the mesh CA's roots admit only this mesh's
//!   workloads, and the RBAC filters check callers' SPIFFE IDs.

use std::net::SocketAddr;

use switchboard_model::identity::spiffe_id;
use switchboard_model::spec::MtlsMode;
use switchboard_xds_proto::pack;

use crate::common::socket_address;
use crate::filters::{hcm_filter, hcm_inline, router};
use crate::mtls::effective_mode;
use crate::names;
use crate::pb::envoy::config::cluster::v3::Cluster;
use crate::pb::envoy::config::core::v3::{TrafficDirection, TransportSocket, transport_socket};
use crate::pb::envoy::config::listener::v3::{FilterChain, Listener};
use crate::pb::envoy::config::route::v3::{
    NonForwardingAction, Route, RouteConfiguration, VirtualHost, route,
};
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use crate::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
    DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
};
use crate::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use crate::pb::google::protobuf::BoolValue;
use crate::{InboundRbac, MeshConfig};

/// Whether proxyless clients with certificate providers call `service` with mTLS: the mode is
/// not `off` and every one of `endpoint_mtls` (the service's endpoints, at least one) is a
/// mesh workload.
pub(crate) fn client_mtls(
    config: &MeshConfig,
    mut endpoint_mtls: impl Iterator<Item = bool>,
) -> bool {
    if effective_mode(config) == MtlsMode::Off {
        return false;
    }
    match endpoint_mtls.next() {
        Some(first) => first && endpoint_mtls.all(|m| m),
        None => false,
    }
}

/// `plain` (a service's cluster) with the `UpstreamTlsContext` of a proxyless client calling
/// `service`: our certificate, the mesh's roots, and the destination's exact SPIFFE ID.
pub(crate) fn client_cluster(config: &MeshConfig, service: &str, mut plain: Cluster) -> Cluster {
    let id = spiffe_id(&config.tenant, &config.trust_domain, &config.mesh, service);
    #[allow(deprecated)] // gRPC reads `match_subject_alt_names`, not its typed successor.
    let validation = CertificateValidationContext {
        ca_certificate_provider_instance: Some(instance(names::ROOT_CERTIFICATE_NAME)),
        match_subject_alt_names: vec![StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(id)),
            ignore_case: false,
        }],
        ..Default::default()
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(common_tls_context(validation)),
        ..Default::default()
    };
    plain.transport_socket = Some(tls_socket(pack(&context)));
    plain
}

/// What one xDS-enabled gRPC server's listener is built from.
pub(crate) struct ServerListener<'a> {
    /// Where the server listens (an endpoint's address and port).
    pub(crate) address: SocketAddr,
    /// The endpoint is a mesh workload: terminate mTLS (unless the mode is `off`).
    pub(crate) mtls: bool,
    /// The service's authorization filters, if any.
    pub(crate) rbac: Option<&'a InboundRbac>,
}

/// The Listener an xDS-enabled gRPC server listening on `s.address` asks for.
pub(crate) fn server_listener(config: &MeshConfig, s: &ServerListener<'_>) -> Listener {
    let name = names::server_listener(s.address);
    let mut http_filters: Vec<HttpFilter> =
        s.rbac.map(|r| r.http_filters.clone()).unwrap_or_default();
    http_filters.push(router());
    let hcm = hcm_inline(&name, server_routes(), http_filters);
    let transport_socket = (s.mtls && effective_mode(config) != MtlsMode::Off).then(|| {
        let context = DownstreamTlsContext {
            common_tls_context: Some(common_tls_context(CertificateValidationContext {
                ca_certificate_provider_instance: Some(instance(names::ROOT_CERTIFICATE_NAME)),
                ..Default::default()
            })),
            require_client_certificate: Some(BoolValue { value: true }),
            ..Default::default()
        };
        tls_socket(pack(&context))
    });
    Listener {
        address: Some(socket_address(
            &s.address.ip().to_string(),
            u32::from(s.address.port()),
        )),
        traffic_direction: TrafficDirection::Inbound as i32,
        filter_chains: vec![FilterChain {
            filters: vec![hcm_filter(&hcm)],
            transport_socket,
            ..Default::default()
        }],
        name,
        ..Default::default()
    }
}

/// Every RPC goes to the server's own handlers: a server's routes only select filter
/// overrides, and gRPC fails RPCs whose route has an action other than `non_forwarding_action`.
fn server_routes() -> RouteConfiguration {
    RouteConfiguration {
        name: names::SERVER_ROUTE_CONFIGURATION.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: names::SERVER_ROUTE_CONFIGURATION.to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(crate::matcher::route_match(None)),
                action: Some(route::Action::NonForwardingAction(NonForwardingAction {})),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Our identity certificate from the provider instance, and `validation` (which names the
/// roots) for the peer's.
fn common_tls_context(validation: CertificateValidationContext) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_provider_instance: Some(instance(names::IDENTITY_CERTIFICATE_NAME)),
        validation_context_type: Some(
            common_tls_context::ValidationContextType::ValidationContext(validation),
        ),
        ..Default::default()
    }
}

fn instance(certificate_name: &str) -> CertificateProviderPluginInstance {
    CertificateProviderPluginInstance {
        instance_name: names::CERTIFICATE_PROVIDER_INSTANCE.to_owned(),
        certificate_name: certificate_name.to_owned(),
    }
}

fn tls_socket(context: crate::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket {
        name: names::TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(context)),
    }
}
