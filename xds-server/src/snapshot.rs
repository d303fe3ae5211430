//! A mesh's xDS resources at one revision, shared by every stream of the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use switchboard_model::identity::TrustBundle;
use switchboard_model::spec::Protocol;
use switchboard_model::{Kind, MeshSpec, Spec};
use switchboard_translator::{MeshConfig, MeshResources, XdsResource};

/// One mesh's resources, built from the store at `revision`. Streams hold it in an `Arc` and
/// point into it; nothing in it is copied per stream.
#[derive(Debug)]
pub struct MeshSnapshot {
    pub tenant: String,
    pub mesh: String,
    /// The tenant revision the mesh was read at.
    pub revision: i64,
    pub spec: MeshSpec,
    pub resources: MeshResources,
    /// The protocol of every service, for the per-node resources of sidecars.
    pub service_protocols: BTreeMap<String, Protocol>,
    /// The mesh's gateways (a gateway's certificate names it).
    pub gateways: BTreeSet<String>,
    /// The trust domain of workload identities.
    pub trust_domain: String,
    /// The CA that signs workload certificates now (`TrustBundle::signer_id`).
    pub signer_id: String,
    /// The roots trusted now (client certificates on the xDS port chain to one of them).
    pub trust: TrustBundle,
    /// The `ROOTCA` secret, built once per snapshot; `None` before the mesh has a CA.
    pub root_ca: Option<Arc<XdsResource>>,
    /// Gateway name → the uploaded certificates it names (what it may receive over SDS).
    pub gateway_certificates: BTreeMap<String, BTreeSet<String>>,
    /// The `certificate/{name}` secrets (with their keys) by certificate name, for the
    /// certificates gateways name; filled in by the rebuild through the CA port
    /// ([`crate::sds::certificates::open`]), empty without one. `Debug` shows names only.
    pub certificates: Certificates,
    /// When the first commit this snapshot reflects was made, by the committing replica's
    /// wall clock (the change log's `time`; the notice's arrival when the log cannot say);
    /// `None` for a snapshot loaded for a first stream. The start of the convergence time.
    /// A wall clock, not an `Instant`, because the commit may come from another replica:
    /// the skew between their clocks adds to (or, clamped at zero, hides) convergence.
    pub committed_at: Option<SystemTime>,
    /// When the snapshot was built.
    pub built_at: Instant,
    /// The build's span (parent of the streams' push spans) and their budget.
    pub trace: crate::push_trace::BuildTrace,
}

impl MeshSnapshot {
    pub fn new(
        config: &MeshConfig,
        resources: MeshResources,
        committed_at: Option<SystemTime>,
    ) -> Self {
        Self {
            tenant: config.tenant.clone(),
            mesh: config.mesh.clone(),
            revision: config.revision,
            spec: config.spec.clone(),
            resources,
            service_protocols: config
                .services
                .iter()
                .map(|(name, s)| (name.clone(), s.protocol))
                .collect(),
            gateways: config.gateways.keys().cloned().collect(),
            trust_domain: config.trust_domain.clone(),
            signer_id: config.trust.signer_id.clone(),
            trust: config.trust.clone(),
            root_ca: crate::sds::secrets::root_ca(&config.trust),
            gateway_certificates: crate::sds::certificates::by_gateway(config),
            certificates: Certificates::default(),
            committed_at,
            built_at: Instant::now(),
            trace: Default::default(),
        }
    }
}

/// Uploaded certificates' secrets by certificate name. `Debug` lists the names only.
#[derive(Clone, Default)]
pub struct Certificates(pub BTreeMap<String, Arc<XdsResource>>);

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Turns what the store holds into the translator's input. A spec the store holds but the
/// model cannot parse (written by a newer version, or corrupt) is left out with a warning,
/// so the rest of the mesh is still served. `trust_domain` is the server's (configuration).
pub fn mesh_config(
    stored: &switchboard_store::MeshSnapshot,
    trust_domain: &str,
) -> (MeshConfig, Vec<String>) {
    let mut warnings = Vec::new();
    let mut config = MeshConfig {
        tenant: stored.tenant.clone(),
        mesh: stored.mesh.key.name.clone(),
        revision: stored.revision,
        trust: stored.trust.clone(),
        trust_domain: trust_domain.to_owned(),
        ..Default::default()
    };
    match Spec::parse(Kind::Mesh, stored.mesh.spec.clone()) {
        Ok(Spec::Mesh(spec)) => config.spec = spec,
        Ok(_) => {}
        Err(e) => warnings.push(format!("mesh {}: {e}", config.mesh)),
    }
    for r in &stored.resources {
        let name = r.key.name.clone();
        match Spec::parse(r.key.kind, r.spec.clone()) {
            Ok(Spec::Service(s)) => {
                config.services.insert(name, s);
            }
            Ok(Spec::Endpoint(s)) => {
                config.endpoints.insert(name, s);
            }
            Ok(Spec::Route(s)) => {
                config.routes.insert(name, s);
            }
            Ok(Spec::Gateway(s)) => {
                config.gateways.insert(name, s);
            }
            Ok(Spec::AuthorizationPolicy(s)) => {
                config.authorization_policies.insert(name, s);
            }
            Ok(Spec::Certificate(s)) => {
                config.certificates.insert(name, *s);
            }
            Ok(Spec::Mesh(_)) => {}
            Err(e) => warnings.push(format!("{} {name}: {e}", r.key.kind)),
        }
    }
    (config, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchboard_store::{ResourceKey, StoredResource};

    fn stored(kind: Kind, name: &str, spec: serde_json::Value) -> StoredResource {
        StoredResource {
            key: ResourceKey::new("acme", "prod", kind, name),
            spec,
            labels: Default::default(),
            revision: 1,
            create_time: 0,
            update_time: 0,
        }
    }

    #[test]
    fn builds_the_translator_input() {
        let snap = switchboard_store::MeshSnapshot {
            tenant: "acme".to_owned(),
            mesh: stored(Kind::Mesh, "prod", json!({"allowUnauthenticatedXds": true})),
            revision: 7,
            resources: vec![
                stored(
                    Kind::Service,
                    "pay",
                    json!({"port": 80, "protocol": "grpc"}),
                ),
                stored(
                    Kind::Endpoint,
                    "pay-1",
                    json!({"service": "pay", "address": "10.0.0.1"}),
                ),
                stored(Kind::Service, "broken", json!({"port": "eighty"})),
                stored(
                    Kind::AuthorizationPolicy,
                    "only-web",
                    json!({"service": "pay", "action": "allow", "from": [{"services": ["web"]}]}),
                ),
            ],
            trust: Default::default(),
        };
        let (config, warnings) = mesh_config(&snap, "mesh.local");
        assert_eq!(config.tenant, "acme");
        assert_eq!(config.trust_domain, "mesh.local");
        assert_eq!(config.mesh, "prod");
        assert_eq!(config.revision, 7);
        assert!(config.spec.allow_unauthenticated_xds);
        assert_eq!(config.services.len(), 1);
        assert_eq!(config.endpoints.len(), 1);
        assert_eq!(config.authorization_policies["only-web"].service, "pay");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("broken"));
        let resources = switchboard_translator::translate(&config);
        let snapshot = MeshSnapshot::new(&config, resources, None);
        assert_eq!(snapshot.service_protocols.get("pay"), Some(&Protocol::Grpc));
        assert!(snapshot.resources.clusters.contains_key("pay"));
        assert!(snapshot.root_ca.is_none(), "no CA yet, no ROOTCA");
        assert_eq!(snapshot.trust_domain, "mesh.local");
        assert!(snapshot.resources.inbound_rbac.contains_key("pay"));
    }
}
