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
//! - Cluster `{s}` (all kinds): service `s`; the proxies' one also the mesh's mTLS inputs
//!   (effective mode, tenant, trust domain, mesh name: `MtlsInputs`); the one for proxyless
//!   clients with certificate providers those and whether the endpoints naming `s` are all
//!   mesh workloads.
//! - ClusterLoadAssignment `{s}`: service `s`, the endpoints naming `s`, and whether the
//!   effective mTLS mode is `off` (endpoint metadata).
//! - Route translation `{r}`: route `r` and the services it names (protocol → retry defaults).
//! - RouteConfiguration `{r}`: route `r`'s translation and host names.
//! - Listener `{h}`: which route holds host name `h` (and whether it injects faults); or, if
//!   none and `h` is `s` / `s:port`, service `s` and whether any route claims its names.
//! - RouteConfiguration `{s}:{port}`: service `s` and whether it is route-less.
//! - `sidecar/outbound`: every route and every route-less service.
//! - `gateway/{g}`: gateway `g`, its attached routes and its TLS certificates (their DNS
//!   names).
//! - Inbound security `{s}`: service `s` (its protocol) and the mesh's mTLS inputs.
//! - Inbound RBAC of service `s`: service `s` (existence, protocol), the policies naming `s`,
//!   the mesh's default authorization, and tenant, mesh and trust domain (SPIFFE IDs).
//! - Server listener `grpc/server?xds.resource.listening_address={a}`: the endpoints at
//!   address `a` (their own port, else their service's), their services (protocol) and
//!   inbound RBAC, and the mesh's mTLS inputs.

mod rebuild;
mod state;

use std::collections::BTreeMap;

use switchboard_model::{
    AuthorizationPolicySpec, CertificateSpec, EndpointSpec, GatewaySpec, MeshSpec, RouteSpec,
    ServiceSpec, TrustBundle,
};

use crate::mtls::MtlsInputs;
use crate::{MeshConfig, MeshResources};
use rebuild::rebuild;
use state::{
    Dirty, State, mark_all, mark_all_inbound, mark_certificate, mark_endpoint, mark_gateway,
    mark_mtls, mark_policy, mark_route, mark_service,
};

/// One change to a mesh's configuration: the new spec, or `None` for a deletion.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Service(String, Option<ServiceSpec>),
    Endpoint(String, Option<EndpointSpec>),
    Route(String, Option<RouteSpec>),
    Gateway(String, Option<GatewaySpec>),
    AuthorizationPolicy(String, Option<AuthorizationPolicySpec>),
    Certificate(String, Option<CertificateSpec>),
    /// The mesh's own spec (its mTLS mode matters, and its default authorization decides
    /// every service's RBAC filters).
    Mesh(MeshSpec),
    /// The mesh CA's trust bundle (whether there is one matters).
    Trust(TrustBundle),
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
        if MtlsInputs::of(&old) != MtlsInputs::of(new) {
            mark_mtls(new, state, &mut dirty);
        }
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
        for (name, old_spec) in changed(&old.authorization_policies, &new.authorization_policies) {
            mark_policy(new, state, &mut dirty, name, old_spec);
        }
        for (name, _) in changed(&old.certificates, &new.certificates) {
            mark_certificate(state, &mut dirty, name);
        }
        if authorization_inputs(&old) != authorization_inputs(new) {
            mark_all_inbound(new, &mut dirty);
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
                    mark_gateway(
                        state,
                        &mut dirty,
                        &name,
                        old.as_ref(),
                        config.gateways.get(&name),
                    );
                }
                Change::AuthorizationPolicy(name, spec) => {
                    let old = put(&mut config.authorization_policies, &name, spec);
                    mark_policy(config, state, &mut dirty, &name, old.as_ref());
                }
                Change::Certificate(name, spec) => {
                    put(&mut config.certificates, &name, spec);
                    mark_certificate(state, &mut dirty, &name);
                }
                Change::Mesh(spec) => {
                    let before = MtlsInputs::of(config);
                    let default_changed =
                        config.spec.default_authorization != spec.default_authorization;
                    config.spec = spec;
                    if before != MtlsInputs::of(config) {
                        mark_mtls(config, state, &mut dirty);
                    }
                    if default_changed {
                        mark_all_inbound(config, &mut dirty);
                    }
                }
                Change::Trust(trust) => {
                    let before = MtlsInputs::of(config);
                    config.trust = trust;
                    if before != MtlsInputs::of(config) {
                        mark_mtls(config, state, &mut dirty);
                    }
                }
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

/// What every service's RBAC filters read besides its policies: the mesh default, and the
/// names that make up SPIFFE IDs.
fn authorization_inputs(
    c: &MeshConfig,
) -> (&switchboard_model::AuthorizationAction, &str, &str, &str) {
    (
        &c.spec.default_authorization,
        &c.tenant,
        &c.mesh,
        &c.trust_domain,
    )
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
