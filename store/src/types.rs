use switchboard_model::Kind;

/// Where a resource lives. Meshes themselves have `mesh == ""`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    pub tenant: String,
    pub mesh: String,
    pub kind: Kind,
    pub name: String,
}

impl ResourceKey {
    pub fn mesh(tenant: &str, name: &str) -> Self {
        Self {
            tenant: tenant.into(),
            mesh: String::new(),
            kind: Kind::Mesh,
            name: name.into(),
        }
    }
    pub fn new(tenant: &str, mesh: &str, kind: Kind, name: &str) -> Self {
        if kind == Kind::Mesh {
            return Self::mesh(tenant, name);
        }
        Self {
            tenant: tenant.into(),
            mesh: mesh.into(),
            kind,
            name: name.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub key: ResourceKey,
    /// Canonical JSON of the spec.
    pub spec: serde_json::Value,
    /// Its labels (a put replaces them).
    pub labels: switchboard_model::Labels,
    /// The tenant revision of the last write to this resource.
    pub revision: i64,
    pub create_time: i64,
    pub update_time: i64,
}

impl StoredResource {
    /// A strong etag; revisions are unique per write within a tenant.
    pub fn etag(&self) -> String {
        etag(self.revision)
    }
}

pub(crate) fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub spec: serde_json::Value,
    pub revision: i64,
    pub create_time: i64,
    pub update_time: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Put,
    Delete,
}

impl ChangeOp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Put => "put",
            ChangeOp::Delete => "delete",
        }
    }
}

/// One entry of the change log: what revision `revision` did.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub revision: i64,
    pub mesh: String,
    pub kind: Kind,
    pub name: String,
    pub op: ChangeOp,
    pub time: i64,
}

/// Everything in one mesh at one revision, read in one consistent transaction.
#[derive(Debug, Clone)]
pub struct MeshSnapshot {
    pub tenant: String,
    pub mesh: StoredResource,
    pub revision: i64,
    pub resources: Vec<StoredResource>,
    /// The mesh's trust bundle at the same revision (empty before the mesh has a CA).
    pub trust: switchboard_model::TrustBundle,
}
