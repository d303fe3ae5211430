//! Tenants: created and deleted by the platform admin; a tenant's key sees only its own.

use crate::auth::Caller;
use crate::openapi::{Route, dry_run_param, op, page_params, tenant_param};
use crate::resources::{dry_run, page_token, paging, rfc3339};
use crate::{ApiError, AppState, body};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use switchboard_model::validate_name;
use switchboard_store::Tenant;
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::{ObjectBuilder, Ref, Type};

pub(crate) fn routes() -> Vec<Route> {
    let tp = tenant_param();
    let new_tenant = ObjectBuilder::new()
        .property("name", ObjectBuilder::new().schema_type(Type::String))
        .property("spec", Ref::from_schema_name("TenantSpec"))
        .required("name");
    vec![
        Route::new(
            HttpMethod::Get,
            "/v1/tenants",
            op("List tenants".into(), &page_params(), None, ("200", None)),
            list,
        ),
        Route::new(
            HttpMethod::Post,
            "/v1/tenants",
            op(
                "Create a tenant (platform admin)".into(),
                &[dry_run_param()],
                Some("NewTenant"),
                ("201", Some("TenantView")),
            ),
            create,
        )
        .schema_named("NewTenant", new_tenant)
        .schema::<TenantSpec>()
        .schema::<TenantView>(),
        Route::new(
            HttpMethod::Get,
            "/v1/tenants/{tenant}",
            op(
                "Get a tenant".into(),
                std::slice::from_ref(&tp),
                None,
                ("200", Some("TenantView")),
            ),
            get,
        )
        .schema::<TenantView>(),
        Route::new(
            HttpMethod::Delete,
            "/v1/tenants/{tenant}",
            op(
                "Delete a tenant and everything it owns".into(),
                std::slice::from_ref(&tp),
                None,
                ("204", None),
            ),
            delete,
        ),
    ]
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewTenant {
    name: String,
    #[serde(default)]
    spec: TenantSpec,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    name: String,
    revision: i64,
    create_time: String,
    update_time: String,
    spec: serde_json::Value,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        Self {
            name: t.name.clone(),
            revision: t.revision,
            create_time: rfc3339(t.create_time),
            update_time: rfc3339(t.update_time),
            spec: t.spec.clone(),
        }
    }
}

pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::forbidden(
            "only the platform admin creates tenants",
        ));
    }
    let dry = dry_run(&q)?;
    let v = body::parse(&headers, body).await?;
    let t: NewTenant = serde_path_to_error::deserialize(v).map_err(|e| {
        let p = e.path().to_string();
        ApiError::field(if p == "." { "body" } else { &p }, e.inner().to_string())
    })?;
    validate_name("name", &t.name)
        .map_err(|e| ApiError::invalid(switchboard_model::ValidationErrors(vec![e])))?;
    if t.spec.display_name.as_ref().is_some_and(|d| d.len() > 256) {
        return Err(ApiError::field(
            "spec.displayName",
            "longer than 256 characters",
        ));
    }
    let spec = serde_json::to_value(&t.spec).unwrap_or_default();
    let created = s.store.create_tenant(&t.name, &spec, dry).await?;
    let status = if dry {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(TenantView::from(&created))).into_response())
}

pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (after, size) = paging(&q)?;
    let (items, next) = match &caller {
        Caller::Admin => {
            let page = s.store.list_tenants(after.as_deref(), size).await?;
            (page.items, page.next_after)
        }
        // A tenant's key lists just its own tenant.
        Caller::Tenant { tenant: t, .. } => (vec![s.store.get_tenant(t).await?], None),
    };
    let items: Vec<TenantView> = items.iter().map(TenantView::from).collect();
    Ok(
        axum::Json(serde_json::json!({"items": items, "nextPageToken": page_token(next)}))
            .into_response(),
    )
}

pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let t = s.store.get_tenant(&tenant).await?;
    Ok(axum::Json(TenantView::from(&t)).into_response())
}

pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    if !caller.is_admin() {
        return Err(ApiError::forbidden(
            "only the platform admin deletes tenants",
        ));
    }
    s.store.delete_tenant(&tenant, dry_run(&q)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
