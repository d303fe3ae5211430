//! Listener: a socket address and one filter chain that is either an HTTP connection manager
//! (routes over RDS or inline; fault and router filters) or a TCP proxy to one cluster.

use std::net::SocketAddr;

use switchboard_xds_proto::pb::envoy::config::core::v3::{ConfigSource, config_source};
use switchboard_xds_proto::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener as PbListener, filter,
};
use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as PbHcm, HttpFilter, http_connection_manager, http_filter,
};
use switchboard_xds_proto::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy as PbTcpProxy, tcp_proxy,
};
use switchboard_xds_proto::{HttpFault, Router, type_url, unpack};

use super::route::{Fault, RouteConfig, fault, route_config};
use super::{ConfigError, Path, check_fields, socket_addr};

/// A listener the proxy binds.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub kind: ListenerKind,
}

/// What the listener does with a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenerKind {
    Http(HttpConnectionManager),
    Tcp(TcpProxy),
}

/// HTTP on a listener: where its routes come from and which filters run before the router.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConnectionManager {
    pub routes: RouteSource,
    /// The fault filter runs (its per-route configs apply); `Some` default config when the
    /// filter has a listener-wide one.
    pub fault: Option<Fault>,
    /// Accept absolute-form URIs (`GET http://svc/ HTTP/1.1`): the HTTP_PROXY style.
    pub allow_absolute_url: bool,
}

/// Routes named for RDS over the same ADS stream, or given inline.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    Rds(String),
    Inline(RouteConfig),
}

/// Raw TCP to one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpProxy {
    pub cluster: String,
}

impl Listener {
    /// The RDS names this listener needs (empty for inline routes and TCP).
    pub fn route_names(&self) -> Option<&str> {
        match &self.kind {
            ListenerKind::Http(HttpConnectionManager {
                routes: RouteSource::Rds(name),
                ..
            }) => Some(name),
            _ => None,
        }
    }
}

impl TryFrom<PbListener> for Listener {
    type Error = ConfigError;

    fn try_from(l: PbListener) -> Result<Self, ConfigError> {
        let path = Path::root("listener", &l.name);
        check_fields(
            &l,
            &[
                "name",
                "address",
                "filter_chains",
                "traffic_direction",
                "stat_prefix",
            ],
            &path,
        )?;
        let address = match &l.address {
            Some(a) => socket_addr(a, &path.field("address"))?,
            None => {
                return Err(
                    path.err("an address is required (API listeners are for proxyless gRPC)")
                );
            }
        };
        let [chain] = <[FilterChain; 1]>::try_from(l.filter_chains).map_err(|chains| {
            path.field("filter_chains").err(format!(
                "exactly one filter chain is supported, got {}",
                chains.len()
            ))
        })?;
        let chain_path = path.index("filter_chains", 0);
        check_fields(&chain, &["filters", "name"], &chain_path)?;
        let [filter] = <[Filter; 1]>::try_from(chain.filters).map_err(|filters| {
            chain_path.field("filters").err(format!(
                "exactly one network filter (http_connection_manager or tcp_proxy) is supported, got {}",
                filters.len()
            ))
        })?;
        let kind = network_filter(filter, &chain_path.index("filters", 0))?;
        Ok(Listener {
            name: l.name,
            address,
            kind,
        })
    }
}

fn network_filter(f: Filter, path: &Path) -> Result<ListenerKind, ConfigError> {
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(path.err(format!("filter {} has no typed_config", f.name)));
    };
    let decode =
        |e: switchboard_xds_proto::UnpackError| path.field("typed_config").err(e.to_string());
    match any.type_url.as_str() {
        type_url::HTTP_CONNECTION_MANAGER => Ok(ListenerKind::Http(hcm(
            unpack::<PbHcm>(any).map_err(decode)?,
            &path.field("typed_config"),
        )?)),
        type_url::TCP_PROXY => {
            let tcp = unpack::<PbTcpProxy>(any).map_err(decode)?;
            let path = path.field("typed_config");
            check_fields(&tcp, &["stat_prefix", "cluster"], &path)?;
            match tcp.cluster_specifier {
                Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)) if !cluster.is_empty() => {
                    Ok(ListenerKind::Tcp(TcpProxy { cluster }))
                }
                _ => Err(path.err("a cluster is required")),
            }
        }
        other => Err(path.err(format!("unsupported filter {} ({other})", f.name))),
    }
}

fn hcm(h: PbHcm, path: &Path) -> Result<HttpConnectionManager, ConfigError> {
    check_fields(
        &h,
        &[
            "stat_prefix",
            "codec_type",
            "rds",
            "route_config",
            "http_filters",
            "http_protocol_options",
        ],
        path,
    )?;
    let allow_absolute_url = match &h.http_protocol_options {
        Some(o) => {
            let p = path.field("http_protocol_options");
            check_fields(o, &["allow_absolute_url"], &p)?;
            o.allow_absolute_url.as_ref().is_some_and(|b| b.value)
        }
        None => false,
    };
    let routes = match h.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
            let p = path.field("rds");
            check_fields(&rds, &["config_source", "route_config_name"], &p)?;
            ads_source(rds.config_source.as_ref(), &p.field("config_source"))?;
            if rds.route_config_name.is_empty() {
                return Err(p.err("route_config_name is required"));
            }
            RouteSource::Rds(rds.route_config_name)
        }
        Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(route_config(rc, &path.field("route_config"))?)
        }
        _ => return Err(path.err("rds or route_config is required")),
    };
    let mut fault_filter = None;
    let count = h.http_filters.len();
    for (i, f) in h.http_filters.into_iter().enumerate() {
        let p = path.index("http_filters", i);
        match http_filter(f, &p)? {
            HttpFilterKind::Router if i + 1 == count => {}
            HttpFilterKind::Router => return Err(p.err("the router filter must be last")),
            HttpFilterKind::Fault(_) if fault_filter.is_some() => {
                return Err(p.err("the fault filter is listed twice"));
            }
            HttpFilterKind::Fault(f) => fault_filter = Some(f),
        }
    }
    if count == 0 {
        return Err(path
            .field("http_filters")
            .err("the router filter is required (last)"));
    }
    Ok(HttpConnectionManager {
        routes,
        fault: fault_filter,
        allow_absolute_url,
    })
}

enum HttpFilterKind {
    Router,
    Fault(Fault),
}

fn http_filter(f: HttpFilter, path: &Path) -> Result<HttpFilterKind, ConfigError> {
    check_fields(&f, &["name", "typed_config"], path)?;
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(path.err(format!("filter {} has no typed_config", f.name)));
    };
    let p = path.field("typed_config");
    let decode = |e: switchboard_xds_proto::UnpackError| p.err(e.to_string());
    match any.type_url.as_str() {
        type_url::ROUTER => {
            let r = unpack::<Router>(any).map_err(decode)?;
            check_fields(&r, &[], &p)?;
            Ok(HttpFilterKind::Router)
        }
        type_url::FAULT => Ok(HttpFilterKind::Fault(fault(
            unpack::<HttpFault>(any).map_err(decode)?,
            &p,
        )?)),
        other => Err(path.err(format!("unsupported HTTP filter {} ({other})", f.name))),
    }
}

/// RDS and EDS must come over the same ADS stream: the only source this client has.
pub(crate) fn ads_source(source: Option<&ConfigSource>, path: &Path) -> Result<(), ConfigError> {
    match source.and_then(|s| s.config_source_specifier.as_ref()) {
        Some(config_source::ConfigSourceSpecifier::Ads(_)) => Ok(()),
        _ => Err(path.err("only the ADS config source is supported")),
    }
}
