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
use switchboard_model::{Kind, ValidationErrors, validate_name};
use switchboard_store::{
    BatchEffect, BatchOptions, BatchWrite, MeshSnapshot, ProxyRow, ResourceKey,
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

/// A change to plan against the mesh at a tenant revision, and the mesh's live streams:
/// what the port plans from.
#[derive(Clone)]
pub struct PlanInput {
    pub tenant: String,
    pub mesh: String,
    /// The tenant revision the change is planned against.
    pub revision: i64,
    /// The mesh as stored at `revision`; `None` when the port said it holds that revision
    /// ([`NodeConfigs::holds`](crate::NodeConfigs::holds)), which spares reading it.
    pub before: Option<MeshSnapshot>,
    /// The resources the change creates, replaces or deletes (the mesh itself when its spec
    /// changes), each with its spec as the change would leave it (`None`: deleted): nothing
    /// else differs.
    pub changed: Vec<(ResourceKey, Option<serde_json::Value>)>,
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
    // The mesh is read only when the port does not hold its translation at the tenant's
    // revision; the revision is read again after the dry run, which must have seen it.
    let held = s.store.revision(&tenant).await?;
    let mut before = if s.node_configs.holds(&tenant, &mesh, held) {
        None
    } else {
        Some(s.store.mesh_snapshot(&tenant, &mesh).await?)
    };
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
    if before.is_none() && s.store.revision(&tenant).await? != held {
        before = Some(s.store.mesh_snapshot(&tenant, &mesh).await?);
    }
    let changed = outcome
        .items
        .into_iter()
        .filter(|i| i.effect != BatchEffect::Unchanged)
        .map(|i| {
            let spec = (i.effect != BatchEffect::Deleted).then_some(i.resource.spec);
            (i.resource.key, spec)
        })
        .collect();
    let streams = s.store.list_proxies(&tenant, &mesh, None).await?;
    let revision = before.as_ref().map_or(held, |b| b.revision);
    let mut input = PlanInput {
        tenant: tenant.clone(),
        mesh: mesh.clone(),
        revision,
        before,
        changed,
        streams,
    };
    let planned = loop {
        let port = s.node_configs.clone();
        let given = input.clone();
        let answer = tokio::task::spawn_blocking(move || port.plan(given))
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
        match answer {
            Some(planned) => break planned,
            // It no longer holds the revision (other meshes were planned meanwhile).
            None if input.before.is_none() => {
                let read = s.store.mesh_snapshot(&tenant, &mesh).await?;
                input.revision = read.revision;
                input.before = Some(read);
            }
            None => {
                return Err(crate::bundle::internal(
                    "planning",
                    "the port needs the mesh it was given",
                ));
            }
        }
    };
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
