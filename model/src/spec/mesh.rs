use crate::validate::Errors;
use crate::{Duration, ValidationErrors};
use serde::{Deserialize, Serialize};

/// A mesh: the unit of xDS configuration. Every other resource lives in one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Admit xDS clients that present no proxy token (proxyless clients such as grpc-js that
    /// cannot send one). They never receive secrets.
    #[serde(default)]
    pub allow_unauthenticated_xds: bool,
    /// Mutual TLS between the mesh's proxies, with certificates from the mesh CA.
    #[serde(default)]
    pub mtls: MtlsSettings,
    /// What an inbound request no authorization policy speaks about gets.
    #[serde(default)]
    pub default_authorization: AuthorizationAction,
}

/// How a mesh's proxies talk to each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Inbound accepts only mutual TLS with a certificate of the mesh CA; outbound uses it.
    Strict,
    /// Outbound uses mutual TLS; inbound also accepts plaintext (for migration). The default,
    /// so that meshes created before mTLS existed keep working on upgrade.
    #[default]
    Permissive,
    /// Plaintext everywhere; no workload certificate is pushed for the data path.
    Off,
}

/// A mesh's mTLS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsSettings {
    #[serde(default)]
    pub mode: MtlsMode,
    /// Lifetime of the workload certificates the mesh CA issues; renewed at half of it.
    #[serde(default = "default_certificate_lifetime")]
    #[schema(value_type = String, example = "24h")]
    pub certificate_lifetime: Duration,
}

/// The lifetime of workload certificates when a mesh does not set one.
pub const DEFAULT_CERTIFICATE_LIFETIME: Duration = Duration(std::time::Duration::from_secs(86_400));
/// The shortest lifetime a mesh may set (short lifetimes are for tests).
pub const MIN_CERTIFICATE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest lifetime a mesh may set.
pub const MAX_CERTIFICATE_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(90 * 86_400);

fn default_certificate_lifetime() -> Duration {
    DEFAULT_CERTIFICATE_LIFETIME
}

impl Default for MtlsSettings {
    fn default() -> Self {
        Self {
            mode: MtlsMode::default(),
            certificate_lifetime: DEFAULT_CERTIFICATE_LIFETIME,
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthorizationAction {
    #[default]
    Allow,
    Deny,
}

impl MeshSpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = Errors::default();
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            e.push("spec.description", "longer than 1024 characters");
        }
        let lifetime = self.mtls.certificate_lifetime.as_std();
        if lifetime < MIN_CERTIFICATE_LIFETIME || lifetime > MAX_CERTIFICATE_LIFETIME {
            e.push(
                "spec.mtls.certificateLifetime",
                "must be between 1m and 2160h (90 days)",
            );
        }
        e.into_result()
    }
}
