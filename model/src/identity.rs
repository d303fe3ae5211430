//! Workload identities and the mesh trust bundle, shared by the control plane (which issues
//! certificates and writes SAN matchers) and the translator (which only reads them).
//!
//! A workload's identity is the SPIFFE ID `spiffe://{tenant}.{trust domain}/mesh/{mesh}/service/{service}`:
//! the tenant is part of the trust domain, so two tenants never share an identity even when
//! their meshes and services have the same names.

use serde::{Deserialize, Serialize};

/// The SPIFFE ID of `service` in `mesh` of `tenant`.
pub fn spiffe_id(tenant: &str, trust_domain: &str, mesh: &str, service: &str) -> String {
    format!("spiffe://{tenant}.{trust_domain}/mesh/{mesh}/service/{service}")
}

/// The prefix every identity of `mesh` starts with (for "any workload of the mesh").
pub fn mesh_identity_prefix(tenant: &str, trust_domain: &str, mesh: &str) -> String {
    format!("spiffe://{tenant}.{trust_domain}/mesh/{mesh}/service/")
}

/// The parts of a workload SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadId {
    pub tenant: String,
    pub trust_domain: String,
    pub mesh: String,
    pub service: String,
}

impl WorkloadId {
    /// Parses `spiffe://{tenant}.{trust domain}/mesh/{mesh}/service/{service}`; `None` for
    /// anything else (another shape, an empty part, a query or fragment).
    pub fn parse(uri: &str) -> Option<WorkloadId> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (authority, path) = rest.split_once('/')?;
        let (tenant, trust_domain) = authority.split_once('.')?;
        let mut parts = path.split('/');
        let (Some("mesh"), Some(mesh), Some("service"), Some(service), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let ok = |s: &str| !s.is_empty() && !s.contains(['?', '#']);
        if ![tenant, trust_domain, mesh, service].into_iter().all(ok) {
            return None;
        }
        Some(WorkloadId {
            tenant: tenant.to_owned(),
            trust_domain: trust_domain.to_owned(),
            mesh: mesh.to_owned(),
            service: service.to_owned(),
        })
    }

    pub fn to_uri(&self) -> String {
        spiffe_id(&self.tenant, &self.trust_domain, &self.mesh, &self.service)
    }
}

/// The public half of a mesh's CA state, as the translator and every stream see it: which
/// roots proxies must trust (`ROOTCA`), and which CA signs new workload certificates. No
/// private key is ever part of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundle {
    /// Identifies the CA that currently signs (changes when a rotation switches signers, so
    /// that certificates of the old signer are re-issued).
    pub signer_id: String,
    /// PEM certificates of every root trusted now: one, or two during a rotation's overlap.
    pub roots_pem: Vec<String>,
}

impl TrustBundle {
    /// No CA yet (a mesh read before its CA was created).
    pub fn is_empty(&self) -> bool {
        self.roots_pem.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = spiffe_id("acme", "mesh.local", "prod", "pay");
        assert_eq!(id, "spiffe://acme.mesh.local/mesh/prod/service/pay");
        let parsed = WorkloadId::parse(&id).unwrap();
        assert_eq!(parsed.tenant, "acme");
        assert_eq!(parsed.trust_domain, "mesh.local");
        assert_eq!(parsed.mesh, "prod");
        assert_eq!(parsed.service, "pay");
        assert_eq!(parsed.to_uri(), id);
        assert!(id.starts_with(&mesh_identity_prefix("acme", "mesh.local", "prod")));
    }

    #[test]
    fn other_shapes_are_not_workload_ids() {
        for bad in [
            "https://acme.mesh.local/mesh/prod/service/pay",
            "spiffe://acme/mesh/prod/service/pay",
            "spiffe://acme.mesh.local/mesh/prod/service/",
            "spiffe://acme.mesh.local/mesh/prod/service/pay/extra",
            "spiffe://acme.mesh.local/ns/prod/sa/pay",
            "spiffe://acme.mesh.local/mesh/prod/service/pay?x",
        ] {
            assert!(WorkloadId::parse(bad).is_none(), "{bad}");
        }
    }
}
