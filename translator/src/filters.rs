//! HTTP, network and listener filters: the HTTP connection manager and its filter chain
//! (fault, then router), the fault filter's per-route configuration, TCP proxying, and the
//! TLS inspector.

use switchboard_model::spec::Fault;

use crate::common::{ads, duration, percent};
use crate::names;
use crate::pb::envoy::config::core::v3::Http1ProtocolOptions;
use crate::pb::envoy::config::listener::v3::{Filter, ListenerFilter, filter, listener_filter};
use crate::pb::envoy::config::route::v3::RouteConfiguration;
use crate::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use crate::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort};
use crate::pb::envoy::extensions::filters::http::router::v3::Router;
use crate::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use crate::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use crate::pb::google::protobuf::BoolValue;
use switchboard_xds_proto::pack;

/// The HTTP filters of every HTTP connection manager we generate: the fault filter when a route
/// it serves injects faults (its configuration comes per route, the top-level one is empty and
/// does nothing), then the router, which must be last.
pub(crate) fn http_filters(with_fault: bool) -> Vec<HttpFilter> {
    let mut filters = Vec::with_capacity(2);
    if with_fault {
        filters.push(http_filter(
            names::FAULT_FILTER,
            pack(&HttpFault::default()),
        ));
    }
    filters.push(router());
    filters
}

pub(crate) fn router() -> HttpFilter {
    http_filter(names::ROUTER_FILTER, pack(&Router::default()))
}

pub(crate) fn http_filter(name: &str, config: crate::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// An HTTP connection manager that fetches route configuration `route_config` over ADS.
pub(crate) fn hcm_rds(
    stat_prefix: &str,
    route_config: &str,
    http_filters: Vec<HttpFilter>,
) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: names::stat_prefix(stat_prefix),
        http_filters,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_owned(),
        })),
        ..Default::default()
    }
}

/// An HTTP connection manager with its routes inline (a sidecar's inbound listener, whose
/// routes depend on the node alone).
pub(crate) fn hcm_inline(
    stat_prefix: &str,
    route_config: RouteConfiguration,
    http_filters: Vec<HttpFilter>,
) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: names::stat_prefix(stat_prefix),
        http_filters,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            route_config,
        )),
        ..Default::default()
    }
}

/// Accepts absolute-form request URIs (`GET http://payments:8080/ HTTP/1.1`), which is what an
/// application configured with `HTTP_PROXY` sends to the outbound listener.
pub(crate) fn forward_proxy_http1() -> Http1ProtocolOptions {
    Http1ProtocolOptions {
        allow_absolute_url: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// The HCM as a listener's network filter.
pub(crate) fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter {
        name: names::HTTP_CONNECTION_MANAGER_FILTER.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(hcm))),
    }
}

/// A network filter proxying every connection to `cluster`.
pub(crate) fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: names::stat_prefix(stat_prefix),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
        ..Default::default()
    };
    Filter {
        name: names::TCP_PROXY_FILTER.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(&proxy))),
    }
}

/// A rule's fault injection as the fault filter's per-route configuration (Envoy and gRPC
/// both read it from `typed_per_filter_config["envoy.filters.http.fault"]`).
pub(crate) fn fault_config(fault: &Fault) -> HttpFault {
    HttpFault {
        delay: fault.delay.as_ref().map(|d| FaultDelay {
            percentage: Some(percent(d.percent)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                d.fixed,
            ))),
        }),
        abort: fault.abort.as_ref().and_then(|a| {
            let error_type = match (a.http_status, a.grpc_status) {
                (Some(code), _) => fault_abort::ErrorType::HttpStatus(code),
                (None, Some(code)) => fault_abort::ErrorType::GrpcStatus(code),
                (None, None) => return None,
            };
            Some(FaultAbort {
                percentage: Some(percent(a.percent)),
                error_type: Some(error_type),
                ..Default::default()
            })
        }),
        ..Default::default()
    }
}

/// The TLS inspector: tells TLS from plaintext (a permissive inbound listener's choice between
/// its mTLS and plaintext filter chains).
pub(crate) fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: names::TLS_INSPECTOR.to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}
