//! What one node may see of its mesh's snapshot: the mesh-wide resources, the listeners of
//! its role, and its own per-node resources (a sidecar's inbound listener and cluster).

use std::sync::Arc;

use switchboard_model::spec::Protocol;
use switchboard_translator::{
    InboundRbac, InboundSecurity, NodeRole, XdsResource, names, sidecar_inbound_resources,
};
use switchboard_xds_proto::ResourceType;

use crate::protocol::Resources;
use crate::snapshot::MeshSnapshot;

/// What a sidecar's inbound side is built from: its service's protocol and RBAC filters.
type InboundInputs = (Protocol, Option<Arc<InboundRbac>>);

/// A node's view of a mesh snapshot. Holds the snapshot by `Arc`; the per-node resources are
/// two small resources rebuilt only when the sidecar's service changes protocol or
/// authorization.
#[derive(Debug, Clone)]
pub struct NodeView {
    snapshot: Arc<MeshSnapshot>,
    role: NodeRole,
    /// A sidecar's inbound listener and cluster, and what they were built for.
    inbound: Option<(InboundInputs, Arc<XdsResource>, Arc<XdsResource>)>,
    /// A sidecar's outbound listener when it asked for a port other than 15001: a copy of
    /// the mesh's, rebuilt when the mesh's changes (compared by version).
    outbound: Option<(String, Arc<XdsResource>)>,
}

impl NodeView {
    pub fn new(snapshot: Arc<MeshSnapshot>, role: NodeRole) -> Self {
        let mut view = Self {
            snapshot,
            role,
            inbound: None,
            outbound: None,
        };
        view.refresh_inbound();
        view.refresh_outbound();
        view
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
        let Some(protocol) = self
            .snapshot
            .service_protocols
            .get(&params.service)
            .copied()
        else {
            // The service does not exist (yet): no inbound side until it does.
            self.inbound = None;
            return;
        };
        let rbac = self.snapshot.resources.inbound_rbac.get(&params.service);
        let inputs = (protocol, rbac.cloned());
        if matches!(&self.inbound, Some((i, _, _)) if *i == inputs) {
            return;
        }
        let security = InboundSecurity::default().with_rbac(rbac.map(|r| &**r));
        self.inbound = match sidecar_inbound_resources(params, protocol, &security) {
            Ok((listener, cluster)) => Some((inputs, listener, cluster)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the sidecar's inbound listener");
                None
            }
        };
    }

    fn inbound_listener(&self) -> Option<&Arc<XdsResource>> {
        self.inbound.as_ref().map(|(_, l, _)| l)
    }

    fn inbound_cluster(&self) -> Option<&Arc<XdsResource>> {
        self.inbound.as_ref().map(|(_, _, c)| c)
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
                // sidecar and gateway listeners only go to their own kind of node.
                if names::is_proxyless_listener(name) {
                    return r.listeners.get(name);
                }
                self.role_listeners().find(|l| l.name == name)
            }
            ResourceType::Cluster => self
                .inbound_cluster()
                .filter(|c| c.name == name)
                .or_else(|| r.clusters.get(name)),
            ResourceType::RouteConfiguration => r.route_configurations.get(name),
            ResourceType::ClusterLoadAssignment => r.load_assignments.get(name),
            // Secrets (SDS) are not served yet.
            ResourceType::Secret => None,
        }
    }

    fn wildcard(&self, t: ResourceType) -> Box<dyn Iterator<Item = &Arc<XdsResource>> + '_> {
        let r = &self.snapshot.resources;
        match t {
            ResourceType::Listener => {
                Box::new(self.role_listeners().chain(self.inbound_listener()))
            }
            ResourceType::Cluster => Box::new(r.clusters.values().chain(self.inbound_cluster())),
            ResourceType::RouteConfiguration => Box::new(r.route_configurations.values()),
            ResourceType::ClusterLoadAssignment => Box::new(r.load_assignments.values()),
            ResourceType::Secret => Box::new(std::iter::empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use switchboard_model::{MeshSpec, ServiceSpec};
    use switchboard_translator::{MeshConfig, SidecarParams, translate};

    fn snapshot(services: &[&str]) -> Arc<MeshSnapshot> {
        let config = snapshot_config(services);
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

    /// The inbound listener carries the service's RBAC filters, and is rebuilt when they change.
    #[test]
    fn a_sidecars_inbound_listener_enforces_its_services_policies() {
        use switchboard_xds_proto::pb::envoy::config::listener::v3::{Listener, filter};
        use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
        let http_filters = |view: &NodeView| {
            let l = view.get(ResourceType::Listener, names::INBOUND).unwrap();
            let l: Listener = switchboard_xds_proto::unpack(&l.resource).unwrap();
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
            let l: Listener = switchboard_xds_proto::unpack(&r.resource).unwrap();
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
}
