//! Meshes and the resources inside them: one generic set of handlers for every kind.

use crate::auth::Caller;
use crate::openapi::{Route, dry_run_param, op, page_params, param, tenant_param};
use crate::{ApiError, AppState, body};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use switchboard_model::spec::{
    AuthorizationPolicySpec, CertificateSpec, EndpointSpec, GatewaySpec, MeshSpec, RouteSpec,
    ServiceSpec,
};
use switchboard_model::{Kind, Labels, Spec, validate_labels, validate_name};
use switchboard_store::{Precondition, ResourceKey, StoredResource, WriteOptions};
use utoipa::openapi::path::{HttpMethod, ParameterIn};

/// A resource as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceView {
    pub name: String,
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mesh: String,
    pub revision: i64,
    pub etag: String,
    pub create_time: String,
    pub update_time: String,
    /// String pairs beside the spec; `switchboard apply` marks what it wrote with
    /// `switchboard.dev/managed-by: apply`.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    pub spec: serde_json::Value,
}

pub(crate) use crate::rfc3339;

impl From<&StoredResource> for ResourceView {
    fn from(r: &StoredResource) -> Self {
        Self {
            name: r.key.name.clone(),
            kind: r.key.kind.singular().into(),
            mesh: r.key.mesh.clone(),
            revision: r.revision,
            etag: r.etag(),
            create_time: rfc3339(r.create_time),
            update_time: rfc3339(r.update_time),
            labels: r.labels.clone(),
            spec: match r.key.kind {
                Kind::Certificate => crate::certificates::view(r.spec.clone()),
                _ => r.spec.clone(),
            },
        }
    }
}

/// What a client sends: the spec, and the name on POST. Read-only fields a client got from a
/// GET are accepted and ignored so that GET, edit, PUT works.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope {
    name: Option<String>,
    spec: Option<serde_json::Value>,
    /// Replaces the resource's labels (none when absent).
    #[serde(default)]
    labels: Labels,
    #[serde(rename = "kind")]
    _kind: Option<serde_json::Value>,
    #[serde(rename = "mesh")]
    _mesh: Option<serde_json::Value>,
    #[serde(rename = "revision")]
    _revision: Option<serde_json::Value>,
    #[serde(rename = "etag")]
    _etag: Option<serde_json::Value>,
    #[serde(rename = "createTime")]
    _create_time: Option<serde_json::Value>,
    #[serde(rename = "updateTime")]
    _update_time: Option<serde_json::Value>,
}

fn envelope(v: serde_json::Value) -> Result<Envelope, ApiError> {
    if !v.is_object() {
        return Err(ApiError::field(
            "body",
            "expected an object with `name` and `spec`",
        ));
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::field(&field, e.inner().to_string())
    })
}

pub fn parse_kind(s: &str) -> Result<Kind, ApiError> {
    match Kind::from_plural(s) {
        Some(k) if k != Kind::Mesh => Ok(k),
        _ => Err(ApiError::not_found(format!(
            "no resource kind {s:?}: use services, endpoints, routes, gateways, \
             authorization-policies or certificates"
        ))),
    }
}

pub fn dry_run(q: &HashMap<String, String>) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "dryRun",
            format!("{other:?} is not true or false"),
        )),
    }
}

/// `pageSize` (1 to 1000, default 100) and the opaque `pageToken` of the previous page.
pub fn paging(q: &HashMap<String, String>) -> Result<(Option<String>, u32), ApiError> {
    let size = match q.get("pageSize") {
        None => 100,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "pageSize",
                    format!("{s:?} is not a number from 1 to 1000"),
                ));
            }
        },
    };
    let after = match q.get("pageToken").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("pageToken", "not a token this API gave out")
                })?,
        ),
    };
    Ok((after, size))
}

pub fn page_token(after: Option<String>) -> Option<String> {
    after.map(|a| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(a))
}

fn precondition(headers: &HeaderMap, create: bool) -> Result<Precondition, ApiError> {
    match headers.get(header::IF_MATCH) {
        Some(v) => {
            let tag = v
                .to_str()
                .map_err(|_| ApiError::bad_request("If-Match", "not a valid etag"))?
                .trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            Ok(Precondition::IfMatch(tag.to_string()))
        }
        None if create => Ok(Precondition::Create),
        None => match headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        {
            Some("*") => Ok(Precondition::Create),
            _ => Ok(Precondition::None),
        },
    }
}

fn with_etag(status: StatusCode, r: &StoredResource, location: Option<String>) -> Response {
    let mut resp = (status, axum::Json(ResourceView::from(r))).into_response();
    if let Ok(v) = HeaderValue::from_str(&r.etag()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if let Some(loc) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

struct WriteReq<'a> {
    /// Who writes, for the history.
    caller: &'a Caller,
    tenant: &'a str,
    mesh: &'a str,
    kind: Kind,
    path_name: Option<&'a str>,
}

async fn write(
    state: &AppState,
    w: WriteReq<'_>,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: Body,
    collection_path: String,
) -> Result<Response, ApiError> {
    let dry = dry_run(q)?;
    let env = envelope(body::parse(headers, body).await?)?;
    let name = match (w.path_name, env.name) {
        (Some(p), Some(b)) if p != b => {
            return Err(ApiError::field(
                "name",
                format!("the body names {b:?} but the path names {p:?}"),
            ));
        }
        (Some(p), _) => p.to_string(),
        (None, Some(b)) => b,
        (None, None) => return Err(ApiError::field("name", "missing: name the resource")),
    };
    validate_name("name", &name)
        .map_err(|e| ApiError::invalid(switchboard_model::ValidationErrors(vec![e])))?;
    validate_labels("labels", &env.labels)
        .map_err(|e| ApiError::invalid(switchboard_model::ValidationErrors(e)))?;
    let spec_json = match (env.spec, w.kind) {
        (Some(s), _) => s,
        (None, Kind::Mesh) => serde_json::json!({}),
        (None, _) => return Err(ApiError::field("spec", "missing: a resource needs a spec")),
    };
    let spec = Spec::parse(w.kind, spec_json)?;
    spec.validate()?;
    let spec = match spec {
        Spec::Certificate(c) => crate::certificates::seal(state, w.tenant, w.mesh, &name, *c)?,
        other => other,
    };
    let create = w.path_name.is_none();
    let opts = WriteOptions {
        precondition: precondition(headers, create)?,
        dry_run: dry,
        labels: env.labels,
        actor: Some(w.caller.actor()),
    };
    let stored = if w.kind == Kind::Mesh {
        // A new mesh gets its CA in the same transaction (kept when the mesh already has one).
        let ca = crate::cas::generate_sealed(state, w.tenant, &name)?;
        state
            .store
            .put_mesh_with_ca(w.tenant, &name, &spec, &opts, &ca)
            .await?
    } else {
        state
            .store
            .put_spec(w.tenant, w.mesh, &name, &spec, &opts)
            .await?
    };
    let status = if create && !dry {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_etag(
        status,
        &stored,
        create.then(|| format!("{collection_path}/{name}")),
    ))
}

async fn remove(
    state: &AppState,
    caller: &Caller,
    key: ResourceKey,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let opts = WriteOptions {
        precondition: precondition(headers, false)?,
        dry_run: dry_run(q)?,
        actor: Some(caller.actor()),
        ..WriteOptions::default()
    };
    state.store.delete(&key, &opts).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_kind(
    state: &AppState,
    tenant: &str,
    mesh: &str,
    kind: Kind,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (after, size) = paging(q)?;
    if kind != Kind::Mesh {
        state.store.get(&ResourceKey::mesh(tenant, mesh)).await?;
    } else {
        state.store.get_tenant(tenant).await?;
    }
    let page = state
        .store
        .list(tenant, mesh, kind, after.as_deref(), size)
        .await?;
    let items: Vec<ResourceView> = page.items.iter().map(ResourceView::from).collect();
    Ok(axum::Json(serde_json::json!({
        "items": items,
        "nextPageToken": page_token(page.next_after),
    }))
    .into_response())
}

type Q = Query<HashMap<String, String>>;
/// `(tenant, mesh)` of a collection in a mesh.
type Scope = Path<(String, String)>;
/// `(tenant, mesh, name)` of a resource in a mesh.
type Item = Path<(String, String, String)>;

fn spec_schema(kind: Kind) -> &'static str {
    match kind {
        Kind::Mesh => "MeshSpec",
        Kind::Service => "ServiceSpec",
        Kind::Endpoint => "EndpointSpec",
        Kind::Route => "RouteSpec",
        Kind::Gateway => "GatewaySpec",
        Kind::AuthorizationPolicy => "AuthorizationPolicySpec",
        Kind::Certificate => "CertificateSpec",
    }
}

/// The schemas a kind's operations name: the view and the kind's spec.
fn with_schemas(r: Route, kind: Kind) -> Route {
    let r = r.schema::<ResourceView>();
    match kind {
        Kind::Mesh => r.schema::<MeshSpec>(),
        Kind::Service => r.schema::<ServiceSpec>(),
        Kind::Endpoint => r.schema::<EndpointSpec>(),
        Kind::Route => r.schema::<RouteSpec>(),
        Kind::Gateway => r.schema::<GatewaySpec>(),
        Kind::AuthorizationPolicy => r.schema::<AuthorizationPolicySpec>(),
        Kind::Certificate => r.schema::<CertificateSpec>(),
    }
}

/// Every kind's collection and items, from the kind registry: meshes at
/// `/v1/tenants/{tenant}/meshes[/{mesh}]`, the other kinds at `…/meshes/{mesh}/{plural}[/{name}]`.
pub(crate) fn routes() -> Vec<Route> {
    Kind::ALL.into_iter().flat_map(kind_routes).collect()
}

fn kind_routes(kind: Kind) -> Vec<Route> {
    let tp = tenant_param();
    let mp = param("mesh", ParameterIn::Path, "mesh name");
    let (coll, item, scope, item_params) = if kind == Kind::Mesh {
        let c = "/v1/tenants/{tenant}/meshes".to_string();
        (
            c.clone(),
            format!("{c}/{{mesh}}"),
            vec![tp.clone()],
            vec![tp, mp],
        )
    } else {
        let c = format!("/v1/tenants/{{tenant}}/meshes/{{mesh}}/{}", kind.plural());
        let np = param("name", ParameterIn::Path, "resource name");
        let scope = vec![tp.clone(), mp.clone()];
        (c.clone(), format!("{c}/{{name}}"), scope, vec![tp, mp, np])
    };
    let if_match = param(
        "If-Match",
        ParameterIn::Header,
        "write only if the etag still matches (412 otherwise)",
    );
    let with_page = [scope.clone(), page_params().to_vec()].concat();
    let with_dry = [scope, vec![dry_run_param()]].concat();
    let item_write = [item_params.clone(), vec![dry_run_param(), if_match]].concat();
    let (k, s) = (kind.singular(), spec_schema(kind));
    let list_op = op(
        format!("List {}", kind.plural()),
        &with_page,
        None,
        ("200", None),
    );
    let a = if k.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    let create_op = op(
        format!("Create {a} {k} (body: name and {s})"),
        &with_dry,
        Some(s),
        ("201", Some("ResourceView")),
    );
    let get_op = op(
        format!("Get {a} {k}"),
        &item_params,
        None,
        ("200", Some("ResourceView")),
    );
    let put_op = op(
        format!("Create or replace {a} {k} (body: {s} under `spec`)"),
        &item_write,
        Some(s),
        ("200", Some("ResourceView")),
    );
    let delete_op = op(format!("Delete {a} {k}"), &item_write, None, ("204", None));
    let routes = if kind == Kind::Mesh {
        vec![
            Route::new(HttpMethod::Get, &coll, list_op, list_meshes),
            Route::new(HttpMethod::Post, &coll, create_op, create_mesh),
            Route::new(HttpMethod::Get, &item, get_op, get_mesh),
            Route::new(HttpMethod::Put, &item, put_op, put_mesh),
            Route::new(HttpMethod::Delete, &item, delete_op, delete_mesh),
        ]
    } else {
        vec![
            Route::new(
                HttpMethod::Get,
                &coll,
                list_op,
                move |State(s): State<AppState>, c: Caller, Path((t, m)): Scope, Query(q): Q| async move {
                    c.check_tenant(&t)?;
                    list_kind(&s, &t, &m, kind, &q).await
                },
            ),
            Route::new(
                HttpMethod::Post,
                &coll,
                create_op,
                move |State(s): State<AppState>,
                      c: Caller,
                      Path((t, m)): Scope,
                      Query(q): Q,
                      h: HeaderMap,
                      b: Body| async move {
                    c.check_tenant(&t)?;
                    write_in(&s, &c, &t, &m, kind, None, &q, &h, b).await
                },
            ),
            Route::new(
                HttpMethod::Get,
                &item,
                get_op,
                move |State(s): State<AppState>, c: Caller, Path((t, m, n)): Item| async move {
                    c.check_tenant(&t)?;
                    get_one(&s, ResourceKey::new(&t, &m, kind, &n)).await
                },
            ),
            Route::new(
                HttpMethod::Put,
                &item,
                put_op,
                move |State(s): State<AppState>,
                      c: Caller,
                      Path((t, m, n)): Item,
                      Query(q): Q,
                      h: HeaderMap,
                      b: Body| async move {
                    c.check_tenant(&t)?;
                    write_in(&s, &c, &t, &m, kind, Some(&n), &q, &h, b).await
                },
            ),
            Route::new(
                HttpMethod::Delete,
                &item,
                delete_op,
                move |State(s): State<AppState>,
                      c: Caller,
                      Path((t, m, n)): Item,
                      Query(q): Q,
                      h: HeaderMap| async move {
                    c.check_tenant(&t)?;
                    remove(&s, &c, ResourceKey::new(&t, &m, kind, &n), &h, &q).await
                },
            ),
        ]
    };
    routes.into_iter().map(|r| with_schemas(r, kind)).collect()
}

/// `…/meshes/{mesh}/{kind}[/{name}]` for what the routes of each kind do not match: answers
/// 404 naming the kinds for an unknown one (after authenticating, like any tenant path), and
/// serves a kind spelled otherwise (percent-encoded) as its own route. Not an operation of its
/// own, so not in the document.
pub(crate) fn any_kind(router: Router<AppState>) -> Router<AppState> {
    let t = "/v1/tenants/{tenant}/meshes/{mesh}/{kind}";
    router.route(t, get(list).post(create)).route(
        &format!("{t}/{{name}}"),
        get(get_any).put(put).delete(delete),
    )
}

async fn get_one(s: &AppState, key: ResourceKey) -> Result<Response, ApiError> {
    let r = s.store.get(&key).await?;
    Ok(with_etag(StatusCode::OK, &r, None))
}

/// A write to the collection (`name` None: POST, the name from the body) or to one resource
/// (PUT); the collection path is what a POST's `Location` is built from.
#[allow(clippy::too_many_arguments)]
async fn write_in(
    s: &AppState,
    caller: &Caller,
    tenant: &str,
    mesh: &str,
    kind: Kind,
    name: Option<&str>,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let collection = match name {
        None => format!("/v1/tenants/{tenant}/meshes/{mesh}/{}", kind.plural()),
        Some(_) => String::new(),
    };
    let w = WriteReq {
        caller,
        tenant,
        mesh,
        kind,
        path_name: name,
    };
    write(s, w, headers, q, body, collection).await
}

async fn list_meshes(
    State(s): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    list_kind(&s, &tenant, "", Kind::Mesh, &q).await
}

async fn create_mesh(
    State(s): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let w = WriteReq {
        caller: &caller,
        tenant: &tenant,
        mesh: "",
        kind: Kind::Mesh,
        path_name: None,
    };
    write(
        &s,
        w,
        &headers,
        &q,
        body,
        format!("/v1/tenants/{tenant}/meshes"),
    )
    .await
}

async fn get_mesh(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    get_one(&s, ResourceKey::mesh(&tenant, &mesh)).await
}

async fn put_mesh(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    write_in(
        &s,
        &caller,
        &tenant,
        "",
        Kind::Mesh,
        Some(&mesh),
        &q,
        &headers,
        body,
    )
    .await
}

async fn delete_mesh(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    remove(&s, &caller, ResourceKey::mesh(&tenant, &mesh), &headers, &q).await
}

async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh, kind)): Path<(String, String, String)>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let kind = parse_kind(&kind)?;
    list_kind(&s, &tenant, &mesh, kind, &q).await
}

async fn create(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh, kind)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let kind = parse_kind(&kind)?;
    write_in(&s, &caller, &tenant, &mesh, kind, None, &q, &headers, body).await
}

async fn get_any(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh, kind, name)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let kind = parse_kind(&kind)?;
    get_one(&s, ResourceKey::new(&tenant, &mesh, kind, &name)).await
}

async fn put(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh, kind, name)): Path<(String, String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let kind = parse_kind(&kind)?;
    write_in(
        &s,
        &caller,
        &tenant,
        &mesh,
        kind,
        Some(&name),
        &q,
        &headers,
        body,
    )
    .await
}

async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh, kind, name)): Path<(String, String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let kind = parse_kind(&kind)?;
    remove(
        &s,
        &caller,
        ResourceKey::new(&tenant, &mesh, kind, &name),
        &headers,
        &q,
    )
    .await
}
