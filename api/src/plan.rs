//! `POST /v1/tenants/{tenant}/meshes/{mesh}/plan`: what a change would do to the mesh's
//! proxies, with nothing written. The documents (as `import` and `switchboard apply` send
//! them) and deletions are checked exactly as that import checks them, by the store's dry
//! run of the same batch (same errors, naming `documents[i]` or `deletions[i]` and the
//! field); the mesh as stored and as the batch would leave it are then handed to the
//! [`NodeConfigs`](crate::NodeConfigs) port, whose xDS server translates both and says which
//! Envoy resources differ and which connected proxies would be sent each.

use crate::auth::Caller;
use crate::bundle::{Document, at_document, kind_name, prepare, store_error, typed};
use crate::openapi::{Route, op, param, tenant_param};
use crate::{ApiError, AppState, body};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use switchboard_model::{Kind, ValidationErrors, validate_name};
use switchboard_store::{
    BatchEffect, BatchItem, BatchOptions, BatchWrite, MeshSnapshot, ProxyRow, ResourceKey,
    StoredResource,
};
use utoipa::openapi::path::{HttpMethod, ParameterIn};

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(
            HttpMethod::Post,
            "/v1/tenants/{tenant}/meshes/{mesh}/plan",
            op(
                "Plan a change to the mesh: the Envoy resources it would add, change (with a JSON \
             diff) or remove, and which connected proxies would receive each; nothing is \
             written. Documents are checked as an import checks them (errors name \
             documents[i] or deletions[i] and the field)"
                    .into(),
                &[
                    tenant_param(),
                    param("mesh", ParameterIn::Path, "mesh name"),
                ],
                Some("PlanRequest"),
                ("200", Some("Plan")),
            ),
            plan,
        )
        .schema::<PlanRequest>()
        .schema::<Deletion>()
        .schema::<Plan>()
        .schema::<PlannedResource>()
        .schema::<DiffOp>()
        .schema::<Receivers>(),
    ]
}

/// A change to one mesh: documents to create or replace (as an import takes them; every
/// one in this mesh, or the mesh itself), and resources to delete.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanRequest {
    #[serde(default)]
    #[schema(value_type = Vec<Document>)]
    documents: Vec<serde_json::Value>,
    #[serde(default)]
    deletions: Vec<Deletion>,
}

/// A resource of the mesh to delete.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deletion {
    /// service, endpoint, route, gateway, authorization-policy or certificate.
    kind: String,
    name: String,
}

/// The stored mesh, the mesh as the change would leave it, and the mesh's live streams:
/// what the port plans from.
pub struct PlanInput {
    pub before: MeshSnapshot,
    pub after: MeshSnapshot,
    /// The resources `after` creates, replaces or deletes (the mesh itself when its spec
    /// changes): nothing else differs.
    pub changed: Vec<ResourceKey>,
    pub streams: Vec<ProxyRow>,
}

/// What a change would do to a mesh's proxies.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The tenant revision the stored mesh was read at: the plan is against it.
    pub revision: i64,
    /// Whether any Envoy resource would change.
    pub changes: bool,
    /// In push order (secrets, clusters, load assignments, listeners, route
    /// configurations), then by name.
    pub resources: Vec<PlannedResource>,
    /// Proxies connected to the mesh now (on any replica).
    pub connected_proxies: usize,
    /// What the changed mesh's translation had to leave out.
    pub warnings: Vec<String>,
}

/// One Envoy resource the change would add, change or remove.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedResource {
    /// `add`, `change` or `remove`.
    pub action: &'static str,
    /// Listener, RouteConfiguration, Cluster, ClusterLoadAssignment or Secret.
    pub kind: String,
    pub type_url: String,
    pub name: String,
    /// For `change`: RFC 6902 operations from the resource's proto3 JSON now to its JSON
    /// after, each with the value it overwrites (`before`). Private keys are redacted.
    pub diff: Vec<DiffOp>,
    pub proxies: Receivers,
}

/// One operation of a diff.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiffOp {
    /// add, remove or replace.
    pub op: &'static str,
    /// JSON pointer.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

/// The connected proxies that would be sent a resource (or told it is gone).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Receivers {
    pub count: usize,
    /// Node names, sorted.
    pub nodes: Vec<String>,
}

/// The port's answer: the plan without the revision.
#[derive(Debug)]
pub struct PlanOutcome {
    pub resources: Vec<PlannedResource>,
    pub connected_proxies: usize,
    pub warnings: Vec<String>,
}

/// This process cannot plan (it serves no xDS to translate with).
#[derive(Debug, thiserror::Error)]
#[error("this server does not plan: it has no xDS server to translate with")]
pub struct PlanUnavailable;

async fn plan(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let v = body::parse_up_to(&headers, body, crate::bundle::MAX_IMPORT_BYTES)
        .await?
        .ok_or_else(|| ApiError::bad_request("body", "the request body is empty"))?;
    let req: PlanRequest = typed(v, "")?;
    let before = s.store.mesh_snapshot(&tenant, &mesh).await?;
    let (writes, labels) = writes(&s, &tenant, &mesh, req).await?;
    let documents = writes.len() - labels.deletions;
    let outcome = s
        .store
        .write_many(
            &tenant,
            writes,
            &BatchOptions {
                dry_run: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| match e.at {
            Some(at) if at.index < documents => {
                at_document(at.index, &labels.text[at.index], store_error(e.error))
            }
            Some(at) => at_deletion(
                at.index - documents,
                &labels.text[at.index],
                ApiError::from(e.error),
            ),
            None => ApiError::from(e.error),
        })?;
    let changed = outcome
        .items
        .iter()
        .filter(|i| i.effect != BatchEffect::Unchanged)
        .map(|i| i.resource.key.clone())
        .collect();
    let after = overlay(&before, outcome.items);
    let streams = s.store.list_proxies(&tenant, &mesh, None).await?;
    let revision = before.revision;
    let port = s.node_configs.clone();
    let planned = tokio::task::spawn_blocking(move || {
        port.plan(PlanInput {
            before,
            after,
            changed,
            streams,
        })
    })
    .await
    .map_err(|e| crate::bundle::internal("planning", e))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "plan-unavailable",
            "Plan unavailable",
            e.to_string(),
        )
    })?;
    tracing::info!(%tenant, %mesh, revision, resources = planned.resources.len(), "planned");
    Ok(axum::Json(Plan {
        revision,
        changes: !planned.resources.is_empty(),
        resources: planned.resources,
        connected_proxies: planned.connected_proxies,
        warnings: planned.warnings,
    })
    .into_response())
}

/// Each batch write's label for errors, and how many of them are deletions (last).
struct Labels {
    text: Vec<String>,
    deletions: usize,
}

/// The store writes of a request: its documents checked as an import's, each in `mesh`,
/// then its deletions.
async fn writes(
    s: &AppState,
    tenant: &str,
    mesh: &str,
    req: PlanRequest,
) -> Result<(Vec<BatchWrite>, Labels), ApiError> {
    let mut writes = Vec::with_capacity(req.documents.len() + req.deletions.len());
    let mut text = Vec::with_capacity(writes.capacity());
    for (i, raw) in req.documents.into_iter().enumerate() {
        let doc: Document = typed(raw, &format!("documents[{i}]"))?;
        let label = format!("{} {:?}", doc.kind, doc.name);
        // A plan reads no passphrase: keys never reach the proxies' configuration.
        let (write, _) = prepare(s, tenant, doc, &mut None)
            .await
            .map_err(|e| at_document(i, &label, e))?;
        if let BatchWrite::Put { mesh: at, name, .. } = &write {
            let (field, of) = match write.kind() {
                Kind::Mesh => ("name", name),
                _ => ("mesh", at),
            };
            if of != mesh {
                return Err(at_document(
                    i,
                    &label,
                    ApiError::field(
                        field,
                        format!("{of:?} is not mesh {mesh:?}: a plan is of the mesh in its path"),
                    ),
                ));
            }
        }
        writes.push(write);
        text.push(label);
    }
    let deletions = req.deletions.len();
    for (i, d) in req.deletions.into_iter().enumerate() {
        let label = format!("{} {:?}", d.kind, d.name);
        let kind: Kind = serde_json::from_value(serde_json::Value::String(d.kind.clone()))
            .map_err(|_| {
                at_deletion(
                    i,
                    &label,
                    ApiError::field("kind", format!("unknown kind {:?}", d.kind)),
                )
            })?;
        validate_name("name", &d.name)
            .map_err(|e| at_deletion(i, &label, ApiError::invalid(ValidationErrors(vec![e]))))?;
        if kind == Kind::Mesh {
            return Err(at_deletion(
                i,
                &label,
                ApiError::field(
                    "kind",
                    "a plan deletes resources of the mesh, not the mesh itself",
                ),
            ));
        }
        writes.push(BatchWrite::delete(mesh, kind, &d.name));
        text.push(format!("{} {:?}", kind_name(kind), d.name));
    }
    Ok((writes, Labels { text, deletions }))
}

/// Names `deletions[index]` in every field and in the detail.
fn at_deletion(index: usize, label: &str, mut e: ApiError) -> ApiError {
    let at = format!("deletions[{index}]");
    if e.errors.is_empty() {
        e.errors.push(switchboard_model::FieldError::new(
            at.clone(),
            e.detail.clone(),
        ));
    } else {
        for f in &mut e.errors {
            f.field = format!("{at}.{}", f.field);
        }
    }
    e.detail = format!("{at} ({label}): {}", e.detail);
    e
}

/// The mesh as the (dry-run) batch would leave it.
fn overlay(before: &MeshSnapshot, items: Vec<BatchItem>) -> MeshSnapshot {
    let mut after = before.clone();
    let mut written: HashMap<ResourceKey, Option<StoredResource>> = HashMap::new();
    for item in items {
        match (item.resource.key.kind, item.effect) {
            (_, BatchEffect::Unchanged) => {}
            (Kind::Mesh, _) => after.mesh = item.resource,
            (_, BatchEffect::Deleted) => {
                written.insert(item.resource.key, None);
            }
            (_, BatchEffect::Created | BatchEffect::Updated) => {
                written.insert(item.resource.key.clone(), Some(item.resource));
            }
        }
    }
    after
        .resources
        .retain_mut(|r| match written.remove(&r.key) {
            None => true,
            Some(None) => false,
            Some(Some(new)) => {
                *r = new;
                true
            }
        });
    after.resources.extend(written.into_values().flatten());
    after
}
