//! The specs of each resource kind, and what they say about other resources.

mod endpoint;
mod gateway;
mod mesh;
mod route;
mod service;

pub use endpoint::{EndpointSpec, Health, Locality};
pub use gateway::{GatewayProtocol, GatewaySpec};
pub use mesh::{
    AuthorizationAction, DEFAULT_CERTIFICATE_LIFETIME, MeshSpec, MtlsMode, MtlsSettings,
};
pub use route::{
    Backend, Fault, FaultAbort, FaultDelay, Header, HeaderMatch, HeaderMatchType, HeaderModifier,
    Method, Mirror, PathMatch, PathMatchType, QueryMatch, QueryMatchType, Redirect, Retry, Rewrite,
    RouteMatch, RouteRule, RouteSpec,
};
pub use service::{CircuitBreaker, LbPolicy, OutlierDetection, Protocol, ServiceSpec};

use crate::{FieldError, Kind, ValidationErrors};
use serde::Serialize;

/// A reference from one resource to another in the same mesh, checked by the store inside the
/// write transaction: the target must exist, and can't be deleted while referred to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Field path in the referring spec, e.g. `spec.rules[0].backends[1].service`.
    pub field: String,
    pub kind: Kind,
    pub name: String,
}

/// Something only one resource of a mesh may hold, e.g. a route hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub field: String,
    /// What is claimed, e.g. `hostname`.
    pub what: &'static str,
    pub value: String,
}

/// A parsed spec of any kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    Mesh(MeshSpec),
    Service(ServiceSpec),
    Endpoint(EndpointSpec),
    Route(RouteSpec),
    Gateway(GatewaySpec),
}

impl Spec {
    /// Parses a spec from JSON, naming the field of the first type error (`spec.port`, …).
    pub fn parse(kind: Kind, value: serde_json::Value) -> Result<Spec, ValidationErrors> {
        fn de<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ValidationErrors> {
            serde_path_to_error_lite(v)
        }
        Ok(match kind {
            Kind::Mesh => Spec::Mesh(de(value)?),
            Kind::Service => Spec::Service(de(value)?),
            Kind::Endpoint => Spec::Endpoint(de(value)?),
            Kind::Route => Spec::Route(de(value)?),
            Kind::Gateway => Spec::Gateway(de(value)?),
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            Spec::Mesh(_) => Kind::Mesh,
            Spec::Service(_) => Kind::Service,
            Spec::Endpoint(_) => Kind::Endpoint,
            Spec::Route(_) => Kind::Route,
            Spec::Gateway(_) => Kind::Gateway,
        }
    }

    /// Checks everything that can be checked without looking at other resources.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        match self {
            Spec::Mesh(s) => s.validate(),
            Spec::Service(s) => s.validate(),
            Spec::Endpoint(s) => s.validate(),
            Spec::Route(s) => s.validate(),
            Spec::Gateway(s) => s.validate(),
        }
    }

    pub fn references(&self) -> Vec<Reference> {
        match self {
            Spec::Mesh(_) | Spec::Service(_) => vec![],
            Spec::Endpoint(s) => s.references(),
            Spec::Route(s) => s.references(),
            Spec::Gateway(s) => s.references(),
        }
    }

    pub fn claims(&self) -> Vec<Claim> {
        match self {
            Spec::Route(s) => s.claims(),
            _ => vec![],
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Deserializes with the failing field's path, prefixed with `spec`.
fn serde_path_to_error_lite<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
) -> Result<T, ValidationErrors> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let field = if e.path().iter().next().is_none() {
            "spec".to_string()
        } else {
            format!("spec.{}", e.path())
        };
        ValidationErrors(vec![FieldError::new(field, e.inner().to_string())])
    })
}
