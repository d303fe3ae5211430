//! `POST /v1/tenants/{tenant}/meshes/{mesh}/plan`: what a change would send to which
//! proxies, typed as the API answers it (for `switchboard plan`).

use crate::bundle::Documents;
use crate::resources::document_kind;
use crate::{Client, ClientError, segment};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_model::Kind;

/// What a change would do to a mesh's proxies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The revision the plan is against.
    pub revision: i64,
    pub changes: bool,
    pub resources: Vec<PlannedResource>,
    pub connected_proxies: usize,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One Envoy resource added, changed or removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedResource {
    /// `add`, `change` or `remove`.
    pub action: String,
    /// Listener, RouteConfiguration, Cluster, ClusterLoadAssignment or Secret.
    pub kind: String,
    pub type_url: String,
    pub name: String,
    #[serde(default)]
    pub diff: Vec<DiffOp>,
    pub proxies: Receivers,
}

/// One RFC 6902 operation, with the value it overwrites.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffOp {
    pub op: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// The connected proxies that would receive a resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receivers {
    pub count: usize,
    pub nodes: Vec<String>,
}

impl Client {
    /// Plans `documents` (all of `mesh`, or `mesh` itself) and the `deletions` in `mesh`;
    /// nothing is written.
    pub async fn plan(
        &self,
        tenant: &str,
        mesh: &str,
        documents: &Documents,
        deletions: &[(Kind, String)],
    ) -> Result<Plan, ClientError> {
        let body = json!({
            "documents": documents.documents,
            "deletions": deletions
                .iter()
                .map(|(kind, name)| json!({"kind": document_kind(*kind), "name": name}))
                .collect::<Vec<_>>(),
        });
        let answer = self
            .post(
                &format!("/tenants/{}/meshes/{}/plan", segment(tenant), segment(mesh)),
                &[],
                &body,
            )
            .await?;
        serde_json::from_value(answer.clone()).map_err(|e| ClientError::Unexpected {
            status: 200,
            body: format!("{e}: {answer}"),
        })
    }
}
