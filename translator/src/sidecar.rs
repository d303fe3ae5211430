//! A sidecar's inbound side: listener `sidecar/inbound` on 0.0.0.0:{inbound_port} forwarding to
//! the local application through Cluster `inbound|{app_port}` (STATIC 127.0.0.1:{app_port}).
//!
//! Built per node, from the node's metadata, rather than per mesh. Mesh mTLS and authorization
//! plug in through [`InboundSecurity`]: a transport socket for the filter chain (and, in
//! permissive mode, a TLS inspector and a second, plaintext chain) and filters in front of the
//! router (HTTP) or the TCP proxy; with the default, traffic is plaintext and every caller is
//! allowed.

use std::sync::Arc;

use switchboard_model::spec::Protocol;

use crate::cluster::{DEFAULT_CONNECT_TIMEOUT_MS, protocol_options};
use crate::common::{millis, socket_address, u32_value};
use crate::filters::{hcm_filter, hcm_inline, router, tcp_proxy_filter, tls_inspector};
use crate::names;
use crate::pb::envoy::config::cluster::v3::{Cluster, cluster};
use crate::pb::envoy::config::core::v3::{TrafficDirection, TransportSocket};
use crate::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use crate::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener};
use crate::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, route, route_action,
};
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use crate::{SidecarParams, TranslateError, XdsResource};

/// Where mTLS termination and authorization attach to a sidecar's inbound listener. The
/// translator computes one per service ([`crate::MeshResources::inbound_security`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundSecurity {
    /// Set as the filter chain's transport socket (a `DownstreamTlsContext` requiring the
    /// mesh's client certificates). `None`: plaintext.
    pub transport_socket: Option<TransportSocket>,
    /// With a transport socket, also accept plaintext (mode `permissive`): a TLS inspector
    /// listener filter, the TLS chain matching transport protocol `tls`, and a second,
    /// plaintext chain with the same filters for everything else. Ignored without one.
    pub accept_plaintext: bool,
    /// HTTP filters placed before the router, in order (e.g. RBAC), for HTTP, HTTP/2 and gRPC
    /// services.
    pub http_filters: Vec<HttpFilter>,
    /// Network filters placed before the TCP proxy, in order (e.g. network RBAC), for TCP
    /// services.
    pub network_filters: Vec<Filter>,
}

impl InboundSecurity {
    /// Adds a service's authorization filters ([`crate::inbound_rbac`]) after the filters
    /// already there; `None` (a service without policies or default deny) adds nothing.
    pub fn with_rbac(mut self, rbac: Option<&crate::InboundRbac>) -> Self {
        if let Some(rbac) = rbac {
            self.http_filters.extend(rbac.http_filters.iter().cloned());
            self.network_filters
                .extend(rbac.network_filters.iter().cloned());
        }
        self
    }
}

/// The inbound listener and cluster of a sidecar whose service speaks `protocol`, without
/// mTLS or authorization.
pub fn sidecar_inbound(
    params: &SidecarParams,
    protocol: Protocol,
) -> Result<(Listener, Cluster), TranslateError> {
    sidecar_inbound_with(params, protocol, &InboundSecurity::default())
}

/// [`sidecar_inbound`] with mTLS and authorization.
pub fn sidecar_inbound_with(
    params: &SidecarParams,
    protocol: Protocol,
    security: &InboundSecurity,
) -> Result<(Listener, Cluster), TranslateError> {
    check_port("inbound_port", params.inbound_port)?;
    check_port("app_port", params.app_port)?;
    if params.inbound_port == params.app_port {
        return Err(TranslateError::PortClash {
            port: params.inbound_port,
        });
    }
    check_port("outbound_port", params.outbound_port)?;
    for (other, port) in [
        ("inbound_port", params.inbound_port),
        ("app_port", params.app_port),
    ] {
        if params.outbound_port == port {
            return Err(TranslateError::OutboundClash {
                port: params.outbound_port,
                other,
            });
        }
    }
    let cluster_name = names::inbound_cluster(params.app_port);
    let filters = if protocol == Protocol::Tcp {
        let mut filters = security.network_filters.clone();
        filters.push(tcp_proxy_filter(names::INBOUND, &cluster_name));
        filters
    } else {
        let mut http_filters = security.http_filters.clone();
        http_filters.push(router());
        let mut hcm = hcm_inline(names::INBOUND, inbound_routes(&cluster_name), http_filters);
        if security.transport_socket.is_some() {
            // As Istio's sidecars: the application learns who called it from
            // `x-forwarded-client-cert` (the caller's SPIFFE ID), set from the verified client
            // certificate and never taken from the caller (a plaintext request's is removed).
            hcm.forward_client_cert_details = ForwardClientCertDetails::SanitizeSet as i32;
            hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            });
        }
        vec![hcm_filter(&hcm)]
    };
    let mut listener = Listener {
        name: names::INBOUND.to_owned(),
        address: Some(socket_address("0.0.0.0", params.inbound_port)),
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    };
    match &security.transport_socket {
        Some(tls) if security.accept_plaintext => {
            listener.listener_filters = vec![tls_inspector()];
            // A client of a server-first protocol sends nothing for the inspector to read:
            // after the listener filter timeout its connection goes on as plaintext rather
            // than being closed.
            listener.continue_on_listener_filters_timeout = protocol == Protocol::Tcp;
            listener.filter_chains = vec![
                FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        transport_protocol: names::TLS_TRANSPORT_PROTOCOL.to_owned(),
                        ..Default::default()
                    }),
                    filters: filters.clone(),
                    transport_socket: Some(tls.clone()),
                    ..Default::default()
                },
                FilterChain {
                    filters,
                    ..Default::default()
                },
            ];
        }
        transport_socket => {
            listener.filter_chains = vec![FilterChain {
                filters,
                transport_socket: transport_socket.clone(),
                ..Default::default()
            }];
        }
    }
    Ok((
        listener,
        app_cluster(&cluster_name, params.app_port, protocol),
    ))
}

/// [`sidecar_inbound_with`], packed and versioned: (listener, cluster).
pub fn sidecar_inbound_resources(
    params: &SidecarParams,
    protocol: Protocol,
    security: &InboundSecurity,
) -> Result<(Arc<XdsResource>, Arc<XdsResource>), TranslateError> {
    let (listener, cluster) = sidecar_inbound_with(params, protocol, security)?;
    Ok((
        Arc::new(XdsResource::new(listener.name.clone(), &listener)),
        Arc::new(XdsResource::new(cluster.name.clone(), &cluster)),
    ))
}

/// The mesh's outbound listener (`shared`, built for [`names::OUTBOUND_PORT`]) moved to
/// 127.0.0.1:`port` for one sidecar. `None` when `shared` does not decode as a listener,
/// which the translator never produces.
pub fn sidecar_outbound_on(shared: &XdsResource, port: u32) -> Option<Arc<XdsResource>> {
    let mut listener: Listener = shared.decode().ok()?;
    listener.address = Some(socket_address(names::OUTBOUND_ADDRESS, port));
    Some(Arc::new(XdsResource::new(listener.name.clone(), &listener)))
}

fn check_port(field: &'static str, value: u32) -> Result<(), TranslateError> {
    if (1..=65535).contains(&value) {
        Ok(())
    } else {
        Err(TranslateError::InvalidPort { field, value })
    }
}

/// Everything to the application. No timeout: the caller's route decides how long a request
/// may take, and a gRPC stream may last for hours.
fn inbound_routes(cluster_name: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: names::INBOUND.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: names::INBOUND.to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(crate::matcher::route_match(None)),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster_name.to_owned(),
                    )),
                    timeout: Some(millis(0)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The local application: one static endpoint on loopback, spoken to in the service's
/// protocol (HTTP/2 for gRPC).
fn app_cluster(name: &str, app_port: u32, protocol: Protocol) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(millis(DEFAULT_CONNECT_TIMEOUT_MS)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    load_balancing_weight: Some(u32_value(1)),
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address("127.0.0.1", app_port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: protocol_options(protocol),
        ..Default::default()
    }
}
