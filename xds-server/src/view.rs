//! What one node may see of its mesh's snapshot: the mesh-wide resources, the listeners of
//! its role, and its own per-node resources (a sidecar's inbound listener and cluster).

use std::sync::Arc;

use switchboard_model::spec::Protocol;
use switchboard_translator::{
    InboundSecurity, NodeRole, XdsResource, names, sidecar_inbound_resources,
};
use switchboard_xds_proto::ResourceType;

use crate::protocol::Resources;
use crate::snapshot::MeshSnapshot;

/// A node's view of a mesh snapshot. Holds the snapshot by `Arc`; the per-node resources are
/// two small resources rebuilt only when the sidecar's service changes protocol.
#[derive(Debug, Clone)]
pub struct NodeView {
    snapshot: Arc<MeshSnapshot>,
    role: NodeRole,
    /// A sidecar's inbound listener and cluster, and the protocol they were built for.
    inbound: Option<(Protocol, Arc<XdsResource>, Arc<XdsResource>)>,
}

impl NodeView {
    pub fn new(snapshot: Arc<MeshSnapshot>, role: NodeRole) -> Self {
        let mut view = Self {
            snapshot,
            role,
            inbound: None,
        };
        view.refresh_inbound();
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
        if matches!(&self.inbound, Some((p, _, _)) if *p == protocol) {
            return;
        }
        self.inbound =
            match sidecar_inbound_resources(params, protocol, &InboundSecurity::default()) {
                Ok((listener, cluster)) => Some((protocol, listener, cluster)),
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
                r.listeners_for(&self.role).find(|l| l.name == name)
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
                Box::new(r.listeners_for(&self.role).chain(self.inbound_listener()))
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
        let config = MeshConfig {
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
        };
        Arc::new(MeshSnapshot::new(&config, translate(&config), None))
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
}
