//! Builders of RBAC filters (HTTP and network) and of an inbound listener that carries them,
//! in the shapes the control plane sends for `sidecar/inbound`.

use std::collections::HashMap;

use switchboard_xds_proto::pb::envoy::config::core::v3::TransportSocket;
use switchboard_xds_proto::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use switchboard_xds_proto::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac as Rules, permission, principal, rbac,
};
use switchboard_xds_proto::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use switchboard_xds_proto::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy,
};
use switchboard_xds_proto::pb::envoy::r#type::matcher::v3::{
    PathMatcher, StringMatcher, path_matcher, string_matcher,
};
use switchboard_xds_proto::{HttpRbac, NetworkRbac, Router, pack};

use super::resources::{listener_with, route_config};

/// `rules` with `action` and the named policies.
pub fn rules(action: rbac::Action, policies: Vec<(&str, Policy)>) -> Rules {
    Rules {
        action: action as i32,
        policies: policies
            .into_iter()
            .map(|(name, p)| (name.to_owned(), p))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

pub fn policy(permissions: Vec<Permission>, principals: Vec<Principal>) -> Policy {
    Policy {
        permissions,
        principals,
        ..Default::default()
    }
}

pub fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.to_owned())),
        ..Default::default()
    }
}

pub fn prefix(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Prefix(s.to_owned())),
        ..Default::default()
    }
}

/// A peer whose certificate's URI SAN matches `m`.
pub fn authenticated(m: StringMatcher) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(m),
            },
        )),
    }
}

pub fn any_principal() -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Any(true)),
    }
}

pub fn any_permission() -> Permission {
    Permission {
        rule: Some(permission::Rule::Any(true)),
    }
}

pub fn url_path(m: StringMatcher) -> Permission {
    Permission {
        rule: Some(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(m)),
        })),
    }
}

/// Requests with this method (`:method`).
pub fn method(m: &str) -> Permission {
    Permission {
        rule: Some(permission::Rule::Header(HeaderMatcher {
            name: ":method".to_owned(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(exact(
                m,
            ))),
            ..Default::default()
        })),
    }
}

pub fn and_rules(rules: Vec<Permission>) -> Permission {
    Permission {
        rule: Some(permission::Rule::AndRules(permission::Set { rules })),
    }
}

/// The RBAC HTTP filter with `rules`.
pub fn http_rbac_filter(rules: Rules) -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.rbac".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(&HttpRbac {
            rules: Some(rules),
            ..Default::default()
        }))),
        ..Default::default()
    }
}

/// The RBAC network filter with `rules`.
pub fn network_rbac_filter(rules: Rules) -> Filter {
    Filter {
        name: "envoy.filters.network.rbac".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(&NetworkRbac {
            stat_prefix: "inbound".to_owned(),
            rules: Some(rules),
            ..Default::default()
        }))),
    }
}

/// An inbound HTTP listener on 127.0.0.1:`port`: `http_filters` before the router, every
/// request routed (inline) to `cluster`, TLS by `tls`.
pub fn inbound_http_listener(
    name: &str,
    port: u16,
    cluster: &str,
    http_filters: Vec<HttpFilter>,
    tls: Option<TransportSocket>,
) -> Listener {
    let mut filters = http_filters;
    filters.push(HttpFilter {
        name: "envoy.filters.http.router".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(
            &Router::default(),
        ))),
        ..Default::default()
    });
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            route_config(name, "*", cluster),
        )),
        http_filters: filters,
        ..Default::default()
    };
    let mut l = listener_with(
        name,
        port,
        "envoy.filters.network.http_connection_manager",
        pack(&hcm),
    );
    l.filter_chains[0].transport_socket = tls;
    l
}

/// An inbound TCP proxy listener to `cluster`, with `network_filters` before it.
pub fn inbound_tcp_listener(
    name: &str,
    port: u16,
    cluster: &str,
    network_filters: Vec<Filter>,
    tls: Option<TransportSocket>,
) -> Listener {
    let tcp = TcpProxy {
        stat_prefix: name.to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
        ..Default::default()
    };
    let mut l = listener_with(name, port, "envoy.filters.network.tcp_proxy", pack(&tcp));
    let terminal = l.filter_chains[0].filters.remove(0);
    l.filter_chains[0].filters = network_filters;
    l.filter_chains[0].filters.push(terminal);
    l.filter_chains[0].transport_socket = tls;
    l
}
