//! History, rollback and the audit log: a resource's revisions (`…/{kind}/{name}/history`,
//! the mesh's own at `…/meshes/{mesh}/history`), a resource or a whole mesh written back to
//! a revision (`…/rollback`), and who changed what in a tenant (`/v1/tenants/{t}/audit`).

use crate::auth::Caller;
use crate::openapi::{Route, dry_run_param, op, page_params, param, tenant_param};
use crate::resources::{ResourceView, dry_run, page_token, paging, parse_kind};
use crate::{ApiError, AppState, body, rfc3339};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use switchboard_model::Kind;
use switchboard_store::{
    AuditQuery, BatchError, BatchOptions, HistoryEntry, HistoryPage, ResourceKey, StoreError,
    WriteOptions,
};
use utoipa::openapi::path::{HttpMethod, ParameterIn};

/// The credential that made a change: its id and description, never its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialRef {
    pub id: String,
    pub description: String,
}

/// One revision of a resource.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryView {
    pub revision: i64,
    pub time: String,
    /// create, update or delete.
    pub op: &'static str,
    /// The spec this revision wrote (absent for a delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// Absent for a change the control plane made itself.
    pub credential: Option<CredentialRef>,
}

/// One entry of a tenant's audit log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditView {
    pub revision: i64,
    pub time: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mesh: String,
    /// A resource kind (`service`), or `api-key` / `proxy-token`.
    pub kind: String,
    pub name: String,
    pub op: &'static str,
    pub credential: Option<CredentialRef>,
}

/// The body of a rollback.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RollbackRequest {
    /// The revision to go back to.
    pub to_revision: i64,
}

/// What a resource rollback did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackView {
    pub to_revision: i64,
    pub dry_run: bool,
    /// `restored` (written back) or `deleted` (it did not exist at the revision).
    pub effect: &'static str,
    /// As written; as it was, when deleted.
    pub resource: ResourceView,
}

/// One resource a mesh rollback wrote.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshRollbackItem {
    pub kind: String,
    pub name: String,
    /// created, updated or deleted.
    pub effect: &'static str,
}

/// What a mesh rollback did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshRollbackView {
    pub to_revision: i64,
    pub dry_run: bool,
    /// The new revision; absent when the mesh was already as it was then, or on a dry run.
    pub revision: Option<i64>,
    pub items: Vec<MeshRollbackItem>,
}

fn credential(e: &HistoryEntry) -> Option<CredentialRef> {
    e.actor.as_ref().map(|a| CredentialRef {
        id: a.id.clone(),
        description: a.description.clone(),
    })
}

/// A kind as the API names it: a resource kind's singular, else as stored.
fn kind_label(kind: &str) -> String {
    Kind::from_plural(kind).map_or_else(|| kind.to_owned(), |k| k.singular().to_owned())
}

fn history_view(e: &HistoryEntry) -> HistoryView {
    let certificate = Kind::from_plural(&e.kind) == Some(Kind::Certificate);
    HistoryView {
        revision: e.revision,
        time: rfc3339(e.time),
        op: e.op.as_str(),
        spec: e.spec.clone().map(|s| match certificate {
            true => crate::certificates::view(s),
            false => s,
        }),
        credential: credential(e),
    }
}

fn page_json<T: Serialize>(items: Vec<T>, page: &HistoryPage) -> Response {
    axum::Json(serde_json::json!({
        "items": items,
        "nextPageToken": page_token(page.next.clone()),
    }))
    .into_response()
}

async fn history(
    s: &AppState,
    key: ResourceKey,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (after, size) = paging(q)?;
    s.store.get_tenant(&key.tenant).await?;
    let page = s
        .store
        .resource_history(&key, after.as_deref(), size)
        .await?;
    let items: Vec<HistoryView> = page.items.iter().map(history_view).collect();
    Ok(page_json(items, &page))
}

/// The rollback body's revision, checked.
async fn to_revision(headers: &HeaderMap, b: Body) -> Result<i64, ApiError> {
    let req: RollbackRequest = crate::bundle::typed(body::parse(headers, b).await?, "")?;
    if req.to_revision < 0 {
        return Err(ApiError::field(
            "toRevision",
            format!("{} is negative: revisions start at 0", req.to_revision),
        ));
    }
    Ok(req.to_revision)
}

async fn rollback(
    s: &AppState,
    caller: &Caller,
    key: ResourceKey,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let dry = dry_run(q)?;
    let n = to_revision(headers, b).await?;
    let opts = WriteOptions {
        dry_run: dry,
        actor: Some(caller.actor()),
        ..Default::default()
    };
    let done = s.store.rollback(&key, n, &opts, None).await?;
    tracing::info!(tenant = %key.tenant, mesh = %key.mesh, kind = %key.kind, name = %key.name, to_revision = n, dry_run = dry, "rolled back");
    let view = RollbackView {
        to_revision: n,
        dry_run: dry,
        effect: if done.deleted { "deleted" } else { "restored" },
        resource: ResourceView::from(&done.resource),
    };
    let mut resp = axum::Json(view).into_response();
    if !done.deleted
        && let Ok(v) = HeaderValue::from_str(&done.resource.etag())
    {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

async fn rollback_mesh(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let dry = dry_run(&q)?;
    let n = to_revision(&headers, b).await?;
    // A mesh deleted since comes back with a new CA (its old one went with it).
    let ca = match s.store.get(&ResourceKey::mesh(&tenant, &mesh)).await {
        Ok(_) => None,
        Err(StoreError::NotFound { .. }) => Some(crate::cas::generate_sealed(&s, &tenant, &mesh)?),
        Err(e) => return Err(e.into()),
    };
    let opts = BatchOptions {
        dry_run: dry,
        actor: Some(caller.actor()),
        ..Default::default()
    };
    let out = s
        .store
        .rollback_mesh(&tenant, &mesh, n, &opts, ca.as_ref())
        .await
        .map_err(|e: BatchError| {
            let at =
                e.at.map(|a| format!("{} {:?}: ", a.kind, a.name))
                    .unwrap_or_default();
            let mut api = ApiError::from(e.error);
            api.detail = format!("{at}{}", api.detail);
            api
        })?;
    tracing::info!(%tenant, %mesh, to_revision = n, revision = out.revision, dry_run = dry, "rolled back a mesh");
    let items = out
        .items
        .iter()
        .map(|i| MeshRollbackItem {
            kind: i.resource.key.kind.singular().to_owned(),
            name: i.resource.key.name.clone(),
            effect: i.effect.as_str(),
        })
        .collect();
    Ok(axum::Json(MeshRollbackView {
        to_revision: n,
        dry_run: dry,
        revision: out.revision,
        items,
    })
    .into_response())
}

async fn audit(
    State(s): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let (after, limit) = paging(&q)?;
    let since = q
        .get("since")
        .map(|t| {
            humantime::parse_rfc3339_weak(t)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_millis()).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "since",
                        format!("{t:?} is not an RFC 3339 time (2026-01-31T12:00:00Z)"),
                    )
                })
        })
        .transpose()?;
    s.store.get_tenant(&tenant).await?;
    let query = AuditQuery {
        since,
        mesh: q.get("mesh").cloned(),
        credential: q.get("credential").cloned(),
        after,
        limit,
    };
    let page = s.store.audit(&tenant, &query).await?;
    let items: Vec<AuditView> = page
        .items
        .iter()
        .map(|e| AuditView {
            revision: e.revision,
            time: rfc3339(e.time),
            mesh: match Kind::from_plural(&e.kind) {
                Some(Kind::Mesh) => e.name.clone(),
                _ => e.mesh.clone(),
            },
            kind: kind_label(&e.kind),
            name: e.name.clone(),
            op: e.op.as_str(),
            credential: credential(e),
        })
        .collect();
    Ok(page_json(items, &page))
}

type Q = Query<HashMap<String, String>>;

/// The history and rollback of every kind (from the kind registry), the mesh's rollback and
/// the audit log.
pub(crate) fn routes() -> Vec<Route> {
    let tp = tenant_param();
    let mp = param("mesh", ParameterIn::Path, "mesh name");
    let mesh_item = "/v1/tenants/{tenant}/meshes/{mesh}";
    let mut routes = vec![
        Route::new(
            HttpMethod::Get,
            format!("{mesh_item}/history"),
            op(
                "The mesh's revisions, newest first".into(),
                &[vec![tp.clone(), mp.clone()], page_params().to_vec()].concat(),
                None,
                ("200", None),
            ),
            |State(s): State<AppState>,
             c: Caller,
             Path((t, m)): Path<(String, String)>,
             Query(q): Q| async move {
                c.check_tenant(&t)?;
                history(&s, ResourceKey::mesh(&t, &m), &q).await
            },
        )
        .schema::<HistoryView>()
        .schema::<CredentialRef>(),
        Route::new(
            HttpMethod::Post,
            format!("{mesh_item}/rollback"),
            op(
                "Roll the whole mesh back to a revision, in one transaction".into(),
                &[tp.clone(), mp.clone(), dry_run_param()],
                Some("RollbackRequest"),
                ("200", Some("MeshRollbackView")),
            ),
            rollback_mesh,
        )
        .schema::<RollbackRequest>()
        .schema::<MeshRollbackView>()
        .schema::<MeshRollbackItem>(),
        Route::new(
            HttpMethod::Get,
            "/v1/tenants/{tenant}/audit",
            op(
                "Who changed what and when, newest first".into(),
                &[
                    vec![
                        tp.clone(),
                        param("since", ParameterIn::Query, "only from this RFC 3339 time"),
                        param("mesh", ParameterIn::Query, "only this mesh"),
                        param("credential", ParameterIn::Query, "only this credential id"),
                    ],
                    page_params().to_vec(),
                ]
                .concat(),
                None,
                ("200", None),
            ),
            audit,
        )
        .schema::<AuditView>(),
    ];
    for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Mesh) {
        let item = format!("{mesh_item}/{}/{{name}}", kind.plural());
        let params = vec![
            tp.clone(),
            mp.clone(),
            param("name", ParameterIn::Path, "resource name"),
        ];
        routes.push(Route::new(
            HttpMethod::Get,
            format!("{item}/history"),
            op(
                format!("The revisions of a {}, newest first", kind.singular()),
                &[params.clone(), page_params().to_vec()].concat(),
                None,
                ("200", None),
            ),
            move |State(s): State<AppState>,
                  c: Caller,
                  Path((t, m, n)): Path<(String, String, String)>,
                  Query(q): Q| async move {
                c.check_tenant(&t)?;
                history(&s, ResourceKey::new(&t, &m, kind, &n), &q).await
            },
        ));
        routes.push(
            Route::new(
                HttpMethod::Post,
                format!("{item}/rollback"),
                op(
                    format!(
                        "Write a {} back to its spec at a revision (delete it if it did not \
                         exist then)",
                        kind.singular()
                    ),
                    &[params, vec![dry_run_param()]].concat(),
                    Some("RollbackRequest"),
                    ("200", Some("RollbackView")),
                ),
                move |State(s): State<AppState>,
                      c: Caller,
                      Path((t, m, n)): Path<(String, String, String)>,
                      Query(q): Q,
                      h: HeaderMap,
                      b: Body| async move {
                    c.check_tenant(&t)?;
                    rollback(&s, &c, ResourceKey::new(&t, &m, kind, &n), &q, &h, b).await
                },
            )
            .schema::<RollbackView>(),
        );
    }
    routes
}

/// `…/{kind}/{name}/history` and `/rollback` for what the routes of each kind do not match:
/// a 404 naming the kinds for an unknown one (after authenticating), and a kind spelled
/// otherwise (percent-encoded) served as its own route, as `resources::any_kind` does.
pub(crate) fn any_kind(router: Router<AppState>) -> Router<AppState> {
    let item = "/v1/tenants/{tenant}/meshes/{mesh}/{kind}/{name}";
    router
        .route(&format!("{item}/history"), get(any_history))
        .route(&format!("{item}/rollback"), post(any_rollback))
}

type AnyItem = Path<(String, String, String, String)>;

async fn any_history(
    State(s): State<AppState>,
    caller: Caller,
    Path((t, m, kind, n)): AnyItem,
    Query(q): Q,
) -> Result<Response, ApiError> {
    caller.check_tenant(&t)?;
    let kind = parse_kind(&kind)?;
    history(&s, ResourceKey::new(&t, &m, kind, &n), &q).await
}

async fn any_rollback(
    State(s): State<AppState>,
    caller: Caller,
    Path((t, m, kind, n)): AnyItem,
    Query(q): Q,
    h: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&t)?;
    let kind = parse_kind(&kind)?;
    rollback(&s, &caller, ResourceKey::new(&t, &m, kind, &n), &q, &h, b).await
}
