//! Switchboard's mesh configuration model.
//!
//! Pure data and validation: every spec a user can write through the REST API, the rules that
//! catch what Envoy or gRPC would reject later, and the references and claims a spec makes on
//! other resources (so the store can enforce them transactionally). No IO happens here.

pub mod duration;
pub mod error;
pub mod identity;
pub mod kind;
pub mod labels;
pub mod name;
pub mod spec;
mod validate;

pub use duration::Duration;
pub use error::{FieldError, ValidationErrors};
pub use identity::{TrustBundle, WorkloadId, spiffe_id};
pub use kind::Kind;
pub use labels::{Labels, MANAGED_BY, MANAGED_BY_APPLY, validate_labels};
pub use name::{is_dns_label, validate_name};
pub use spec::{
    AuthorizationAction, AuthorizationPolicySpec, CertificateSpec, Claim, EndpointSpec,
    GatewaySpec, MeshSpec, MtlsMode, MtlsSettings, Reference, RouteSpec, ServiceSpec, Spec,
};

#[cfg(test)]
mod tests;
