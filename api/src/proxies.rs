//! Connected proxies and what they are sent: `GET …/meshes/{m}/proxies`, `…/proxies/{node}`
//! and `…/proxies/{node}/config`. Status comes from the store, where every replica writes its
//! own streams', so any replica answers for all.

use crate::auth::Caller;
use crate::resources::rfc3339;
use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchboard_store::{ProxyRow, ResourceKey};

fn view(r: &ProxyRow) -> Value {
    let mut v = json!({
        "node": r.node,
        "nodeId": format!("tenants/{}/meshes/{}/nodes/{}", r.tenant, r.mesh, r.node),
        "replica": r.replica,
        "streamId": r.stream_id,
        "connectedSince": rfc3339(r.connected_since),
    });
    if let (Value::Object(out), Value::Object(status)) = (&mut v, &r.status) {
        for (k, val) in status {
            out.insert(k.clone(), val.clone());
        }
    }
    v
}

async fn mesh_exists(s: &AppState, tenant: &str, mesh: &str) -> Result<(), ApiError> {
    s.store.get(&ResourceKey::mesh(tenant, mesh)).await?;
    Ok(())
}

pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    mesh_exists(&s, &tenant, &mesh).await?;
    let rows = s.store.list_proxies(&tenant, &mesh, None).await?;
    Ok(axum::Json(json!({"items": rows.iter().map(view).collect::<Vec<_>>()})).into_response())
}

pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh, node)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    mesh_exists(&s, &tenant, &mesh).await?;
    let rows = s.store.list_proxies(&tenant, &mesh, Some(&node)).await?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!(
            "no proxy {node:?} is connected to mesh {mesh:?}"
        )));
    }
    Ok(
        axum::Json(json!({"node": node, "streams": rows.iter().map(view).collect::<Vec<_>>()}))
            .into_response(),
    )
}

pub async fn config(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh, node)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    mesh_exists(&s, &tenant, &mesh).await?;
    match s.xds.node_config(&tenant, &mesh, &node).await {
        Ok(Some(v)) => Ok(axum::Json(v).into_response()),
        Ok(None) => Err(ApiError::not_found(format!(
            "no proxy {node:?} is connected to mesh {mesh:?}"
        ))),
        Err(switchboard_xds_server::report::ReportError::Store(e)) => Err(e.into()),
    }
}
