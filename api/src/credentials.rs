//! API keys and proxy tokens of a tenant. The secret appears once, in the creation response.

use crate::auth::Caller;
use crate::openapi::{Route, op, param, tenant_param};
use crate::resources::rfc3339;
use crate::{ApiError, AppState, body};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use switchboard_store::{Credential, CredentialKind, ResourceKey};
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
}

impl CredentialView {
    fn new(c: &Credential, secret: Option<String>) -> Self {
        Self {
            id: c.id.clone(),
            mesh: c.mesh.clone(),
            description: c.description.clone(),
            create_time: rfc3339(c.create_time),
            secret,
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
    let created = s
        .store
        .create_credential(&tenant, kind, req.mesh.as_deref(), &req.description)
        .await?;
    tracing::info!(tenant = %tenant, id = %created.credential.id, kind = ?kind, "credential created");
    Ok((
        StatusCode::CREATED,
        axum::Json(CredentialView::new(
            &created.credential,
            Some(created.secret),
        )),
    )
        .into_response())
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
    Ok(StatusCode::NO_CONTENT.into_response())
}
