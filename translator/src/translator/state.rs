//! What the translator remembers between updates (reverse indexes, cached route
//! translations, warnings by source) and how each changed input marks what depends on it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use switchboard_model::{
    AuthorizationPolicySpec, EndpointSpec, GatewaySpec, RouteSpec, ServiceSpec,
};

use crate::route::RouteOut;
use crate::{MeshConfig, names};

/// Reverse indexes and cached per-route translations.
#[derive(Debug, Clone, Default)]
pub(super) struct State {
    /// Service name (existing or not) → endpoints naming it.
    pub(super) endpoints_by_service: BTreeMap<String, BTreeSet<String>>,
    /// Service name → routes naming it as a backend or mirror.
    pub(super) routes_by_service: BTreeMap<String, BTreeSet<String>>,
    /// Host name → routes claiming it. The first by name holds it (the store allows only one;
    /// this is the tie-break if that was ever violated).
    pub(super) claims: BTreeMap<String, BTreeSet<String>>,
    /// Host names claimed by more than one route: normally none, which makes "does route r
    /// hold host name h" free for the host names r claims.
    pub(super) contested: BTreeSet<String>,
    /// Route name → gateways attaching it.
    pub(super) gateways_by_route: BTreeMap<String, BTreeSet<String>>,
    /// Service name → TCP gateways forwarding to it.
    pub(super) gateways_by_service: BTreeMap<String, BTreeSet<String>>,
    /// Certificate name → gateways terminating TLS with it.
    pub(super) gateways_by_certificate: BTreeMap<String, BTreeSet<String>>,
    pub(super) routes: BTreeMap<String, Arc<RouteOut>>,
    /// Service name → authorization policies naming it as their destination.
    pub(super) policies_by_service: BTreeMap<String, BTreeSet<String>>,
    /// Endpoint name → the listener an xDS-enabled gRPC server at its address asks for
    /// ([`names::server_listener`]), for endpoints with an IP address and a port (their own,
    /// else their service's).
    pub(super) server_listener_of: BTreeMap<String, String>,
    /// The reverse: server listener name → endpoints at that address.
    pub(super) endpoints_by_server_listener: BTreeMap<String, BTreeSet<String>>,
    /// Warnings by the source that produced them, so each is replaced when its source is
    /// recomputed.
    pub(super) warnings: BTreeMap<String, Vec<String>>,
}

impl State {
    /// The route holding host name `h`.
    pub(super) fn holder(&self, h: &str) -> Option<&String> {
        self.claims.get(h).and_then(|routes| routes.first())
    }

    /// Whether route `route`, which claims host name `h`, holds it.
    pub(super) fn holds(&self, h: &str, route: &str) -> bool {
        !self.contested.contains(h) || self.holder(h).is_some_and(|r| r == route)
    }

    pub(super) fn claim(&mut self, h: &str, route: &str, add: bool) {
        if add {
            index_add(&mut self.claims, h, route);
        } else {
            index_remove(&mut self.claims, h, route);
        }
        if self.claims.get(h).is_some_and(|c| c.len() > 1) {
            self.contested.insert(h.to_owned());
        } else {
            self.contested.remove(h);
        }
    }

    /// No route claims `service` or `service:port`: the service gets default listeners and a
    /// default virtual host.
    pub(super) fn route_less(&self, service: &str, port: u32) -> bool {
        let [with_port, bare] = names::default_listeners(service, port);
        self.holder(&with_port).is_none() && self.holder(&bare).is_none()
    }

    pub(super) fn set_warnings(&mut self, key: String, warnings: Vec<String>) {
        if warnings.is_empty() {
            self.warnings.remove(&key);
        } else {
            self.warnings.insert(key, warnings);
        }
    }
}

fn index_add(index: &mut BTreeMap<String, BTreeSet<String>>, key: &str, value: &str) {
    index
        .entry(key.to_owned())
        .or_default()
        .insert(value.to_owned());
}

fn index_remove(index: &mut BTreeMap<String, BTreeSet<String>>, key: &str, value: &str) {
    if let Some(set) = index.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// What to rebuild.
#[derive(Debug, Default)]
pub(super) struct Dirty {
    /// Clusters (services).
    pub(super) clusters: BTreeSet<String>,
    /// Load assignments (service names).
    pub(super) load_assignments: BTreeSet<String>,
    /// Route translations.
    pub(super) routes: BTreeSet<String>,
    /// Proxyless route configurations (route names).
    pub(super) route_configs: BTreeSet<String>,
    /// Proxyless listener names to resolve.
    pub(super) listeners: BTreeSet<String>,
    /// (service, port) whose default route configuration to resolve.
    pub(super) defaults: BTreeSet<(String, u32)>,
    pub(super) gateways: BTreeSet<String>,
    pub(super) outbound: bool,
    /// Services whose inbound security (mTLS and RBAC filters) to rebuild; their endpoints'
    /// server listeners are rebuilt with them.
    pub(super) inbound: BTreeSet<String>,
    /// Server listeners (names) to rebuild.
    pub(super) server_listeners: BTreeSet<String>,
}

pub(super) fn mark_all(config: &MeshConfig, state: &mut State) -> Dirty {
    let mut dirty = Dirty::default();
    for name in config.services.keys() {
        mark_service(config, state, &mut dirty, name, None);
    }
    for name in config.endpoints.keys() {
        mark_endpoint(config, state, &mut dirty, name, None);
    }
    for name in config.routes.keys() {
        mark_route(config, state, &mut dirty, name, None);
    }
    for (name, spec) in &config.gateways {
        mark_gateway(state, &mut dirty, name, None, Some(spec));
    }
    for name in config.authorization_policies.keys() {
        mark_policy(config, state, &mut dirty, name, None);
    }
    dirty.outbound = true;
    dirty
}

/// Something every service's authorization depends on changed (the mesh default, or what
/// identities are called).
pub(super) fn mark_all_inbound(config: &MeshConfig, dirty: &mut Dirty) {
    dirty.inbound.extend(config.services.keys().cloned());
}

pub(super) fn mark_policy(
    config: &MeshConfig,
    state: &mut State,
    dirty: &mut Dirty,
    name: &str,
    old: Option<&AuthorizationPolicySpec>,
) {
    if let Some(old) = old {
        index_remove(&mut state.policies_by_service, &old.service, name);
        dirty.inbound.insert(old.service.clone());
    }
    if let Some(new) = config.authorization_policies.get(name) {
        index_add(&mut state.policies_by_service, &new.service, name);
        dirty.inbound.insert(new.service.clone());
    }
}

pub(super) fn mark_service(
    config: &MeshConfig,
    state: &mut State,
    dirty: &mut Dirty,
    name: &str,
    old: Option<&ServiceSpec>,
) {
    dirty.clusters.insert(name.to_owned());
    dirty.load_assignments.insert(name.to_owned());
    dirty.inbound.insert(name.to_owned());
    for spec in [old, config.services.get(name)].into_iter().flatten() {
        dirty.defaults.insert((name.to_owned(), spec.port));
    }
    if let Some(routes) = state.routes_by_service.get(name) {
        dirty.routes.extend(routes.iter().cloned());
    }
    if let Some(gateways) = state.gateways_by_service.get(name) {
        dirty.gateways.extend(gateways.iter().cloned());
    }
    // The service's port is its endpoints' default port, and its protocol decides whether
    // they get server listeners.
    let members: Vec<String> = state
        .endpoints_by_service
        .get(name)
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    for endpoint in members {
        reindex_server_listener(config, state, dirty, &endpoint);
    }
    dirty.outbound = true;
}

/// Re-reads where endpoint `name` listens, dirtying the server listeners it leaves and joins.
fn reindex_server_listener(config: &MeshConfig, state: &mut State, dirty: &mut Dirty, name: &str) {
    if let Some(old) = state.server_listener_of.remove(name) {
        index_remove(&mut state.endpoints_by_server_listener, &old, name);
        dirty.server_listeners.insert(old);
    }
    let Some(listener) = config.endpoints.get(name).and_then(|ep| {
        let ip = ep.address.parse::<std::net::IpAddr>().ok()?;
        let port = ep
            .port
            .or(config.services.get(&ep.service).map(|s| s.port))?;
        let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
        Some(names::server_listener(std::net::SocketAddr::new(ip, port)))
    }) else {
        return;
    };
    index_add(&mut state.endpoints_by_server_listener, &listener, name);
    state
        .server_listener_of
        .insert(name.to_owned(), listener.clone());
    dirty.server_listeners.insert(listener);
}

/// The mesh's mTLS inputs changed: every service's cluster for proxies, load assignment
/// (endpoint metadata) and inbound security.
pub(super) fn mark_mtls(config: &MeshConfig, state: &State, dirty: &mut Dirty) {
    dirty
        .server_listeners
        .extend(state.endpoints_by_server_listener.keys().cloned());
    dirty.clusters.extend(config.services.keys().cloned());
    dirty
        .load_assignments
        .extend(config.services.keys().cloned());
    dirty.inbound.extend(config.services.keys().cloned());
}

pub(super) fn mark_endpoint(
    config: &MeshConfig,
    state: &mut State,
    dirty: &mut Dirty,
    name: &str,
    old: Option<&EndpointSpec>,
) {
    // A service's cluster for proxyless clients with certificate providers depends on
    // whether all its endpoints are mesh workloads.
    if let Some(old) = old {
        index_remove(&mut state.endpoints_by_service, &old.service, name);
        dirty.load_assignments.insert(old.service.clone());
        dirty.clusters.insert(old.service.clone());
    }
    if let Some(new) = config.endpoints.get(name) {
        index_add(&mut state.endpoints_by_service, &new.service, name);
        dirty.load_assignments.insert(new.service.clone());
        dirty.clusters.insert(new.service.clone());
    }
    reindex_server_listener(config, state, dirty, name);
}

pub(super) fn mark_route(
    config: &MeshConfig,
    state: &mut State,
    dirty: &mut Dirty,
    name: &str,
    old: Option<&RouteSpec>,
) {
    let new = config.routes.get(name);
    if let Some(old) = old {
        for s in referenced_services(old) {
            index_remove(&mut state.routes_by_service, s, name);
        }
        for h in &old.hostnames {
            state.claim(h, name, false);
        }
    }
    if let Some(new) = new {
        for s in referenced_services(new) {
            index_add(&mut state.routes_by_service, s, name);
        }
        for h in &new.hostnames {
            state.claim(h, name, true);
        }
    }
    for spec in [old, new].into_iter().flatten() {
        for h in &spec.hostnames {
            dirty.listeners.insert(h.clone());
            // Claiming `s` or `s:port` decides whether service `s` is route-less.
            let host = names::split_port(h).map_or(h.as_str(), |(host, _)| host);
            if let Some(service) = config.services.get(host) {
                dirty.defaults.insert((host.to_owned(), service.port));
            }
        }
    }
    dirty.routes.insert(name.to_owned());
    dirty.route_configs.insert(name.to_owned());
    if let Some(gateways) = state.gateways_by_route.get(name) {
        dirty.gateways.extend(gateways.iter().cloned());
    }
    dirty.outbound = true;
}

pub(super) fn mark_gateway(
    state: &mut State,
    dirty: &mut Dirty,
    name: &str,
    old: Option<&GatewaySpec>,
    new: Option<&GatewaySpec>,
) {
    if let Some(old) = old {
        for r in &old.routes {
            index_remove(&mut state.gateways_by_route, r, name);
        }
        if let Some(s) = &old.service {
            index_remove(&mut state.gateways_by_service, s, name);
        }
        for c in old.tls.iter().flat_map(|t| &t.certificates) {
            index_remove(&mut state.gateways_by_certificate, c, name);
        }
    }
    if let Some(new) = new {
        for r in &new.routes {
            index_add(&mut state.gateways_by_route, r, name);
        }
        if let Some(s) = &new.service {
            index_add(&mut state.gateways_by_service, s, name);
        }
        for c in new.tls.iter().flat_map(|t| &t.certificates) {
            index_add(&mut state.gateways_by_certificate, c, name);
        }
    }
    dirty.gateways.insert(name.to_owned());
}

/// A certificate changed (its DNS names choose the gateways' filter chains).
pub(super) fn mark_certificate(state: &State, dirty: &mut Dirty, name: &str) {
    if let Some(gateways) = state.gateways_by_certificate.get(name) {
        dirty.gateways.extend(gateways.iter().cloned());
    }
}

fn referenced_services(spec: &RouteSpec) -> impl Iterator<Item = &str> {
    spec.rules.iter().flat_map(|rule| {
        rule.backends
            .iter()
            .map(|b| b.service.as_str())
            .chain(rule.mirror.iter().map(|m| m.service.as_str()))
    })
}
