//! What one node may see of its mesh's snapshot: the mesh-wide resources, the listeners and
//! clusters of its role (proxies get clusters with mesh mTLS, proxyless clients plaintext
//! ones), and its own per-node resources (a sidecar's inbound listener and cluster, and the
//! `default` secret).
//!
//! Secrets: an anonymous stream's view holds none (not even `ROOTCA`); an authenticated one
//! ([`NodeView::with_secrets`]) sees `ROOTCA`, and `default` once the stream has put the
//! node's certificate in ([`NodeView::set_certificate`]), which is accepted only for the
//! identity the view itself derives ([`NodeView::identity`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use switchboard_model::MtlsMode;
use switchboard_model::identity::spiffe_id;
use switchboard_model::spec::Protocol;
use switchboard_translator::{
    InboundRbac, InboundSecurity, NodeRole, XdsResource, names, sidecar_inbound_resources,
};
use switchboard_xds_proto::ResourceType;

use crate::protocol::Resources;
use crate::sds::{DEFAULT, NodeSecret, ROOTCA};
use crate::snapshot::MeshSnapshot;

/// A node's view of a mesh snapshot. Holds the snapshot by `Arc`; the per-node resources are
/// two small resources rebuilt only when the sidecar's service changes protocol, inbound
/// mTLS or authorization.
#[derive(Debug, Clone)]
pub struct NodeView {
    snapshot: Arc<MeshSnapshot>,
    role: NodeRole,
    /// A sidecar's inbound listener and cluster.
    inbound: Option<Inbound>,
    /// A sidecar's outbound listener when it asked for a port other than 15001: a copy of
    /// the mesh's, rebuilt when the mesh's changes (compared by version).
    outbound: Option<(String, Arc<XdsResource>)>,
    /// The stream presented a proxy token: it may receive secrets.
    secrets: bool,
    /// The node's `default` certificate, for [`NodeView::identity`].
    certificate: Option<Arc<NodeSecret>>,
    /// A proxyless node whose bootstrap defines the certificate provider instance the
    /// translator names: it gets the clusters with mTLS (gRFC A29).
    certificate_providers: bool,
}

/// A sidecar's inbound listener and cluster, and what they were built from.
#[derive(Debug, Clone)]
struct Inbound {
    protocol: Protocol,
    security: Arc<InboundSecurity>,
    rbac: Option<Arc<InboundRbac>>,
    listener: Arc<XdsResource>,
    cluster: Arc<XdsResource>,
}

impl NodeView {
    pub fn new(snapshot: Arc<MeshSnapshot>, role: NodeRole) -> Self {
        let mut view = Self {
            snapshot,
            role,
            inbound: None,
            outbound: None,
            secrets: false,
            certificate: None,
            certificate_providers: false,
        };
        view.refresh_inbound();
        view.refresh_outbound();
        view
    }

    /// Lets the view hold secrets: only for a stream authenticated with a proxy token of the
    /// node's tenant and mesh.
    pub fn with_secrets(mut self) -> Self {
        self.secrets = true;
        self
    }

    /// The node's bootstrap defines the certificate provider instance mTLS clusters name
    /// ([`crate::node::has_certificate_providers`]): a proxyless node gets
    /// `proxyless_mtls_clusters` instead of the plaintext ones.
    pub fn with_certificate_providers(mut self, yes: bool) -> Self {
        self.certificate_providers = yes;
        self
    }

    /// The clusters of this node's kind.
    fn clusters(&self) -> &BTreeMap<String, Arc<XdsResource>> {
        let r = &self.snapshot.resources;
        match self.role {
            NodeRole::Proxyless if self.certificate_providers => &r.proxyless_mtls_clusters,
            _ => r.clusters_for(&self.role),
        }
    }

    /// The SPIFFE ID this node's `default` certificate is for, when it may have one: an
    /// authenticated sidecar of a service that exists, or a gateway that exists (named in the
    /// `service` segment), in a mesh whose mTLS is not `off`. Proxyless clients have none.
    pub fn identity(&self) -> Option<String> {
        let s = &self.snapshot;
        if !self.secrets || s.spec.mtls.mode == MtlsMode::Off {
            return None;
        }
        let name = match &self.role {
            NodeRole::Sidecar(p) if s.service_protocols.contains_key(&p.service) => &p.service,
            NodeRole::Gateway { name } if s.gateways.contains(name) => name,
            _ => return None,
        };
        Some(spiffe_id(&s.tenant, &s.trust_domain, &s.mesh, name))
    }

    /// Whether this node may receive secrets at all (an authenticated stream).
    pub fn serves_secrets(&self) -> bool {
        self.secrets
    }

    /// Puts in (or, with `None`, takes out) the node's certificate. One for another identity
    /// than [`NodeView::identity`] is refused and nothing is served as `default`.
    pub fn set_certificate(&mut self, certificate: Option<Arc<NodeSecret>>) {
        self.certificate = certificate;
        if let Some(c) = &self.certificate
            && self.identity().as_deref() != Some(c.info.spiffe_id.as_str())
        {
            tracing::error!(
                certificate = %c.info.spiffe_id,
                "a certificate for another identity was offered to this node; not serving it"
            );
            self.certificate = None;
        }
    }

    /// The certificate served as `default`, if any.
    pub fn certificate(&self) -> Option<&Arc<NodeSecret>> {
        self.certificate.as_ref()
    }

    fn secret(&self, name: &str) -> Option<&Arc<XdsResource>> {
        if !self.secrets {
            return None;
        }
        match name {
            ROOTCA => self.snapshot.root_ca.as_ref(),
            DEFAULT => self.default_secret(),
            _ => {
                let certificate = name.strip_prefix(names::CERTIFICATE_SECRET_PREFIX)?;
                self.gateway_certificate_names()
                    .find(|c| *c == certificate)
                    .and_then(|c| self.snapshot.certificates.0.get(c))
            }
        }
    }

    /// The uploaded certificates this node may receive: those its gateway names (only an
    /// authenticated gateway's view has any).
    pub(crate) fn gateway_certificate_names(&self) -> impl Iterator<Item = &str> + '_ {
        let gateway = match &self.role {
            NodeRole::Gateway { name } if self.secrets => Some(name),
            _ => None,
        };
        gateway
            .and_then(|g| self.snapshot.gateway_certificates.get(g))
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// `default`, only while it is still for the node's identity (the service or gateway may
    /// be gone, or mTLS turned off, since it was issued).
    fn default_secret(&self) -> Option<&Arc<XdsResource>> {
        let c = self.certificate.as_ref()?;
        (self.identity().as_deref() == Some(c.info.spiffe_id.as_str())).then_some(&c.resource)
    }

    pub fn snapshot(&self) -> &Arc<MeshSnapshot> {
        &self.snapshot
    }

    pub fn role(&self) -> &NodeRole {
        &self.role
    }

    /// Moves to a new snapshot of the same mesh.
    pub fn update(&mut self, snapshot: Arc<MeshSnapshot>) {
        self.snapshot = snapshot;
        self.refresh_inbound();
        self.refresh_outbound();
    }

    fn refresh_outbound(&mut self) {
        let NodeRole::Sidecar(params) = &self.role else {
            return;
        };
        if params.outbound_port == names::OUTBOUND_PORT {
            return;
        }
        let Some(shared) = self.snapshot.resources.listeners.get(names::OUTBOUND) else {
            self.outbound = None;
            return;
        };
        if matches!(&self.outbound, Some((v, _)) if *v == shared.version) {
            return;
        }
        self.outbound = switchboard_translator::sidecar_outbound_on(shared, params.outbound_port)
            .map(|l| (shared.version.clone(), l));
    }

    /// The role's listeners, with a sidecar's outbound listener moved to its own port.
    fn role_listeners(&self) -> Box<dyn Iterator<Item = &Arc<XdsResource>> + '_> {
        let shared = self.snapshot.resources.listeners_for(&self.role);
        match &self.outbound {
            Some((_, own)) => {
                Box::new(shared.map(move |l| if l.name == names::OUTBOUND { own } else { l }))
            }
            None => shared,
        }
    }

    fn refresh_inbound(&mut self) {
        let NodeRole::Sidecar(params) = &self.role else {
            return;
        };
        let service = &params.service;
        let (Some(protocol), Some(security)) = (
            self.snapshot.service_protocols.get(service).copied(),
            self.snapshot.resources.inbound_security.get(service),
        ) else {
            // The service does not exist (yet): no inbound side until it does.
            self.inbound = None;
            return;
        };
        let rbac = self.snapshot.resources.inbound_rbac.get(service);
        let same = |a: Option<&Arc<InboundRbac>>, b: Option<&Arc<InboundRbac>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
            (None, None) => true,
            _ => false,
        };
        let unchanged = self.inbound.as_ref().is_some_and(|i| {
            i.protocol == protocol
                && (Arc::ptr_eq(&i.security, security) || *i.security == **security)
                && same(i.rbac.as_ref(), rbac)
        });
        if unchanged {
            return;
        }
        let combined = InboundSecurity::clone(security).with_rbac(rbac.map(|r| &**r));
        self.inbound = match sidecar_inbound_resources(params, protocol, &combined) {
            Ok((listener, cluster)) => Some(Inbound {
                protocol,
                security: Arc::clone(security),
                rbac: rbac.cloned(),
                listener,
                cluster,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the sidecar's inbound listener");
                None
            }
        };
    }

    fn inbound_listener(&self) -> Option<&Arc<XdsResource>> {
        self.inbound.as_ref().map(|i| &i.listener)
    }

    /// A sidecar's own inbound cluster (a plan compares it beside the mesh's clusters).
    pub(crate) fn inbound_cluster(&self) -> Option<&Arc<XdsResource>> {
        self.inbound.as_ref().map(|i| &i.cluster)
    }
}

impl Resources for NodeView {
    fn revision(&self) -> i64 {
        self.snapshot.revision
    }

    fn get(&self, t: ResourceType, name: &str) -> Option<&Arc<XdsResource>> {
        let r = &self.snapshot.resources;
        match t {
            ResourceType::Listener => {
                if let Some(l) = self.inbound_listener().filter(|l| l.name == name) {
                    return Some(l);
                }
                // Any client may ask for a host-named (proxyless) listener by name; the
                // sidecar and gateway listeners only go to their own kind of node, and an
                // xDS-enabled gRPC server's to proxyless nodes.
                if names::is_proxyless_listener(name) {
                    return r.listeners.get(name);
                }
                if names::is_server_listener(name) {
                    return match self.role {
                        NodeRole::Proxyless => r.server_listeners.get(name),
                        _ => None,
                    };
                }
                self.role_listeners().find(|l| l.name == name)
            }
            ResourceType::Cluster => self
                .inbound_cluster()
                .filter(|c| c.name == name)
                .or_else(|| self.clusters().get(name)),
            ResourceType::RouteConfiguration => r.route_configurations.get(name),
            ResourceType::ClusterLoadAssignment => r.load_assignments.get(name),
            ResourceType::Secret => self.secret(name),
        }
    }

    fn wildcard(&self, t: ResourceType) -> Box<dyn Iterator<Item = &Arc<XdsResource>> + '_> {
        let r = &self.snapshot.resources;
        match t {
            ResourceType::Listener => {
                Box::new(self.role_listeners().chain(self.inbound_listener()))
            }
            ResourceType::Cluster => {
                Box::new(self.clusters().values().chain(self.inbound_cluster()))
            }
            ResourceType::RouteConfiguration => Box::new(r.route_configurations.values()),
            ResourceType::ClusterLoadAssignment => Box::new(r.load_assignments.values()),
            ResourceType::Secret => Box::new(
                [ROOTCA, DEFAULT]
                    .into_iter()
                    .filter_map(|name| self.secret(name))
                    .chain(
                        self.gateway_certificate_names()
                            .filter_map(|c| self.snapshot.certificates.0.get(c)),
                    ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use switchboard_model::spec::MtlsMode;
    use switchboard_model::{MeshSpec, ServiceSpec, TrustBundle};
    use switchboard_translator::{MeshConfig, SidecarParams, translate};

    fn snapshot(services: &[&str]) -> Arc<MeshSnapshot> {
        snapshot_with(services, |_| {})
    }

    /// A snapshot of `services`, with `tweak` applied to the configuration first.
    fn snapshot_with(services: &[&str], tweak: impl FnOnce(&mut MeshConfig)) -> Arc<MeshSnapshot> {
        let mut config = snapshot_config(services);
        tweak(&mut config);
        Arc::new(MeshSnapshot::new(&config, translate(&config), None))
    }

    fn snapshot_config(services: &[&str]) -> MeshConfig {
        MeshConfig {
            tenant: "acme".to_owned(),
            mesh: "prod".to_owned(),
            revision: 3,
            spec: MeshSpec::default(),
            services: services
                .iter()
                .map(|s| {
                    let spec: ServiceSpec =
                        serde_json::from_value(serde_json::json!({"port": 8080})).unwrap();
                    ((*s).to_owned(), spec)
                })
                .collect(),
            endpoints: BTreeMap::new(),
            routes: BTreeMap::new(),
            gateways: BTreeMap::new(),
            ..Default::default()
        }
    }

    fn names_of<'a>(it: impl Iterator<Item = &'a Arc<XdsResource>>) -> Vec<String> {
        let mut v: Vec<_> = it.map(|r| r.name.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn sidecars_get_their_inbound_side() {
        let role = NodeRole::Sidecar(SidecarParams {
            service: "pay".to_owned(),
            inbound_port: 15006,
            app_port: 8080,
            outbound_port: 15001,
        });
        let mut view = NodeView::new(snapshot(&[]), role);
        assert!(view.inbound.is_none(), "no service, no inbound side");
        view.update(snapshot(&["pay"]));
        let listeners = names_of(view.wildcard(ResourceType::Listener));
        assert!(
            listeners.contains(&names::INBOUND.to_owned()),
            "{listeners:?}"
        );
        let clusters = names_of(view.wildcard(ResourceType::Cluster));
        assert!(clusters.contains(&"pay".to_owned()));
        assert!(
            clusters.contains(&names::inbound_cluster(8080)),
            "{clusters:?}"
        );
        assert!(
            view.get(ResourceType::Cluster, &names::inbound_cluster(8080))
                .is_some()
        );
        assert!(view.get(ResourceType::Secret, "default").is_none());
    }

    fn with_ca(snapshot: &MeshSnapshot, gateways: &[&str], mode: MtlsMode) -> Arc<MeshSnapshot> {
        let mut config = MeshConfig {
            tenant: snapshot.tenant.clone(),
            mesh: snapshot.mesh.clone(),
            revision: snapshot.revision,
            trust_domain: "mesh.local".to_owned(),
            trust: switchboard_model::TrustBundle {
                signer_id: "ca-1".to_owned(),
                roots_pem: vec!["ROOT".to_owned()],
            },
            ..Default::default()
        };
        config.spec.mtls.mode = mode;
        for s in snapshot.service_protocols.keys() {
            let spec: ServiceSpec =
                serde_json::from_value(serde_json::json!({"port": 8080})).unwrap();
            config.services.insert(s.clone(), spec);
        }
        for g in gateways {
            let spec = serde_json::from_value(serde_json::json!({"port": 8443})).unwrap();
            config.gateways.insert((*g).to_owned(), spec);
        }
        Arc::new(MeshSnapshot::new(&config, translate(&config), None))
    }

    fn sidecar(service: &str) -> NodeRole {
        NodeRole::Sidecar(SidecarParams {
            service: service.to_owned(),
            inbound_port: 15006,
            app_port: 8080,
            outbound_port: 15001,
        })
    }

    fn certificate(spiffe_id: &str) -> Arc<NodeSecret> {
        let cert = crate::sds::IssuedCertificate {
            chain_pem: "CHAIN".to_owned(),
            private_key_pem: zeroize::Zeroizing::new("KEY".to_owned()),
            serial: "01".to_owned(),
            not_after: std::time::SystemTime::UNIX_EPOCH,
            signer_id: "ca-1".to_owned(),
        };
        Arc::new(crate::sds::secrets::node_secret(spiffe_id, &cert))
    }

    #[test]
    fn secrets_go_only_to_authenticated_nodes_of_their_identity() {
        let mesh = with_ca(&snapshot(&["pay"]), &["edge"], MtlsMode::Permissive);
        let pay = "spiffe://acme.mesh.local/mesh/prod/service/pay";
        // Anonymous: nothing, not even ROOTCA.
        let mut anonymous = NodeView::new(Arc::clone(&mesh), sidecar("pay"));
        assert_eq!(anonymous.identity(), None);
        anonymous.set_certificate(Some(certificate(pay)));
        assert!(anonymous.get(ResourceType::Secret, ROOTCA).is_none());
        assert!(anonymous.get(ResourceType::Secret, DEFAULT).is_none());
        assert_eq!(anonymous.wildcard(ResourceType::Secret).count(), 0);
        // A sidecar of pay: ROOTCA, and its own certificate only.
        let mut view = NodeView::new(Arc::clone(&mesh), sidecar("pay")).with_secrets();
        assert_eq!(view.identity().as_deref(), Some(pay));
        assert!(view.get(ResourceType::Secret, ROOTCA).is_some());
        assert!(view.get(ResourceType::Secret, DEFAULT).is_none());
        view.set_certificate(Some(certificate(
            "spiffe://acme.mesh.local/mesh/prod/service/other",
        )));
        assert!(view.certificate().is_none(), "another identity is refused");
        view.set_certificate(Some(certificate(pay)));
        assert_eq!(
            names_of(view.wildcard(ResourceType::Secret)),
            [ROOTCA, DEFAULT]
        );
        // The service goes away: no more `default`.
        view.update(with_ca(&snapshot(&[]), &[], MtlsMode::Permissive));
        assert_eq!(view.identity(), None);
        assert!(view.get(ResourceType::Secret, DEFAULT).is_none());
        // A sidecar of a service that does not exist, a proxyless client: no identity.
        let ghost = NodeView::new(Arc::clone(&mesh), sidecar("ghost")).with_secrets();
        assert_eq!(ghost.identity(), None);
        let proxyless = NodeView::new(Arc::clone(&mesh), NodeRole::Proxyless).with_secrets();
        assert_eq!(proxyless.identity(), None);
        assert!(proxyless.get(ResourceType::Secret, ROOTCA).is_some());
        // A gateway that exists is named in the service segment.
        let gw = |name: &str| {
            NodeView::new(
                Arc::clone(&mesh),
                NodeRole::Gateway {
                    name: name.to_owned(),
                },
            )
            .with_secrets()
        };
        assert_eq!(
            gw("edge").identity().as_deref(),
            Some("spiffe://acme.mesh.local/mesh/prod/service/edge")
        );
        assert_eq!(gw("nope").identity(), None);
        // mTLS off: no workload certificate.
        let off = with_ca(&snapshot(&["pay"]), &[], MtlsMode::Off);
        assert_eq!(
            NodeView::new(off, sidecar("pay")).with_secrets().identity(),
            None
        );
        // No CA yet: no ROOTCA.
        let bare = NodeView::new(snapshot(&["pay"]), sidecar("pay")).with_secrets();
        assert!(bare.get(ResourceType::Secret, ROOTCA).is_none());
    }

    /// The inbound listener carries the service's RBAC filters, and is rebuilt when they change.
    #[test]
    fn a_sidecars_inbound_listener_enforces_its_services_policies() {
        use switchboard_xds_proto::pb::envoy::config::listener::v3::{Listener, filter};
        use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
        let http_filters = |view: &NodeView| {
            let l = view.get(ResourceType::Listener, names::INBOUND).unwrap();
            let l: Listener = l.decode().unwrap();
            let Some(filter::ConfigType::TypedConfig(any)) =
                l.filter_chains[0].filters[0].config_type.clone()
            else {
                panic!("no HCM");
            };
            let hcm: HttpConnectionManager = switchboard_xds_proto::unpack(&any).unwrap();
            hcm.http_filters
                .into_iter()
                .map(|f| f.name)
                .collect::<Vec<_>>()
        };
        let with_policy = |action: &str| {
            let mut config = snapshot_config(&["pay", "web"]);
            config.authorization_policies.insert(
                "p".to_owned(),
                serde_json::from_value(serde_json::json!(
                    {"service": "pay", "action": action, "from": [{"services": ["web"]}]}
                ))
                .unwrap(),
            );
            Arc::new(MeshSnapshot::new(&config, translate(&config), None))
        };
        let role = NodeRole::Sidecar(SidecarParams {
            service: "pay".to_owned(),
            inbound_port: 15006,
            app_port: 8080,
            outbound_port: 15001,
        });
        let mut view = NodeView::new(snapshot(&["pay", "web"]), role);
        assert_eq!(http_filters(&view), [names::ROUTER_FILTER]);
        let plain = view.inbound_listener().unwrap().version.clone();
        view.update(with_policy("deny"));
        assert_eq!(
            http_filters(&view),
            [names::RBAC_HTTP_FILTER, names::ROUTER_FILTER]
        );
        let denying = view.inbound_listener().unwrap().version.clone();
        assert_ne!(denying, plain);
        view.update(with_policy("allow"));
        assert_ne!(view.inbound_listener().unwrap().version, denying);
        view.update(snapshot(&["pay", "web"]));
        assert_eq!(view.inbound_listener().unwrap().version, plain);
    }

    #[test]
    fn proxyless_clients_see_host_named_listeners_only() {
        let view = NodeView::new(snapshot(&["pay"]), NodeRole::Proxyless);
        let listeners = names_of(view.wildcard(ResourceType::Listener));
        assert!(
            listeners.iter().all(|l| names::is_proxyless_listener(l)),
            "{listeners:?}"
        );
        assert!(view.get(ResourceType::Listener, names::OUTBOUND).is_none());
        assert!(view.get(ResourceType::Listener, "pay:8080").is_some());
        assert_eq!(view.revision(), 3);
    }

    #[test]
    fn a_sidecar_may_move_its_outbound_listener() {
        use switchboard_xds_proto::pb::envoy::config::core::v3::{address, socket_address};
        use switchboard_xds_proto::pb::envoy::config::listener::v3::Listener;
        let port_of = |r: &XdsResource| {
            let l: Listener = r.decode().unwrap();
            let Some(address::Address::SocketAddress(sa)) = l.address.unwrap().address else {
                panic!("no socket address");
            };
            let Some(socket_address::PortSpecifier::PortValue(p)) = sa.port_specifier else {
                panic!("no port");
            };
            (sa.address, p)
        };
        let role = |outbound_port| {
            NodeRole::Sidecar(SidecarParams {
                service: "pay".to_owned(),
                inbound_port: 15006,
                app_port: 8080,
                outbound_port,
            })
        };
        let default = NodeView::new(snapshot(&["pay"]), role(15001));
        let moved = NodeView::new(snapshot(&["pay"]), role(25001));
        let shared = default
            .get(ResourceType::Listener, names::OUTBOUND)
            .unwrap();
        let own = moved.get(ResourceType::Listener, names::OUTBOUND).unwrap();
        assert_eq!(port_of(shared), ("127.0.0.1".to_owned(), 15001));
        assert_eq!(port_of(own), ("127.0.0.1".to_owned(), 25001));
        assert_ne!(shared.version, own.version);
        let wildcard: Vec<_> = moved
            .wildcard(ResourceType::Listener)
            .filter(|l| l.name == names::OUTBOUND)
            .map(|l| port_of(l).1)
            .collect();
        assert_eq!(wildcard, [25001]);
    }

    /// A mesh with a CA, in mTLS mode `mode`.
    fn mtls(mode: MtlsMode) -> impl FnOnce(&mut MeshConfig) {
        move |config| {
            config.spec.mtls.mode = mode;
            config.trust_domain = "example.org".to_owned();
            config.trust = TrustBundle {
                signer_id: "ca-1".to_owned(),
                roots_pem: vec!["root".to_owned()],
            };
        }
    }

    #[test]
    fn proxies_get_mtls_clusters_and_proxyless_clients_plain_ones() {
        let snap = snapshot_with(&["pay"], mtls(MtlsMode::Strict));
        let r = &snap.resources;
        assert_ne!(r.clusters["pay"].version, r.proxy_clusters["pay"].version);
        let gateway = NodeRole::Gateway {
            name: "edge".to_owned(),
        };
        for (role, want) in [
            (NodeRole::Proxyless, &r.clusters["pay"]),
            (sidecar("pay"), &r.proxy_clusters["pay"]),
            (gateway, &r.proxy_clusters["pay"]),
        ] {
            let view = NodeView::new(Arc::clone(&snap), role.clone());
            let got = view.get(ResourceType::Cluster, "pay").unwrap();
            assert!(Arc::ptr_eq(got, want), "{role:?}");
            let all: Vec<_> = view
                .wildcard(ResourceType::Cluster)
                .filter(|c| c.name == "pay")
                .collect();
            assert_eq!(all.len(), 1);
            assert!(Arc::ptr_eq(all[0], want), "{role:?}");
        }
    }

    #[test]
    fn the_inbound_side_follows_the_services_security() {
        use switchboard_xds_proto::pb::envoy::config::listener::v3::Listener;
        let chains = |view: &NodeView| {
            let l: Listener = view
                .get(ResourceType::Listener, names::INBOUND)
                .unwrap()
                .decode()
                .unwrap();
            l.filter_chains
                .iter()
                .map(|c| c.transport_socket.is_some())
                .collect::<Vec<_>>()
        };
        let mut view = NodeView::new(snapshot(&["pay"]), sidecar("pay"));
        assert_eq!(chains(&view), [false], "permissive without a CA: plaintext");

        view.update(snapshot_with(&["pay"], mtls(MtlsMode::Permissive)));
        assert_eq!(chains(&view), [true, false], "TLS and plaintext chains");
        let before = Arc::clone(view.get(ResourceType::Listener, names::INBOUND).unwrap());
        // A new snapshot with the same security keeps the node's resources.
        view.update(snapshot_with(&["pay"], mtls(MtlsMode::Permissive)));
        let same = view.get(ResourceType::Listener, names::INBOUND).unwrap();
        assert!(Arc::ptr_eq(&before, same));

        view.update(snapshot_with(&["pay"], mtls(MtlsMode::Strict)));
        assert_eq!(chains(&view), [true]);
        view.update(snapshot_with(&["pay"], mtls(MtlsMode::Off)));
        assert_eq!(chains(&view), [false]);
    }

    /// gRFC A29/A36: proxyless nodes declaring certificate providers get the mTLS clusters;
    /// server listeners go to proxyless nodes only.
    #[test]
    fn proxyless_nodes_with_certificate_providers_get_mtls() {
        let snap = snapshot_with(&[], |config| {
            mtls(MtlsMode::Strict)(config);
            let grpc: ServiceSpec =
                serde_json::from_value(serde_json::json!({"port": 50051, "protocol": "grpc"}))
                    .unwrap();
            config.services.insert("greeter".to_owned(), grpc);
            config.endpoints.insert(
                "greeter-1".to_owned(),
                serde_json::from_value(serde_json::json!(
                    {"service": "greeter", "address": "10.0.0.7", "mtls": true}
                ))
                .unwrap(),
            );
        });
        let r = &snap.resources;
        let plain = NodeView::new(Arc::clone(&snap), NodeRole::Proxyless);
        let secure =
            NodeView::new(Arc::clone(&snap), NodeRole::Proxyless).with_certificate_providers(true);
        let got = |v: &NodeView| Arc::clone(v.get(ResourceType::Cluster, "greeter").unwrap());
        assert!(Arc::ptr_eq(&got(&plain), &r.clusters["greeter"]));
        assert!(Arc::ptr_eq(
            &got(&secure),
            &r.proxyless_mtls_clusters["greeter"]
        ));
        assert_ne!(got(&plain).version, got(&secure).version);
        let all: Vec<_> = secure.wildcard(ResourceType::Cluster).collect();
        assert!(Arc::ptr_eq(all[0], &r.proxyless_mtls_clusters["greeter"]));
        // Providers do not change what a sidecar gets.
        let side =
            NodeView::new(Arc::clone(&snap), sidecar("greeter")).with_certificate_providers(true);
        assert!(Arc::ptr_eq(&got(&side), &r.proxy_clusters["greeter"]));

        let server = "grpc/server?xds.resource.listening_address=10.0.0.7:50051";
        assert!(plain.get(ResourceType::Listener, server).is_some());
        assert!(side.get(ResourceType::Listener, server).is_none());
        assert!(
            plain
                .get(
                    ResourceType::Listener,
                    "grpc/server?xds.resource.listening_address=10.0.0.8:1"
                )
                .is_none()
        );
    }
}
