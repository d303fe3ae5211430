use crate::ValidationErrors;
use crate::validate::Errors;
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
}

impl MeshSpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = Errors::default();
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            e.push("spec.description", "longer than 1024 characters");
        }
        e.into_result()
    }
}
