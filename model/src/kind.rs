//! The kinds of mesh resource, and how each appears in a REST path.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Mesh,
    Service,
    Endpoint,
    Route,
    Gateway,
    #[serde(rename = "authorization-policy")]
    AuthorizationPolicy,
    Certificate,
}

impl Kind {
    /// The kinds that live inside a mesh (everything but the mesh itself).
    pub const IN_MESH: [Kind; 6] = [
        Kind::Service,
        Kind::Endpoint,
        Kind::Route,
        Kind::Gateway,
        Kind::AuthorizationPolicy,
        Kind::Certificate,
    ];
    pub const ALL: [Kind; 7] = [
        Kind::Mesh,
        Kind::Service,
        Kind::Endpoint,
        Kind::Route,
        Kind::Gateway,
        Kind::AuthorizationPolicy,
        Kind::Certificate,
    ];

    /// The collection segment in REST paths and the value stored in the database.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Mesh => "meshes",
            Kind::Service => "services",
            Kind::Endpoint => "endpoints",
            Kind::Route => "routes",
            Kind::Gateway => "gateways",
            Kind::AuthorizationPolicy => "authorization-policies",
            Kind::Certificate => "certificates",
        }
    }

    /// Singular, for messages ("service \"a\" is referred to by …").
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Mesh => "mesh",
            Kind::Service => "service",
            Kind::Endpoint => "endpoint",
            Kind::Route => "route",
            Kind::Gateway => "gateway",
            Kind::AuthorizationPolicy => "authorization policy",
            Kind::Certificate => "certificate",
        }
    }

    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.singular())
    }
}
