//! Builders of Envoy resources in the subset the proxy supports, packed as `Any` where a
//! response needs them.

use std::net::SocketAddr;

use switchboard_xds_proto::pb::envoy::config::cluster::v3::{Cluster, cluster};
use switchboard_xds_proto::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, SocketAddress, address, config_source,
    socket_address,
};
use switchboard_xds_proto::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use switchboard_xds_proto::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, filter,
};
use switchboard_xds_proto::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use switchboard_xds_proto::pb::envoy::r#type::matcher::v3::RegexMatcher;
use switchboard_xds_proto::{Any, Router, pack};

/// The same ADS stream, as Switchboard and every ADS control plane say it.
pub fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub fn address(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// A listener on 127.0.0.1:`port` with one network filter.
pub fn listener_with(name: &str, port: u16, filter_name: &str, config: Any) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(address(SocketAddr::from(([127, 0, 0, 1], port)))),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: filter_name.to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(config)),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A listener with a network filter the proxy does not support (Redis), for rejections.
pub fn redis_listener(name: &str, port: u16) -> Listener {
    listener_with(
        name,
        port,
        "envoy.filters.network.redis_proxy",
        Any {
            type_url:
                "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
                    .to_owned(),
            value: vec![],
        },
    )
}

/// An HTTP listener taking route configuration `route_config` over ADS.
pub fn http_listener(name: &str, port: u16, route_config: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack(
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    listener_with(
        name,
        port,
        "envoy.filters.network.http_connection_manager",
        pack(&hcm),
    )
}

/// A route configuration sending every request for `domain` to `cluster`.
pub fn route_config(name: &str, domain: &str, cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            domains: vec![domain.to_owned()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.to_owned(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// [`route_config`] whose route matches paths with `regex`.
pub fn regex_route_config(name: &str, regex: &str, cluster: &str) -> RouteConfiguration {
    let mut rc = route_config(name, "*", cluster);
    for vh in &mut rc.virtual_hosts {
        for r in &mut vh.routes {
            r.r#match = Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::SafeRegex(RegexMatcher {
                    regex: regex.to_owned(),
                    ..Default::default()
                })),
                ..Default::default()
            });
        }
    }
    rc
}

/// A cluster whose endpoints come over EDS (named after the cluster).
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

/// The load assignment `name` with `endpoints`, in one locality.
pub fn load_assignment(name: &str, endpoints: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|a| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(address(*a)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
