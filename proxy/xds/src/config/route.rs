//! RouteConfiguration: virtual hosts by domain and routes in order (first match wins); what
//! each route does is in [`super::action`].

use switchboard_xds_proto::pb::envoy::config::route::v3::{
    Route as PbRoute, RouteConfiguration, VirtualHost as PbVirtualHost, route,
};
use switchboard_xds_proto::{HttpFault, type_url, unpack};

pub(crate) use super::action::fault;
pub use super::action::{
    Abort, Action, Clusters, DEFAULT_TIMEOUT, Fault, Forward, HashOn, HashPolicy, HeaderMutation,
    Mirror, Redirect, RetryPolicy,
};
use super::action::{direct, forward, mutation, redirect};
pub use super::matcher::{HeaderMatch, PathMatch, Pattern, QueryMatch, RouteMatch, ValueMatch};
use super::{ConfigError, Path, check_fields};

/// The name of the fault filter, the key of its per-route config.
const FAULT_FILTER: &str = "envoy.filters.http.fault";

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    pub name: String,
    /// Exact names, `*.suffix`, `prefix*` or `*`, possibly with a port, as Envoy takes them.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    /// From `typed_per_filter_config["envoy.filters.http.fault"]`.
    pub fault: Option<Fault>,
}

impl RouteConfig {
    /// Every cluster a route of this configuration may send to (for warming checks).
    pub fn cluster_names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        for route in self.virtual_hosts.iter().flat_map(|vh| &vh.routes) {
            if let Action::Forward(f) = &route.action {
                names.extend(f.clusters.names());
                names.extend(f.mirrors.iter().map(|m| m.cluster.as_str()));
            }
        }
        names.sort_unstable();
        names.dedup();
        names
    }
}

impl TryFrom<RouteConfiguration> for RouteConfig {
    type Error = ConfigError;

    fn try_from(rc: RouteConfiguration) -> Result<Self, ConfigError> {
        let path = Path::root("route configuration", &rc.name);
        route_config(rc, &path)
    }
}

pub(crate) fn route_config(
    rc: RouteConfiguration,
    path: &Path,
) -> Result<RouteConfig, ConfigError> {
    check_fields(&rc, &["name", "virtual_hosts"], path)?;
    let virtual_hosts = rc
        .virtual_hosts
        .into_iter()
        .enumerate()
        .map(|(i, vh)| virtual_host(vh, &path.index("virtual_hosts", i)))
        .collect::<Result<_, _>>()?;
    Ok(RouteConfig {
        name: rc.name,
        virtual_hosts,
    })
}

fn virtual_host(vh: PbVirtualHost, path: &Path) -> Result<VirtualHost, ConfigError> {
    check_fields(&vh, &["name", "domains", "routes"], path)?;
    if vh.domains.is_empty() {
        return Err(path.field("domains").err("at least one domain is required"));
    }
    let routes = vh
        .routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| route(r, &path.index("routes", i)))
        .collect::<Result<_, _>>()?;
    Ok(VirtualHost {
        name: vh.name,
        domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        routes,
    })
}

fn route(r: PbRoute, path: &Path) -> Result<Route, ConfigError> {
    check_fields(
        &r,
        &[
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "typed_per_filter_config",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
        path,
    )?;
    let matcher = match &r.r#match {
        Some(m) => super::matcher::route_match(m, &path.field("match"))?,
        None => return Err(path.err("match is required")),
    };
    let action = match r.action {
        Some(route::Action::Route(a)) => Action::Forward(forward(a, &path.field("route"))?),
        Some(route::Action::Redirect(a)) => Action::Redirect(redirect(a, &path.field("redirect"))?),
        Some(route::Action::DirectResponse(a)) => direct(a, &path.field("direct_response"))?,
        _ => return Err(path.err("route, redirect or direct_response is required")),
    };
    let mut fault_config = None;
    for (key, any) in &r.typed_per_filter_config {
        let p = path.field(&format!("typed_per_filter_config[{key:?}]"));
        if any.type_url == type_url::RBAC_PER_ROUTE {
            return Err(p.err(
                "per-route RBAC overrides (RBACPerRoute) are not supported; the listener's \
                 RBAC filters apply to every route",
            ));
        }
        if key != FAULT_FILTER || any.type_url != type_url::FAULT {
            return Err(p.err(format!("unsupported per-route config {}", any.type_url)));
        }
        let f = unpack::<HttpFault>(any).map_err(|e| p.err(e.to_string()))?;
        fault_config = Some(fault(f, &p)?);
    }
    Ok(Route {
        name: r.name,
        matcher,
        action,
        request_headers: mutation(
            &r.request_headers_to_add,
            r.request_headers_to_remove,
            path,
            "request_headers_to_add",
        )?,
        response_headers: mutation(
            &r.response_headers_to_add,
            r.response_headers_to_remove,
            path,
            "response_headers_to_add",
        )?,
        fault: fault_config,
    })
}
