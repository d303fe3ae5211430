//! API keys and proxy tokens of a tenant. The secret appears once, in the creation response.
//! A proxy token is opaque (`sbp_…`) or, with `format: jwt`, a signed JWT with an expiry for
//! gRPC's `jwt_token_file` call credentials (gRFC A97).

use crate::auth::Caller;
use crate::openapi::{Route, op, param, tenant_param};
use crate::resources::rfc3339;
use crate::{ApiError, AppState, body};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use switchboard_store::{Credential, CredentialKind, HistoryOp, ResourceKey};
use utoipa::openapi::path::{HttpMethod, ParameterIn};

/// The API keys' and the proxy tokens' collections: list, create, revoke.
pub(crate) fn routes() -> Vec<Route> {
    let tp = tenant_param();
    let mut routes = vec![];
    for (kind, coll, what) in [
        (CredentialKind::ApiKey, "api-keys", "API key"),
        (CredentialKind::ProxyToken, "proxy-tokens", "proxy token"),
    ] {
        let base = format!("/v1/tenants/{{tenant}}/{coll}");
        routes.push(Route::new(
            HttpMethod::Get,
            &base,
            op(
                format!("List {what}s"),
                std::slice::from_ref(&tp),
                None,
                ("200", None),
            ),
            move |State(s): State<AppState>, c: Caller, Path(t): Path<String>| list(s, c, t, kind),
        ));
        routes.push(
            Route::new(
                HttpMethod::Post,
                &base,
                op(
                    format!("Create a {what} (its secret is shown once)"),
                    std::slice::from_ref(&tp),
                    Some("NewCredentialRequest"),
                    ("201", Some("CredentialView")),
                ),
                move |State(s): State<AppState>,
                      c: Caller,
                      Path(t): Path<String>,
                      h: HeaderMap,
                      b: Body| create(s, c, t, kind, h, b),
            )
            .schema::<NewCredentialRequest>()
            .schema::<CredentialView>(),
        );
        routes.push(Route::new(
            HttpMethod::Delete,
            format!("{base}/{{id}}"),
            op(
                format!("Revoke a {what} (the xDS streams of a proxy token end, on every replica)"),
                &[tp.clone(), param("id", ParameterIn::Path, "credential id")],
                None,
                ("204", None),
            ),
            move |State(s): State<AppState>, c: Caller, Path((t, id)): Path<(String, String)>| {
                revoke(s, c, t, id, kind)
            },
        ));
    }
    routes
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewCredentialRequest {
    #[serde(default)]
    pub description: String,
    /// Proxy tokens only: limit the token to one mesh.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Proxy tokens only: `opaque` (default, never expires) or `jwt` (a signed JWT with
    /// `exp`, for gRPC's `jwt_token_file` call credentials).
    #[serde(default)]
    pub format: TokenFormat,
    /// JWT proxy tokens only: how long the JWT is valid, e.g. `24h` (default 24h, 1m to 8760h).
    #[serde(default)]
    pub expires_in: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    #[default]
    Opaque,
    Jwt,
}

/// The lifetime of a JWT proxy token when the request names none.
const DEFAULT_JWT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
const MIN_JWT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);
const MAX_JWT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// The JWT lifetime `req` asks for, if it asks for a JWT.
fn jwt_lifetime(
    req: &NewCredentialRequest,
    kind: CredentialKind,
    store_has_no_key: bool,
) -> Result<Option<std::time::Duration>, ApiError> {
    if req.format == TokenFormat::Opaque {
        return match req.expires_in {
            Some(_) => Err(ApiError::field(
                "expiresIn",
                "only JWT proxy tokens expire: add \"format\": \"jwt\"",
            )),
            None => Ok(None),
        };
    }
    if kind == CredentialKind::ApiKey {
        return Err(ApiError::field(
            "format",
            "API keys are opaque; only proxy tokens may be JWTs",
        ));
    }
    if store_has_no_key {
        return Err(ApiError::field(
            "format",
            "JWT proxy tokens are off: the control plane has no proxy_jwt_key_file (required \
             with PostgreSQL, where every replica must verify them)",
        ));
    }
    let Some(text) = &req.expires_in else {
        return Ok(Some(DEFAULT_JWT_LIFETIME));
    };
    let lifetime = switchboard_model::duration::parse(text)
        .map_err(|e| ApiError::field("expiresIn", e))?
        .as_std();
    if !(MIN_JWT_LIFETIME..=MAX_JWT_LIFETIME).contains(&lifetime) {
        return Err(ApiError::field(
            "expiresIn",
            "a JWT proxy token lives from 1m to 8760h (a year)",
        ));
    }
    Ok(Some(lifetime))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mesh: Option<String>,
    description: String,
    create_time: String,
    /// Present only in the response that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// JWT proxy tokens, in the response that created them: when the JWT expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    expire_time: Option<String>,
}

impl CredentialView {
    fn new(c: &Credential, secret: Option<String>) -> Self {
        Self {
            id: c.id.clone(),
            mesh: c.mesh.clone(),
            description: c.description.clone(),
            create_time: rfc3339(c.create_time),
            secret,
            expire_time: None,
        }
    }
}

async fn create(
    s: AppState,
    caller: Caller,
    tenant: String,
    kind: CredentialKind,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    s.store.get_tenant(&tenant).await?;
    let has_body = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .is_none_or(|v| v != "0");
    let req: NewCredentialRequest = if has_body {
        match body::parse(&headers, body).await {
            Ok(v) => serde_path_to_error::deserialize(v).map_err(|e| {
                let p = e.path().to_string();
                ApiError::field(if p == "." { "body" } else { &p }, e.inner().to_string())
            })?,
            Err(e) if e.status == StatusCode::BAD_REQUEST && e.detail.contains("empty") => {
                NewCredentialRequest::default()
            }
            Err(e) => return Err(e),
        }
    } else {
        NewCredentialRequest::default()
    };
    if req.description.len() > 256 {
        return Err(ApiError::field("description", "longer than 256 characters"));
    }
    if let Some(m) = &req.mesh {
        if kind == CredentialKind::ApiKey {
            return Err(ApiError::field(
                "mesh",
                "API keys are per tenant; only proxy tokens take a mesh",
            ));
        }
        if s.store.get(&ResourceKey::mesh(&tenant, m)).await.is_err() {
            return Err(ApiError::field(
                "mesh",
                format!("mesh {m:?} does not exist"),
            ));
        }
    }
    let lifetime = jwt_lifetime(&req, kind, s.store.proxy_jwt_key().is_none())?;
    let (created, expire) = match lifetime {
        None => (
            s.store
                .create_credential(&tenant, kind, req.mesh.as_deref(), &req.description)
                .await?,
            None,
        ),
        Some(lifetime) => {
            let (created, exp) = s
                .store
                .create_proxy_jwt(&tenant, req.mesh.as_deref(), &req.description, lifetime)
                .await?;
            (created, Some(exp))
        }
    };
    tracing::info!(tenant = %tenant, id = %created.credential.id, kind = ?kind, jwt = expire.is_some(), "credential created");
    audit(
        &s,
        &caller,
        &tenant,
        kind,
        &created.credential.id,
        HistoryOp::Create,
    )
    .await;
    let mut view = CredentialView::new(&created.credential, Some(created.secret));
    view.expire_time = expire.map(|exp| rfc3339(exp.saturating_mul(1000)));
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn list(
    s: AppState,
    caller: Caller,
    tenant: String,
    kind: CredentialKind,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    s.store.get_tenant(&tenant).await?;
    let items: Vec<CredentialView> = s
        .store
        .list_credentials(&tenant, kind)
        .await?
        .iter()
        .map(|c| CredentialView::new(c, None))
        .collect();
    Ok(axum::Json(serde_json::json!({ "items": items })).into_response())
}

async fn revoke(
    s: AppState,
    caller: Caller,
    tenant: String,
    id: String,
    kind: CredentialKind,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    s.store.revoke_credential(&tenant, kind, &id).await?;
    tracing::info!(tenant = %tenant, id = %id, kind = ?kind, "credential revoked");
    audit(&s, &caller, &tenant, kind, &id, HistoryOp::Delete).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Records a credential's creation or revocation in the audit log. After the write, not in
/// its transaction: a credential created must be answered with its secret even when the
/// audit row cannot be written, so that failure is logged instead.
async fn audit(
    s: &AppState,
    caller: &Caller,
    tenant: &str,
    kind: CredentialKind,
    id: &str,
    op: HistoryOp,
) {
    if let Err(e) = s
        .store
        .record_audit(tenant, kind.as_str(), id, op, &caller.actor())
        .await
    {
        tracing::warn!(%tenant, %id, error = %e, "cannot record a credential in the audit log");
    }
}
