//! The specs of each resource kind, and what they say about other resources.

mod authorization;
mod certificate;
mod endpoint;
mod gateway;
mod mesh;
mod route;
mod service;

pub use authorization::{
    AuthorizationHeader, AuthorizationOperation, AuthorizationPolicySpec, AuthorizationSource,
    MAX_MATCHES, MAX_RULES, MAX_SOURCE_SERVICES, PathPattern,
};
pub use certificate::{CertificateKey, CertificateSpec, SealedKey};
pub use endpoint::{EndpointSpec, Health, Locality};
pub use gateway::{
    GatewayProtocol, GatewaySpec, GatewayTls, GatewayTlsMode, MAX_GATEWAY_CERTIFICATES,
};
pub use mesh::{
    AuthorizationAction, DEFAULT_CERTIFICATE_LIFETIME, MeshSpec, MtlsMode, MtlsSettings,
};
pub use route::{
    Backend, Fault, FaultAbort, FaultDelay, Header, HeaderMatch, HeaderMatchType, HeaderModifier,
    Method, Mirror, PathMatch, PathMatchType, QueryMatch, QueryMatchType, Redirect, Retry, Rewrite,
    RouteMatch, RouteRule, RouteSpec,
};
pub use service::{CircuitBreaker, LbPolicy, OutlierDetection, Protocol, ServiceSpec, ServiceTls};

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
    AuthorizationPolicy(AuthorizationPolicySpec),
    /// Boxed: far larger than the other specs, and rare.
    Certificate(Box<CertificateSpec>),
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
            Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(de(value)?),
            Kind::Certificate => Spec::Certificate(Box::new(de(value)?)),
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            Spec::Mesh(_) => Kind::Mesh,
            Spec::Service(_) => Kind::Service,
            Spec::Endpoint(_) => Kind::Endpoint,
            Spec::Route(_) => Kind::Route,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Spec::Certificate(_) => Kind::Certificate,
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
            Spec::AuthorizationPolicy(s) => s.validate(),
            Spec::Certificate(s) => s.validate(),
        }
    }

    pub fn references(&self) -> Vec<Reference> {
        match self {
            Spec::Mesh(_) | Spec::Service(_) | Spec::Certificate(_) => vec![],
            Spec::Endpoint(s) => s.references(),
            Spec::Route(s) => s.references(),
            Spec::Gateway(s) => s.references(),
            Spec::AuthorizationPolicy(s) => s.references(),
        }
    }

    pub fn claims(&self) -> Vec<Claim> {
        match self {
            Spec::Route(s) => s.claims(),
            _ => vec![],
        }
    }

    /// The kinds whose references to a resource of `kind` come with a rule on that resource
    /// (see [`Spec::check_target`]), so that a write of `kind` reads only those referrers.
    pub fn constrained_by(kind: Kind) -> &'static [Kind] {
        match kind {
            Kind::Service => &[Kind::AuthorizationPolicy],
            _ => &[],
        }
    }

    /// Checks this spec against `target`, the resource `reference` (one of this spec's) names,
    /// for rules neither can check alone: a policy narrowing by path needs an HTTP service.
    /// The store calls it inside the write transaction, as it checks that `target` exists.
    pub fn check_target(&self, reference: &Reference, target: &Spec) -> Option<FieldError> {
        match (self, target) {
            (Spec::AuthorizationPolicy(p), Spec::Service(s)) if reference.name == p.service => {
                p.check_destination(s)
            }
            _ => None,
        }
    }

    /// [`Spec::check_target`] the other way round: checks this spec, about to be written as
    /// `name`, against a resource that refers to it (`referrer_name` of `referrer`'s kind),
    /// naming the field of this spec that breaks the rule.
    pub fn check_referrer(
        &self,
        name: &str,
        referrer_name: &str,
        referrer: &Spec,
    ) -> Option<FieldError> {
        match (self, referrer) {
            (Spec::Service(s), Spec::AuthorizationPolicy(p)) if p.service == name => {
                p.check_destination(s).map(|_| {
                    FieldError::new(
                        "spec.protocol",
                        format!(
                            "authorization policy {referrer_name:?} narrows requests to this \
                             service by paths, methods or headers, which a tcp service does not \
                             have: remove that policy's `to` first"
                        ),
                    )
                })
            }
            _ => None,
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
