//! Connected proxies and what they are sent: `GET …/meshes/{m}/proxies`, `…/proxies/{node}`
//! and `…/proxies/{node}/config`. Status comes from the store, where every replica writes its
//! own streams', so any replica answers for all. What a node is sent comes through the
//! [`NodeConfigs`] port, which the process's xDS server implements.

use crate::auth::Caller;
use crate::openapi::{Route, op, param, tenant_param};
use crate::plan::{PlanInput, PlanOutcome, PlanUnavailable};
use crate::resources::rfc3339;
use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use switchboard_store::{ProxyRow, ProxyStatusRecord, ResourceKey, StoreError};
use utoipa::openapi::path::{HttpMethod, ParameterIn};

/// What [`NodeConfigs::node_config`] returns.
pub type NodeConfigFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<serde_json::Value>, StoreError>> + Send + 'a>>;

/// Where the API learns what a node is being sent, so that it needs no xDS server of its own
/// (the binary plugs its xDS server in; tests plug in a fake).
pub trait NodeConfigs: Send + Sync + 'static {
    /// What the node is being sent, per type, as JSON; `None` when it has no live stream on
    /// any replica.
    fn node_config<'a>(
        &'a self,
        tenant: &'a str,
        mesh: &'a str,
        node: &'a str,
    ) -> NodeConfigFuture<'a>;

    /// What a change would send to whom (`POST …/plan`): both versions of the mesh
    /// translated, the resources that differ and the streams that would receive each. CPU
    /// work, called off the async runtime. A process without an xDS server (the API's own
    /// tests of other routes, benchmarks) does not plan.
    /// `None` when `input` has no stored mesh and the port does not hold its revision
    /// (any more): the caller reads the mesh and asks again.
    fn plan(&self, input: PlanInput) -> Result<Option<PlanOutcome>, PlanUnavailable> {
        let _ = input;
        Err(PlanUnavailable)
    }

    /// Whether the port holds the mesh translated at this tenant revision, so that a plan
    /// against it needs no stored mesh.
    fn holds(&self, tenant: &str, mesh: &str, revision: i64) -> bool {
        let _ = (tenant, mesh, revision);
        false
    }
}

/// One stream as the API shows it: where it is, then the status its replica recorded.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StreamView<'a> {
    node: &'a str,
    node_id: String,
    replica: &'a str,
    stream_id: i64,
    connected_since: String,
    #[serde(flatten)]
    status: &'a ProxyStatusRecord,
}

/// `GET …/proxies`.
#[derive(Serialize)]
struct StreamList<'a> {
    items: Vec<StreamView<'a>>,
}

/// `GET …/proxies/{node}`.
#[derive(Serialize)]
struct NodeStreams<'a> {
    node: &'a str,
    streams: Vec<StreamView<'a>>,
}

fn view(r: &ProxyRow) -> StreamView<'_> {
    StreamView {
        node: &r.node,
        node_id: format!("tenants/{}/meshes/{}/nodes/{}", r.tenant, r.mesh, r.node),
        replica: &r.replica,
        stream_id: r.stream_id,
        connected_since: rfc3339(r.connected_since),
        status: &r.status,
    }
}

pub(crate) fn routes() -> Vec<Route> {
    let base = "/v1/tenants/{tenant}/meshes/{mesh}/proxies";
    let scope = [
        tenant_param(),
        param("mesh", ParameterIn::Path, "mesh name"),
    ];
    let node = [
        scope.to_vec(),
        vec![param("node", ParameterIn::Path, "node name")],
    ]
    .concat();
    vec![
        Route::new(
            HttpMethod::Get,
            base,
            op(
                "The proxies connected to a mesh: one item per stream, on any replica".into(),
                &scope,
                None,
                ("200", None),
            ),
            list,
        ),
        Route::new(
            HttpMethod::Get,
            format!("{base}/{{node}}"),
            op(
                "A node's streams: role, and per type what was sent, ACKed and NACKed".into(),
                &node,
                None,
                ("200", None),
            ),
            get,
        ),
        Route::new(
            HttpMethod::Get,
            format!("{base}/{{node}}/config"),
            op(
                "What a node is being sent, per type, as proto3 JSON".into(),
                &node,
                None,
                ("200", None),
            ),
            config,
        ),
    ]
}

async fn mesh_exists(s: &AppState, tenant: &str, mesh: &str) -> Result<(), ApiError> {
    s.store.get(&ResourceKey::mesh(tenant, mesh)).await?;
    Ok(())
}

async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    mesh_exists(&s, &tenant, &mesh).await?;
    let rows = s.store.list_proxies(&tenant, &mesh, None).await?;
    let items = rows.iter().map(view).collect();
    Ok(axum::Json(StreamList { items }).into_response())
}

async fn get(
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
    let streams = rows.iter().map(view).collect();
    Ok(axum::Json(NodeStreams {
        node: &node,
        streams,
    })
    .into_response())
}

async fn config(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh, node)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    mesh_exists(&s, &tenant, &mesh).await?;
    match s.node_configs.node_config(&tenant, &mesh, &node).await? {
        Some(v) => Ok(axum::Json(v).into_response()),
        None => Err(ApiError::not_found(format!(
            "no proxy {node:?} is connected to mesh {mesh:?}"
        ))),
    }
}
