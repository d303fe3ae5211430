//! Authorization policies: which workload identities may call a service, optionally narrowed
//! to some paths, methods and headers. The translator turns them into Envoy's RBAC filters on
//! the service's inbound listeners, evaluated as Istio documents: deny policies first, then
//! allow policies; a request no policy matches gets the mesh's `defaultAuthorization`.

use super::{AuthorizationAction, Reference, ServiceSpec};
use crate::spec::Protocol;
use crate::validate::Errors;
use crate::{FieldError, Kind, ValidationErrors};
use serde::{Deserialize, Serialize};

/// At most this many entries in `from` and in `to`.
pub const MAX_RULES: usize = 16;
/// At most this many services in one source.
pub const MAX_SOURCE_SERVICES: usize = 64;
/// At most this many paths, methods or headers in one `to` entry.
pub const MAX_MATCHES: usize = 32;

/// Allows or denies requests to `service` from some sources: becomes a policy of the RBAC
/// filter on `service`'s inbound listeners, named after this resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// The destination service whose inbound traffic this policy governs.
    pub service: String,
    /// What a request matching both `from` and `to` gets.
    pub action: AuthorizationAction,
    /// Who the policy is about; a request from any one of these sources matches.
    pub from: Vec<AuthorizationSource>,
    /// What the policy is about; a request matching any one entry matches. Empty: every
    /// request. HTTP services only (a TCP service has no paths, methods or headers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthorizationOperation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Callers, by the identity (SPIFFE ID) of their mTLS client certificate: either some services
/// of the mesh, or any workload of the mesh.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationSource {
    /// Services of the mesh whose workloads match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Every workload with a certificate of this mesh matches (plaintext callers do not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_authenticated: bool,
}

/// A kind of request. Every field that is set must match (paths, methods and headers are
/// combined with AND; the entries of one list with OR).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationOperation {
    /// Request paths (without the query): exact (`/healthz`), or a prefix ending in `*`
    /// (`/api/*` matches `/api/` and everything below it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP methods (`GET`, `POST`, …), compared exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Request headers; each must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<AuthorizationHeader>,
}

/// A request header equal to `value`, or starting with `prefix` (exactly one of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A path of a `to` entry: what the translator matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathPattern<'a> {
    Exact(&'a str),
    /// The part before the trailing `*`.
    Prefix(&'a str),
}

impl<'a> PathPattern<'a> {
    /// `/api/*` is a prefix match on `/api/`; anything else is exact.
    pub fn parse(path: &'a str) -> PathPattern<'a> {
        match path.strip_suffix('*') {
            Some(prefix) => PathPattern::Prefix(prefix),
            None => PathPattern::Exact(path),
        }
    }
}

impl AuthorizationPolicySpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = Errors::default();
        e.reference("spec.service", &self.service);
        if self.from.is_empty() {
            e.push(
                "spec.from",
                "name at least one source (services, or anyAuthenticated: true)",
            );
        }
        limit(&mut e, "spec.from", self.from.len(), MAX_RULES);
        for (i, source) in self.from.iter().enumerate() {
            source.validate(&format!("spec.from[{i}]"), &mut e);
        }
        limit(&mut e, "spec.to", self.to.len(), MAX_RULES);
        for (i, op) in self.to.iter().enumerate() {
            op.validate(&format!("spec.to[{i}]"), &mut e);
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            e.push("spec.description", "longer than 1024 characters");
        }
        e.into_result()
    }

    /// The destination service, then every source service.
    pub fn references(&self) -> Vec<Reference> {
        let mut refs = vec![Reference {
            field: "spec.service".into(),
            kind: Kind::Service,
            name: self.service.clone(),
        }];
        for (i, source) in self.from.iter().enumerate() {
            for (j, s) in source.services.iter().enumerate() {
                refs.push(Reference {
                    field: format!("spec.from[{i}].services[{j}]"),
                    kind: Kind::Service,
                    name: s.clone(),
                });
            }
        }
        refs
    }

    /// A TCP service has no paths, methods or headers to narrow by: a policy for one may only
    /// say `from`. `None` when the policy suits `service`.
    pub fn check_destination(&self, service: &ServiceSpec) -> Option<FieldError> {
        (service.protocol == Protocol::Tcp && !self.to.is_empty()).then(|| {
            FieldError::new(
                "spec.to",
                format!(
                    "service {:?} is a tcp service, which has no paths, methods or headers: a \
                     policy for it may only name sources (`from`); remove `to`",
                    self.service
                ),
            )
        })
    }
}

impl AuthorizationSource {
    fn validate(&self, at: &str, e: &mut Errors) {
        match (self.services.is_empty(), self.any_authenticated) {
            (true, false) => e.push(
                at.to_owned(),
                "name the source: services, or anyAuthenticated: true",
            ),
            (false, true) => e.push(
                format!("{at}.anyAuthenticated"),
                "a source is either some services or any authenticated workload, not both: \
                 use two sources",
            ),
            _ => {}
        }
        limit(
            e,
            &format!("{at}.services"),
            self.services.len(),
            MAX_SOURCE_SERVICES,
        );
        for (j, s) in self.services.iter().enumerate() {
            e.reference(&format!("{at}.services[{j}]"), s);
        }
    }
}

impl AuthorizationOperation {
    fn validate(&self, at: &str, e: &mut Errors) {
        if self.paths.is_empty() && self.methods.is_empty() && self.headers.is_empty() {
            e.push(
                at.to_owned(),
                "name paths, methods or headers (leave `to` out to match every request)",
            );
        }
        limit(e, &format!("{at}.paths"), self.paths.len(), MAX_MATCHES);
        for (k, p) in self.paths.iter().enumerate() {
            let f = format!("{at}.paths[{k}]");
            if !p.starts_with('/') {
                e.push(f, "must start with '/'");
            } else if p.trim_end_matches('*').contains('*') || p.ends_with("**") {
                e.push(f, "'*' may only end a path, as a prefix match (\"/api/*\")");
            } else if p.contains(['?', '#']) || p.chars().any(char::is_control) {
                e.push(
                    f,
                    "a path has no query, fragment or control characters (it is matched \
                     without the query)",
                );
            }
        }
        limit(e, &format!("{at}.methods"), self.methods.len(), MAX_MATCHES);
        for (k, m) in self.methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(is_token_byte) {
                e.push(
                    format!("{at}.methods[{k}]"),
                    format!("{m:?} is not an HTTP method (a token such as GET or POST)"),
                );
            }
        }
        limit(e, &format!("{at}.headers"), self.headers.len(), MAX_MATCHES);
        for (k, h) in self.headers.iter().enumerate() {
            let f = format!("{at}.headers[{k}]");
            e.header_name(&format!("{f}.name"), &h.name);
            if [":path", ":method"].contains(&h.name.as_str()) {
                e.push(
                    format!("{f}.name"),
                    "use paths or methods to match the path or the method",
                );
            }
            match (&h.value, &h.prefix) {
                (Some(v), None) => e.header_value(&format!("{f}.value"), v),
                (None, Some(p)) => e.header_value(&format!("{f}.prefix"), p),
                _ => e.push(f, "name exactly one of value and prefix"),
            }
        }
    }
}

fn limit(e: &mut Errors, field: &str, len: usize, max: usize) {
    if len > max {
        e.push(field, format!("{len} entries: at most {max} are allowed"));
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
