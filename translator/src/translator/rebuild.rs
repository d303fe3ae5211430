//! Rebuilding the outputs an update marked dirty.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::state::{Dirty, State};
use crate::cluster::service_cluster;
use crate::endpoint::load_assignment;
use crate::gateway_tls::sni_chains;
use crate::listener::{api_listener, gateway_listener, outbound_listener};
use crate::mtls::{effective_mode, inbound_tls, proxy_cluster};
use crate::pb::envoy::config::route::v3::RouteConfiguration;
use crate::route::translate_route;
use crate::virtual_host::{
    Member, default_route_configuration, gateway_route_configuration, gateway_serves,
    outbound_route_configuration, route_configuration,
};
use crate::{
    InboundRbac, InboundSecurity, MeshConfig, MeshResources, XdsResource, grpc_mtls, names,
};
use switchboard_model::spec::{MtlsMode, Protocol};

/// Rebuilds every dirty output.
pub(super) fn rebuild(
    config: &MeshConfig,
    state: &mut State,
    res: &mut MeshResources,
    mut dirty: Dirty,
) {
    retranslate_routes(config, state, &mut dirty);
    let mode = effective_mode(config);
    for (service, port) in &dirty.defaults {
        dirty
            .listeners
            .extend(names::default_listeners(service, *port));
    }

    for name in &dirty.clusters {
        rebuild_cluster(config, mode, state, res, name);
    }
    for name in &dirty.inbound {
        rebuild_inbound_security(config, res, name);
    }
    for name in &dirty.load_assignments {
        rebuild_load_assignment(config, mode != MtlsMode::Off, state, res, name);
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
        let wanted = config
            .services
            .get(service)
            .is_some_and(|s| s.port == *port)
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
    for service in &dirty.inbound {
        rebuild_inbound_rbac(config, state, res, service);
        let members = state
            .endpoints_by_service
            .get(service)
            .into_iter()
            .flatten();
        dirty
            .server_listeners
            .extend(members.filter_map(|e| state.server_listener_of.get(e).cloned()));
    }
    for name in &dirty.server_listeners {
        rebuild_server_listener(config, state, res, name);
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
) -> Arc<XdsResource> {
    keep_or_insert(map, XdsResource::new(name, message))
}

fn put_encoded_route_configuration(
    map: &mut BTreeMap<String, Arc<XdsResource>>,
    name: &str,
    encoded: Vec<u8>,
) {
    keep_or_insert(
        map,
        XdsResource::from_encoded::<RouteConfiguration>(name, encoded),
    );
}

/// Keeps the existing `Arc` when nothing changed, so that snapshots can compare by pointer.
/// Returns the one in the map.
fn keep_or_insert(
    map: &mut BTreeMap<String, Arc<XdsResource>>,
    resource: XdsResource,
) -> Arc<XdsResource> {
    if let Some(existing) = map.get(&resource.name)
        && existing.version == resource.version
    {
        return Arc::clone(existing);
    }
    let resource = Arc::new(resource);
    map.insert(resource.name.clone(), Arc::clone(&resource));
    resource
}

/// Service `name`'s cluster for proxyless clients; for those with certificate providers,
/// with mTLS when it applies (else the same `Arc`); and, with mTLS unless the mode is `off`
/// (then the same `Arc`), for proxies.
fn rebuild_cluster(
    config: &MeshConfig,
    mode: MtlsMode,
    state: &State,
    res: &mut MeshResources,
    name: &str,
) {
    let Some(spec) = config.services.get(name) else {
        res.clusters.remove(name);
        res.proxyless_mtls_clusters.remove(name);
        res.proxy_clusters.remove(name);
        return;
    };
    let plain = service_cluster(name, spec);
    let shared = put_resource(&mut res.clusters, name, &plain);
    let endpoint_mtls = state
        .endpoints_by_service
        .get(name)
        .into_iter()
        .flatten()
        .filter_map(|e| config.endpoints.get(e).map(|ep| ep.mtls));
    if grpc_mtls::client_mtls(config, endpoint_mtls) {
        let cluster = grpc_mtls::client_cluster(config, name, plain.clone());
        put_resource(&mut res.proxyless_mtls_clusters, name, &cluster);
    } else {
        res.proxyless_mtls_clusters
            .insert(name.to_owned(), Arc::clone(&shared));
    }
    if let Some(tls) = &spec.tls {
        let cluster = crate::origination::originating_cluster(plain, tls, spec.protocol);
        put_resource(&mut res.proxy_clusters, name, &cluster);
    } else if mode == MtlsMode::Off {
        res.proxy_clusters.insert(name.to_owned(), shared);
    } else {
        let cluster = proxy_cluster(config, name, spec.protocol, plain);
        put_resource(&mut res.proxy_clusters, name, &cluster);
    }
}

/// Server listener `name`: for the first endpoint (by name) at its address whose service
/// speaks gRPC; none when there is no such endpoint (gRPC then serves nothing there).
fn rebuild_server_listener(
    config: &MeshConfig,
    state: &mut State,
    res: &mut MeshResources,
    name: &str,
) {
    let key = warning_key("server-listener", name);
    let at_address = state.endpoints_by_server_listener.get(name);
    let mut candidates = at_address.into_iter().flatten().filter_map(|e| {
        let ep = config.endpoints.get(e)?;
        let service = config.services.get(&ep.service)?;
        (service.protocol == Protocol::Grpc).then_some((e, ep))
    });
    let Some((endpoint, spec)) = candidates.next() else {
        res.server_listeners.remove(name);
        state.warnings.remove(&key);
        return;
    };
    let others: Vec<&str> = candidates
        .filter(|(_, ep)| ep.service != spec.service)
        .map(|(e, _)| e.as_str())
        .collect();
    let warnings = if others.is_empty() {
        vec![]
    } else {
        vec![format!(
            "endpoint {endpoint} of service {} and endpoints {} of other services share the \
             address an xDS-enabled gRPC server asks for as {name}; it serves {}",
            spec.service,
            others.join(", "),
            spec.service
        )]
    };
    let address = state.server_listener_of.get(endpoint).and_then(|l| {
        l.strip_prefix(names::SERVER_LISTENER_PREFIX)?
            .parse::<std::net::SocketAddr>()
            .ok()
    });
    state.set_warnings(key, warnings);
    let Some(address) = address else {
        res.server_listeners.remove(name);
        return;
    };
    let listener = grpc_mtls::server_listener(
        config,
        &grpc_mtls::ServerListener {
            address,
            mtls: spec.mtls,
            rbac: res.inbound_rbac.get(&spec.service).map(|r| &**r),
        },
    );
    put_resource(&mut res.server_listeners, name, &listener);
}

/// Service `name`'s inbound mTLS, from the mesh's mode (its authorization filters are
/// [`rebuild_inbound_rbac`]'s).
fn rebuild_inbound_security(config: &MeshConfig, res: &mut MeshResources, name: &str) {
    let Some(spec) = config.services.get(name) else {
        res.inbound_security.remove(name);
        return;
    };
    let security: InboundSecurity = inbound_tls(config, spec.protocol);
    if res
        .inbound_security
        .get(name)
        .is_none_or(|old| **old != security)
    {
        res.inbound_security
            .insert(name.to_owned(), Arc::new(security));
    }
}

fn rebuild_load_assignment(
    config: &MeshConfig,
    mtls: bool,
    state: &mut State,
    res: &mut MeshResources,
    service: &str,
) {
    let key = warning_key("endpoints-of", service);
    let members = state.endpoints_by_service.get(service);
    let endpoints = members
        .into_iter()
        .flatten()
        .filter_map(|e| config.endpoints.get(e).map(|spec| (e.as_str(), spec)));
    match config.services.get(service) {
        Some(spec) => {
            let (cla, warnings) = load_assignment(service, spec, endpoints, mtls);
            put_resource(&mut res.load_assignments, service, &cla);
            state.set_warnings(key, warnings);
        }
        None => {
            res.load_assignments.remove(service);
            let warnings = endpoints
                .map(|(e, _)| {
                    format!(
                        "endpoint {e}: service {service} does not exist; the endpoint is not served"
                    )
                })
                .collect();
            state.set_warnings(key, warnings);
        }
    }
}

/// Listener `name` for proxyless clients: the route holding that host name, else a service's
/// default, else nothing.
fn rebuild_proxyless_listener(
    config: &MeshConfig,
    state: &mut State,
    res: &mut MeshResources,
    name: &str,
) {
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
        put_resource(
            &mut res.listeners,
            name,
            &api_listener(name, route, with_fault),
        );
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
    let mut seen_hosts = BTreeSet::new();
    for route in &spec.routes {
        if !seen.insert(route) {
            continue;
        }
        let (Some(route_spec), Some(out)) = (config.routes.get(route), state.routes.get(route))
        else {
            warnings.push(format!(
                "gateway {name}: route {route} does not exist; not served"
            ));
            continue;
        };
        let hostnames = route_spec
            .hostnames
            .iter()
            // Not filtered by which route holds a host name (so this does not depend on
            // other routes' claims): a host name two attached routes claim goes to the first.
            .filter(|h| gateway_serves(&spec.hostnames, h) && seen_hosts.insert(h.as_str()))
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
    let tls = match &spec.tls {
        Some(tls) => {
            let chains = sni_chains(name, tls, &config.certificates, &mut warnings);
            if chains.is_empty() {
                warnings.push(format!(
                    "gateway {name}: none of its certificates exists; not served"
                ));
                res.listeners.remove(&listener_name);
                res.route_configurations.remove(&listener_name);
                state.set_warnings(key, warnings);
                return;
            }
            chains
        }
        None => Vec::new(),
    };
    match gateway_listener(name, spec, with_fault, &tls) {
        Some(listener) if (1..=65535).contains(&spec.port) => {
            put_resource(&mut res.listeners, &listener_name, &listener);
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

fn rebuild_inbound_rbac(
    config: &MeshConfig,
    state: &mut State,
    res: &mut MeshResources,
    service: &str,
) {
    let names = state.policies_by_service.get(service).into_iter().flatten();
    let policies = names.filter_map(|n| {
        let spec = config.authorization_policies.get(n)?;
        Some((n.as_str(), spec))
    });
    let (rbac, warnings) = crate::rbac::build(config, service, policies);
    state.set_warnings(warning_key("authorization-of", service), warnings);
    if rbac == InboundRbac::default() {
        res.inbound_rbac.remove(service);
    } else if res.inbound_rbac.get(service).is_none_or(|r| **r != rbac) {
        res.inbound_rbac.insert(service.to_owned(), Arc::new(rbac));
    }
}

fn rebuild_outbound(config: &MeshConfig, state: &State, res: &mut MeshResources) {
    // Both maps hold the same route names (every route is translated), so they are walked
    // side by side rather than looked up.
    let mut outs = state.routes.iter().peekable();
    let mut members: Vec<Member<'_>> = Vec::with_capacity(config.routes.len());
    for (name, spec) in &config.routes {
        while outs.next_if(|(n, _)| *n < name).is_some() {}
        let Some((_, out)) = outs.next_if(|(n, _)| *n == name) else {
            continue;
        };
        let hostnames = spec
            .hostnames
            .iter()
            .filter(|h| state.holds(h, name))
            .map(String::as_str)
            .collect();
        members.push(Member {
            name,
            hostnames,
            out,
        });
    }
    let route_less = config
        .services
        .iter()
        .filter(|(name, spec)| state.route_less(name, spec.port))
        .map(|(name, spec)| (name.as_str(), spec.port));
    // A domain is already taken when a route holds it or it is a route-less service's name.
    let taken = |domain: &str| {
        state.claims.contains_key(domain)
            || config
                .services
                .get(domain)
                .is_some_and(|s| state.route_less(domain, s.port))
    };
    let rc = outbound_route_configuration(&members, route_less, taken);
    put_encoded_route_configuration(&mut res.route_configurations, names::OUTBOUND, rc);
    let with_fault = state.routes.values().any(|r| r.has_fault);
    put_resource(
        &mut res.listeners,
        names::OUTBOUND,
        &outbound_listener(with_fault),
    );
}
