//! Switchboard's translator: a mesh's configuration in, Envoy v3 xDS resources out.
//!
//! **Architecture invariant:** this crate is pure. No IO, no async, no clock, no randomness:
//! the same [`MeshConfig`] always gives byte-identical resources, so a resource's
//! [version](XdsResource::version) is a hash of its bytes and an unchanged resource keeps its
//! version across recomputations, replicas and restarts (clients are sent only what changed).
//!
//! Entry points:
//! - [`translate`]: the whole mesh at once.
//! - [`Translator`]: keeps the last configuration and result, and on [`Translator::update`] or
//!   [`Translator::apply`] recomputes only the resources a change touches.
//! - [`sidecar_inbound`]: the per-node inbound listener and cluster of a sidecar, which depend
//!   on the node's own metadata rather than on the mesh alone.
//! - [`inbound_rbac`]: a service's authorization policies as RBAC filters for its inbound
//!   listeners (kept per service in [`MeshResources::inbound_rbac`]).
//!
//! What each kind of client receives is decided by [`MeshResources::listeners_for`] and
//! [`MeshResources::clusters_for`] (sidecars and gateways get clusters with mesh mTLS,
//! proxyless gRPC clients plaintext ones); resource names are in [`names`]. Mesh mTLS
//! (`MeshSpec.mtls`) is described in the `mtls` module.

mod cluster;
mod common;
mod endpoint;
mod filters;
mod gateway_tls;
mod grpc_mtls;
mod hash;
mod listener;
mod matcher;
mod mtls;
pub mod names;
mod origination;
mod rbac;
mod resource;
mod route;
mod sidecar;
mod translator;
mod virtual_host;

use std::collections::BTreeMap;
use std::sync::Arc;

use switchboard_model::spec::{MtlsMode, Protocol};
use switchboard_model::{
    AuthorizationPolicySpec, CertificateSpec, EndpointSpec, GatewaySpec, MeshSpec, RouteSpec,
    ServiceSpec, TrustBundle,
};

pub use rbac::{InboundRbac, inbound_rbac};
pub use resource::XdsResource;
pub use sidecar::{
    InboundSecurity, sidecar_inbound, sidecar_inbound_resources, sidecar_inbound_with,
    sidecar_outbound_on,
};
/// The Envoy protobuf types (envoy-types, through xds-proto). They come with their own
/// `google.protobuf` well-known types (`Any`, `Duration`, wrappers), which every Envoy message
/// uses.
pub use switchboard_xds_proto::pb;
pub use translator::{Change, Translator};

/// Everything the translator reads: one mesh of one tenant, as the store holds it at
/// `revision`. Every map is keyed by the resource's name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshConfig {
    pub tenant: String,
    pub mesh: String,
    /// The tenant's revision this configuration was read at. Not part of any resource (so an
    /// unrelated write does not change versions); carried for status reporting.
    pub revision: i64,
    pub spec: MeshSpec,
    pub services: BTreeMap<String, ServiceSpec>,
    /// Endpoints are resources of their own; each names its service.
    pub endpoints: BTreeMap<String, EndpointSpec>,
    pub routes: BTreeMap<String, RouteSpec>,
    pub gateways: BTreeMap<String, GatewaySpec>,
    /// Authorization policies; each names the service it protects.
    pub authorization_policies: BTreeMap<String, AuthorizationPolicySpec>,
    /// Uploaded certificates that gateways terminate TLS with (only their DNS names matter
    /// here; the key is served over SDS by the xDS server).
    pub certificates: BTreeMap<String, CertificateSpec>,
    /// The trust domain of workload identities (from the control plane's configuration):
    /// SPIFFE IDs are `spiffe://{tenant}.{trust_domain}/…`, see [`switchboard_model::identity`].
    pub trust_domain: String,
    /// The mesh CA's public state: the roots behind `ROOTCA`. Empty before the CA exists.
    pub trust: TrustBundle,
}

impl MeshConfig {
    /// The protocol of a service, for callers that build per-node resources
    /// ([`sidecar_inbound`]); `None` when the service does not exist.
    pub fn service_protocol(&self, service: &str) -> Option<Protocol> {
        self.services.get(service).map(|s| s.protocol)
    }

    /// The mTLS mode the resources are built for: `spec.mtls.mode`, except that `permissive`
    /// means `off` while the mesh has no CA (empty [`MeshConfig::trust`]), since no
    /// certificate could be issued; `strict` stays strict (and calls fail until the CA exists).
    pub fn effective_mtls_mode(&self) -> MtlsMode {
        mtls::effective_mode(self)
    }
}

/// The xDS resources of one mesh, by type and name. Resources are shared (`Arc`) so that a
/// snapshot can be cloned cheaply into every stream of the mesh and between recomputations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshResources {
    /// LDS: proxyless listeners (named after host names), the sidecars' outbound listener and
    /// the gateways' listeners. Use [`MeshResources::listeners_for`] to pick a node's.
    pub listeners: BTreeMap<String, Arc<XdsResource>>,
    /// LDS for xDS-enabled gRPC servers (gRFC A36), named [`names::server_listener`]: one per
    /// address and port of an endpoint of a `grpc` service, with mTLS when the endpoint is a
    /// mesh workload and the mode is not `off`, and the service's RBAC filters.
    pub server_listeners: BTreeMap<String, Arc<XdsResource>>,
    /// RDS.
    pub route_configurations: BTreeMap<String, Arc<XdsResource>>,
    /// CDS for proxyless gRPC clients: one per service, plaintext (gRPC does not speak SDS).
    pub clusters: BTreeMap<String, Arc<XdsResource>>,
    /// CDS for proxyless gRPC clients whose bootstrap defines certificate provider instance
    /// [`names::CERTIFICATE_PROVIDER_INSTANCE`] (gRFC A29): a service's cluster with mTLS when
    /// the effective mode is not `off` and all its endpoints (at least one) are mesh
    /// workloads, otherwise the very `Arc` of [`MeshResources::clusters`].
    pub proxyless_mtls_clusters: BTreeMap<String, Arc<XdsResource>>,
    /// CDS for sidecars and gateways: the same clusters with mesh mTLS towards endpoints that
    /// are mesh workloads (`transport_socket_matches`), when the effective mTLS mode is not
    /// `off`; otherwise the very `Arc`s of [`MeshResources::clusters`]. A service with `tls`
    /// gets TLS origination instead, in any mode. Use [`MeshResources::clusters_for`] to pick
    /// a node's.
    pub proxy_clusters: BTreeMap<String, Arc<XdsResource>>,
    /// EDS: one per service, even without endpoints, so that clients do not wait for it.
    pub load_assignments: BTreeMap<String, Arc<XdsResource>>,
    /// Per service: how its sidecars' inbound listener terminates mTLS, for
    /// [`sidecar_inbound_resources`]. Computed once per change, shared by the service's
    /// sidecars; joined with [`MeshResources::inbound_rbac`] by
    /// [`InboundSecurity::with_rbac`].
    pub inbound_security: BTreeMap<String, Arc<InboundSecurity>>,
    /// The RBAC filters of each service's inbound listeners ([`inbound_rbac`]), for the
    /// services that have any; a service missing here allows every caller.
    pub inbound_rbac: BTreeMap<String, Arc<InboundRbac>>,
    /// Things validation could not see (e.g. an endpoint of a service that does not exist),
    /// grouped by the resource they come from. The offending piece is left out; the rest of
    /// the mesh is served.
    pub warnings: Vec<String>,
}

/// What kind of xDS client a node is (from its node metadata), which decides the listeners it
/// is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    /// A proxyless gRPC client: asks for listeners by name (`xds:///payments:8080`).
    Proxyless,
    /// A sidecar proxy (metadata `role: sidecar`): wildcard LDS.
    Sidecar(SidecarParams),
    /// An edge proxy (metadata `role: gateway`, `gateway: <name>`): wildcard LDS.
    Gateway { name: String },
}

/// A sidecar's own node metadata. Untrusted input: [`sidecar_inbound`] checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarParams {
    /// The service the sidecar's application belongs to.
    pub service: String,
    /// Where the sidecar accepts mesh traffic (default 15006).
    pub inbound_port: u32,
    /// Where the local application listens (on 127.0.0.1).
    pub app_port: u32,
    /// Where the outbound listener binds on 127.0.0.1 (default 15001). Another port lets
    /// two sidecars share one host (tests, several apps on one VM); the listener is then a
    /// per-node copy of the mesh's, see [`sidecar_outbound_on`].
    pub outbound_port: u32,
}

/// What the translator cannot turn into resources. Mesh translation never fails (it warns and
/// skips instead); these come from per-node input, which no validation has seen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("{field} {value} is out of range: set node metadata {field} to a port from 1 to 65535")]
    InvalidPort { field: &'static str, value: u32 },
    #[error(
        "inbound_port and app_port are both {port}: the sidecar cannot listen where the \
         application does; give the sidecar another inbound_port (default 15006)"
    )]
    PortClash { port: u32 },
    #[error(
        "outbound_port {port} is also the sidecar's {other}: give the outbound listener a port \
         of its own (default 15001)"
    )]
    OutboundClash { port: u32, other: &'static str },
}

/// Translates a whole mesh. Equivalent to `Translator::new(config.clone()).resources()`
/// without keeping anything for later updates.
pub fn translate(config: &MeshConfig) -> MeshResources {
    translator::translate(config)
}

impl MeshResources {
    /// The clusters a node of this role is sent: proxyless clients get plaintext ones (gRPC
    /// cannot use SDS), sidecars and gateways the ones with mesh mTLS.
    pub fn clusters_for(&self, role: &NodeRole) -> &BTreeMap<String, Arc<XdsResource>> {
        match role {
            NodeRole::Proxyless => &self.clusters,
            NodeRole::Sidecar(_) | NodeRole::Gateway { .. } => &self.proxy_clusters,
        }
    }

    /// The listeners a node of this role is sent.
    ///
    /// - Proxyless clients: every listener named after a host name (they subscribe by name, so
    ///   the server still sends only those asked for).
    /// - Sidecars: the outbound listener. Their inbound listener and cluster depend on their
    ///   own metadata: build them with [`sidecar_inbound_resources`].
    /// - Gateways: the listeners of their gateway resource ([`names::gateway_listener_names`]).
    pub fn listeners_for<'a>(
        &'a self,
        role: &NodeRole,
    ) -> Box<dyn Iterator<Item = &'a Arc<XdsResource>> + 'a> {
        match role {
            NodeRole::Proxyless => Box::new(
                self.listeners
                    .iter()
                    .filter(|(name, _)| names::is_proxyless_listener(name))
                    .map(|(_, r)| r),
            ),
            NodeRole::Sidecar(_) => Box::new(self.listeners.get(names::OUTBOUND).into_iter()),
            NodeRole::Gateway { name } => Box::new(
                names::gateway_listener_names(name)
                    .into_iter()
                    .filter_map(|l| self.listeners.get(&l)),
            ),
        }
    }
}
