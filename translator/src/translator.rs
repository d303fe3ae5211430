//! Full and incremental translation.
//!
//! Both go through one path: each changed input (service, endpoint, route, gateway) marks the
//! outputs that depend on it as dirty, keeping a few reverse indexes up to date (endpoints by
//! service, routes by referenced service, host name claims, gateways by route and service);
//! then only dirty outputs are rebuilt. A full translation is the change from an empty mesh.
//! Per-route translations are cached, so the outbound route configuration (which holds every
//! route) is reassembled, not retranslated, when one route changes.
//!
//! What depends on what:
//! - Cluster `{s}`: service `s`.
//! - ClusterLoadAssignment `{s}`: service `s` and the endpoints naming `s`.
//! - Route translation `{r}`: route `r` and the services it names (protocol → retry defaults).
//! - RouteConfiguration `{r}`: route `r`'s translation and host names.
//! - Listener `{h}`: which route holds host name `h` (and whether it injects faults); or, if
//!   none and `h` is `s` / `s:port`, service `s` and whether any route claims its names.
//! - RouteConfiguration `{s}:{port}`: service `s` and whether it is route-less.
//! - `sidecar/outbound`: every route and every route-less service.
//! - `gateway/{g}`: gateway `g` and its attached routes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use switchboard_model::{EndpointSpec, GatewaySpec, MeshSpec, RouteSpec, ServiceSpec};

use crate::cluster::service_cluster;
use crate::endpoint::load_assignment;
use crate::listener::{api_listener, gateway_listener, outbound_listener};
use crate::route::{RouteOut, translate_route};
use crate::virtual_host::{
    Member, default_route_configuration, gateway_route_configuration, gateway_serves,
    outbound_route_configuration, route_configuration,
};
use crate::pb::envoy::config::route::v3::RouteConfiguration;
use crate::{MeshConfig, MeshResources, XdsResource, names};

/// One change to a mesh's configuration: the new spec, or `None` for a deletion.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Service(String, Option<ServiceSpec>),
    Endpoint(String, Option<EndpointSpec>),
    Route(String, Option<RouteSpec>),
    Gateway(String, Option<GatewaySpec>),
    /// The mesh's own spec; no resource depends on it today.
    Mesh(MeshSpec),
}

/// Keeps a mesh's configuration and resources, and recomputes only what a change touches.
/// The result always equals [`crate::translate`] of the current configuration.
#[derive(Debug, Clone, Default)]
pub struct Translator {
    config: MeshConfig,
    state: State,
    resources: MeshResources,
}

impl Translator {
    /// Translates `config` in full.
    pub fn new(config: MeshConfig) -> Self {
        let mut state = State::default();
        let mut resources = MeshResources::default();
        let dirty = mark_all(&config, &mut state);
        rebuild(&config, &mut state, &mut resources, dirty);
        Self {
            config,
            state,
            resources,
        }
    }

    /// The configuration the resources were computed from.
    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    pub fn resources(&self) -> &MeshResources {
        &self.resources
    }

    pub fn into_resources(self) -> MeshResources {
        self.resources
    }

    /// Replaces the configuration, recomputing what differs from the previous one (found by
    /// comparing specs: linear in the mesh's size, but far cheaper than translating it).
    pub fn update(&mut self, config: MeshConfig) -> &MeshResources {
        let old = std::mem::replace(&mut self.config, config);
        let new = &self.config;
        let mut dirty = Dirty::default();
        let state = &mut self.state;
        for (name, old_spec) in changed(&old.services, &new.services) {
            mark_service(new, state, &mut dirty, name, old_spec);
        }
        for (name, old_spec) in changed(&old.endpoints, &new.endpoints) {
            mark_endpoint(new, state, &mut dirty, name, old_spec);
        }
        for (name, old_spec) in changed(&old.routes, &new.routes) {
            mark_route(new, state, &mut dirty, name, old_spec);
        }
        for (name, old_spec) in changed(&old.gateways, &new.gateways) {
            mark_gateway(state, &mut dirty, name, old_spec, new.gateways.get(name));
        }
        rebuild(&self.config, &mut self.state, &mut self.resources, dirty);
        &self.resources
    }

    /// Applies changes in order and recomputes what they touch: cost proportional to the
    /// change, not to the mesh (except for the outbound route configuration, which holds
    /// every route and is reassembled when a route or service changes).
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> &MeshResources {
        let mut dirty = Dirty::default();
        let config = &mut self.config;
        let state = &mut self.state;
        for change in changes {
            match change {
                Change::Service(name, spec) => {
                    let old = put(&mut config.services, &name, spec);
                    mark_service(config, state, &mut dirty, &name, old.as_ref());
                }
                Change::Endpoint(name, spec) => {
                    let old = put(&mut config.endpoints, &name, spec);
                    mark_endpoint(config, state, &mut dirty, &name, old.as_ref());
                }
                Change::Route(name, spec) => {
                    let old = put(&mut config.routes, &name, spec);
                    mark_route(config, state, &mut dirty, &name, old.as_ref());
                }
                Change::Gateway(name, spec) => {
                    let old = put(&mut config.gateways, &name, spec);
                    mark_gateway(state, &mut dirty, &name, old.as_ref(), config.gateways.get(&name));
                }
                Change::Mesh(spec) => config.spec = spec,
            }
        }
        rebuild(&self.config, &mut self.state, &mut self.resources, dirty);
        &self.resources
    }
}

/// Full translation without keeping the configuration.
pub(crate) fn translate(config: &MeshConfig) -> MeshResources {
    let mut state = State::default();
    let mut resources = MeshResources::default();
    let dirty = mark_all(config, &mut state);
    rebuild(config, &mut state, &mut resources, dirty);
    resources
}

fn put<T>(map: &mut BTreeMap<String, T>, name: &str, spec: Option<T>) -> Option<T> {
    match spec {
        Some(s) => map.insert(name.to_owned(), s),
        None => map.remove(name),
    }
}

/// Names whose spec differs between `old` and `new` (added, removed or changed), with the old
/// spec.
fn changed<'a, T: PartialEq>(
    old: &'a BTreeMap<String, T>,
    new: &'a BTreeMap<String, T>,
) -> impl Iterator<Item = (&'a String, Option<&'a T>)> {
    let removed_or_changed = old
        .iter()
        .filter(|(name, spec)| new.get(*name) != Some(spec))
        .map(|(name, spec)| (name, Some(spec)));
    let added = new
        .keys()
        .filter(|name| !old.contains_key(*name))
        .map(|name| (name, None));
    removed_or_changed.chain(added)
}

/// Reverse indexes and cached per-route translations.
#[derive(Debug, Clone, Default)]
struct State {
    /// Service name (existing or not) → endpoints naming it.
    endpoints_by_service: BTreeMap<String, BTreeSet<String>>,
    /// Service name → routes naming it as a backend or mirror.
    routes_by_service: BTreeMap<String, BTreeSet<String>>,
    /// Host name → routes claiming it. The first by name holds it (the store allows only one;
    /// this is the tie-break if that was ever violated).
    claims: BTreeMap<String, BTreeSet<String>>,
    /// Route name → gateways attaching it.
    gateways_by_route: BTreeMap<String, BTreeSet<String>>,
    /// Service name → TCP gateways forwarding to it.
    gateways_by_service: BTreeMap<String, BTreeSet<String>>,
    routes: BTreeMap<String, Arc<RouteOut>>,
    /// Warnings by the source that produced them, so each is replaced when its source is
    /// recomputed.
    warnings: BTreeMap<String, Vec<String>>,
}

impl State {
    /// The route holding host name `h`.
    fn holder(&self, h: &str) -> Option<&String> {
        self.claims.get(h).and_then(|routes| routes.first())
    }

    /// No route claims `service` or `service:port`: the service gets default listeners and a
    /// default virtual host.
    fn route_less(&self, service: &str, port: u32) -> bool {
        let [with_port, bare] = names::default_listeners(service, port);
        self.holder(&with_port).is_none() && self.holder(&bare).is_none()
    }

    fn set_warnings(&mut self, key: String, warnings: Vec<String>) {
        if warnings.is_empty() {
            self.warnings.remove(&key);
        } else {
            self.warnings.insert(key, warnings);
        }
    }
}

fn index_add(index: &mut BTreeMap<String, BTreeSet<String>>, key: &str, value: &str) {
    index.entry(key.to_owned()).or_default().insert(value.to_owned());
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
struct Dirty {
    /// Clusters (services).
    clusters: BTreeSet<String>,
    /// Load assignments (service names).
    load_assignments: BTreeSet<String>,
    /// Route translations.
    routes: BTreeSet<String>,
    /// Proxyless route configurations (route names).
    route_configs: BTreeSet<String>,
    /// Proxyless listener names to resolve.
    listeners: BTreeSet<String>,
    /// (service, port) whose default route configuration to resolve.
    defaults: BTreeSet<(String, u32)>,
    gateways: BTreeSet<String>,
    outbound: bool,
}

fn mark_all(config: &MeshConfig, state: &mut State) -> Dirty {
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
    dirty.outbound = true;
    dirty
}

fn mark_service(config: &MeshConfig, state: &State, dirty: &mut Dirty, name: &str, old: Option<&ServiceSpec>) {
    dirty.clusters.insert(name.to_owned());
    dirty.load_assignments.insert(name.to_owned());
    for spec in [old, config.services.get(name)].into_iter().flatten() {
        dirty.defaults.insert((name.to_owned(), spec.port));
    }
    if let Some(routes) = state.routes_by_service.get(name) {
        dirty.routes.extend(routes.iter().cloned());
    }
    if let Some(gateways) = state.gateways_by_service.get(name) {
        dirty.gateways.extend(gateways.iter().cloned());
    }
    dirty.outbound = true;
}

fn mark_endpoint(config: &MeshConfig, state: &mut State, dirty: &mut Dirty, name: &str, old: Option<&EndpointSpec>) {
    if let Some(old) = old {
        index_remove(&mut state.endpoints_by_service, &old.service, name);
        dirty.load_assignments.insert(old.service.clone());
    }
    if let Some(new) = config.endpoints.get(name) {
        index_add(&mut state.endpoints_by_service, &new.service, name);
        dirty.load_assignments.insert(new.service.clone());
    }
}

fn mark_route(config: &MeshConfig, state: &mut State, dirty: &mut Dirty, name: &str, old: Option<&RouteSpec>) {
    let new = config.routes.get(name);
    if let Some(old) = old {
        for s in referenced_services(old) {
            index_remove(&mut state.routes_by_service, s, name);
        }
        for h in &old.hostnames {
            index_remove(&mut state.claims, h, name);
        }
    }
    if let Some(new) = new {
        for s in referenced_services(new) {
            index_add(&mut state.routes_by_service, s, name);
        }
        for h in &new.hostnames {
            index_add(&mut state.claims, h, name);
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

fn mark_gateway(
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
    }
    if let Some(new) = new {
        for r in &new.routes {
            index_add(&mut state.gateways_by_route, r, name);
        }
        if let Some(s) = &new.service {
            index_add(&mut state.gateways_by_service, s, name);
        }
    }
    dirty.gateways.insert(name.to_owned());
}

fn referenced_services(spec: &RouteSpec) -> impl Iterator<Item = &str> {
    spec.rules.iter().flat_map(|rule| {
        rule.backends
            .iter()
            .map(|b| b.service.as_str())
            .chain(rule.mirror.iter().map(|m| m.service.as_str()))
    })
}

/// Rebuilds every dirty output.
fn rebuild(config: &MeshConfig, state: &mut State, res: &mut MeshResources, mut dirty: Dirty) {
    retranslate_routes(config, state, &mut dirty);
    for (service, port) in &dirty.defaults {
        dirty.listeners.extend(names::default_listeners(service, *port));
    }

    for name in &dirty.clusters {
        match config.services.get(name) {
            Some(spec) => put_resource(&mut res.clusters, name, &service_cluster(name, spec)),
            None => drop(res.clusters.remove(name)),
        }
    }
    for name in &dirty.load_assignments {
        rebuild_load_assignment(config, state, res, name);
    }
    for name in &dirty.route_configs {
        match (config.routes.get(name), state.routes.get(name)) {
            (Some(spec), Some(out)) => put_encoded_route_configuration(
                &mut res.route_configurations,
                name,
                route_configuration(name, spec, out),
            ),
            _ => drop(res.route_configurations.remove(name)),
        }
    }
    for (service, port) in &dirty.defaults {
        let rc = names::default_route_configuration(service, *port);
        let wanted = config.services.get(service).is_some_and(|s| s.port == *port)
            && state.route_less(service, *port);
        if wanted {
            put_resource(
                &mut res.route_configurations,
                &rc,
                &default_route_configuration(service, *port),
            );
        } else {
            res.route_configurations.remove(&rc);
        }
    }
    for name in &dirty.listeners {
        rebuild_proxyless_listener(config, state, res, name);
    }
    for name in &dirty.gateways {
        rebuild_gateway(config, state, res, name);
    }
    if dirty.outbound {
        rebuild_outbound(config, state, res);
    }
    res.warnings = state.warnings.values().flatten().cloned().collect();
}

/// Retranslates dirty routes; a route whose translation changed dirties what serves it.
fn retranslate_routes(config: &MeshConfig, state: &mut State, dirty: &mut Dirty) {
    for name in std::mem::take(&mut dirty.routes) {
        let Some(spec) = config.routes.get(&name) else {
            state.routes.remove(&name);
            state.warnings.remove(&warning_key("route", &name));
            continue;
        };
        let out = translate_route(&name, spec, &config.services);
        let previous = state.routes.get(&name);
        if previous.is_some_and(|p| **p == out) {
            continue;
        }
        if previous.is_none_or(|p| p.has_fault != out.has_fault) {
            dirty.listeners.extend(spec.hostnames.iter().cloned());
        }
        state.set_warnings(warning_key("route", &name), out.warnings.clone());
        state.routes.insert(name.clone(), Arc::new(out));
        if let Some(gateways) = state.gateways_by_route.get(&name) {
            dirty.gateways.extend(gateways.iter().cloned());
        }
        dirty.route_configs.insert(name);
        dirty.outbound = true;
    }
}

fn warning_key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

fn put_resource<M: prost::Message + prost::Name>(
    map: &mut BTreeMap<String, Arc<XdsResource>>,
    name: &str,
    message: &M,
) {
    keep_or_insert(map, XdsResource::new(name, message));
}

fn put_encoded_route_configuration(
    map: &mut BTreeMap<String, Arc<XdsResource>>,
    name: &str,
    encoded: Vec<u8>,
) {
    keep_or_insert(map, XdsResource::from_encoded::<RouteConfiguration>(name, encoded));
}

/// Keeps the existing `Arc` when nothing changed, so that snapshots can compare by pointer.
fn keep_or_insert(map: &mut BTreeMap<String, Arc<XdsResource>>, resource: XdsResource) {
    if map
        .get(&resource.name)
        .is_some_and(|r| r.version == resource.version)
    {
        return;
    }
    map.insert(resource.name.clone(), Arc::new(resource));
}

fn rebuild_load_assignment(config: &MeshConfig, state: &mut State, res: &mut MeshResources, service: &str) {
    let key = warning_key("endpoints-of", service);
    let members = state.endpoints_by_service.get(service);
    let endpoints = members
        .into_iter()
        .flatten()
        .filter_map(|e| config.endpoints.get(e).map(|spec| (e.as_str(), spec)));
    match config.services.get(service) {
        Some(spec) => {
            let (cla, warnings) = load_assignment(service, spec, endpoints);
            put_resource(&mut res.load_assignments, service, &cla);
            state.set_warnings(key, warnings);
        }
        None => {
            res.load_assignments.remove(service);
            let warnings = endpoints
                .map(|(e, _)| {
                    format!("endpoint {e}: service {service} does not exist; the endpoint is not served")
                })
                .collect();
            state.set_warnings(key, warnings);
        }
    }
}

/// Listener `name` for proxyless clients: the route holding that host name, else a service's
/// default, else nothing.
fn rebuild_proxyless_listener(config: &MeshConfig, state: &mut State, res: &mut MeshResources, name: &str) {
    let claimants = state.claims.get(name).map_or(0, BTreeSet::len);
    let warnings = match state.holder(name) {
        Some(holder) if claimants > 1 => vec![format!(
            "host name {name} is claimed by {claimants} routes; route {holder} serves it"
        )],
        _ => vec![],
    };
    state.set_warnings(warning_key("hostname", name), warnings);

    if let Some(route) = state.holder(name) {
        let with_fault = state.routes.get(route).is_some_and(|r| r.has_fault);
        put_resource(&mut res.listeners, name, &api_listener(name, route, with_fault));
        return;
    }
    let default = match names::split_port(name) {
        Some((service, port)) => config
            .services
            .get(service)
            .filter(|s| s.port == port)
            .map(|s| (service, s.port)),
        None => config.services.get(name).map(|s| (name, s.port)),
    };
    match default {
        Some((service, port)) if state.route_less(service, port) => {
            let rc = names::default_route_configuration(service, port);
            put_resource(&mut res.listeners, name, &api_listener(name, &rc, false));
        }
        _ => drop(res.listeners.remove(name)),
    }
}

fn rebuild_gateway(config: &MeshConfig, state: &mut State, res: &mut MeshResources, name: &str) {
    let listener_name = names::gateway(name);
    let key = warning_key("gateway", name);
    let Some(spec) = config.gateways.get(name) else {
        res.listeners.remove(&listener_name);
        res.route_configurations.remove(&listener_name);
        state.warnings.remove(&key);
        return;
    };
    let mut warnings = Vec::new();
    let mut members = Vec::new();
    let mut seen = BTreeSet::new();
    for route in &spec.routes {
        if !seen.insert(route) {
            continue;
        }
        let (Some(route_spec), Some(out)) = (config.routes.get(route), state.routes.get(route)) else {
            warnings.push(format!("gateway {name}: route {route} does not exist; not served"));
            continue;
        };
        let hostnames = route_spec
            .hostnames
            .iter()
            // Not filtered by which route holds a host name (so this does not depend on
            // other routes' claims): a host name two attached routes claim goes to the first.
            .filter(|h| gateway_serves(&spec.hostnames, h))
            .map(String::as_str)
            .collect();
        members.push(Member {
            name: route,
            hostnames,
            out,
        });
    }
    let with_fault = members.iter().any(|m| m.out.has_fault);
    if let Some(service) = &spec.service
        && !config.services.contains_key(service)
    {
        warnings.push(format!(
            "gateway {name}: service {service} does not exist; connections are refused until it does"
        ));
    }
    match gateway_listener(name, spec, with_fault) {
        Some(listener) if (1..=65535).contains(&spec.port) => {
            put_resource(&mut res.listeners, &listener_name, &listener)
        }
        _ => {
            warnings.push(format!(
                "gateway {name}: needs a port from 1 to 65535 and, for tcp, a service; not served"
            ));
            res.listeners.remove(&listener_name);
        }
    }
    if spec.protocol == switchboard_model::spec::GatewayProtocol::Http {
        let rc = gateway_route_configuration(name, spec.port, &members);
        put_encoded_route_configuration(&mut res.route_configurations, &listener_name, rc);
    } else {
        res.route_configurations.remove(&listener_name);
    }
    state.set_warnings(key, warnings);
}

fn rebuild_outbound(config: &MeshConfig, state: &State, res: &mut MeshResources) {
    let members: Vec<Member<'_>> = config
        .routes
        .iter()
        .filter_map(|(name, spec)| {
            let out = state.routes.get(name)?;
            let hostnames = spec
                .hostnames
                .iter()
                .filter(|h| state.holder(h) == Some(name))
                .map(String::as_str)
                .collect();
            Some(Member {
                name,
                hostnames,
                out,
            })
        })
        .collect();
    let route_less = config
        .services
        .iter()
        .filter(|(name, spec)| state.route_less(name, spec.port))
        .map(|(name, spec)| (name.as_str(), spec.port));
    let rc = outbound_route_configuration(&members, route_less);
    put_encoded_route_configuration(&mut res.route_configurations, names::OUTBOUND, rc);
    let with_fault = state.routes.values().any(|r| r.has_fault);
    put_resource(&mut res.listeners, names::OUTBOUND, &outbound_listener(with_fault));
}
