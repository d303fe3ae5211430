//! `GET /v1/tenants/{t}/changes?since=N&wait=10s`: what changed after revision N, waiting (long
//! poll) up to `wait` for the next commit when nothing has yet. Commits made through any
//! replica arrive here through the store's notices.

use crate::auth::Caller;
use crate::openapi::{Route, op, param, tenant_param};
use crate::resources::rfc3339;
use crate::{ApiError, AppState};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use switchboard_store::{ChangeOp, Notice};
use utoipa::openapi::path::{HttpMethod, ParameterIn};

const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) fn routes() -> Vec<Route> {
    vec![Route::new(
        HttpMethod::Get,
        "/v1/tenants/{tenant}/changes",
        op(
            "Changes after a revision, waiting up to `wait` for the next (410 when the \
             change log was pruned past `since`: re-read, then follow from the current \
             revision)"
                .into(),
            &[
                tenant_param(),
                param("since", ParameterIn::Query, "revision"),
                param("wait", ParameterIn::Query, "e.g. 10s"),
            ],
            None,
            ("200", None),
        ),
        get,
    )]
}

pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let since = match q.get("since") {
        None => 0,
        Some(v) => v.parse::<i64>().map_err(|_| {
            ApiError::bad_request("since", format!("{v:?} is not a revision number"))
        })?,
    };
    let wait = match q.get("wait") {
        None => std::time::Duration::ZERO,
        Some(v) => switchboard_model::duration::parse(v)
            .map_err(|e| ApiError::bad_request("wait", e))?
            .as_std()
            .min(MAX_WAIT),
    };
    // Subscribe before reading so a commit between the read and the wait is not missed.
    let mut rx = s.store.subscribe();
    let mut changes = s.store.changes_since(&tenant, since, 1000).await?;
    if changes.is_empty() && !wait.is_zero() {
        s.store.get_tenant(&tenant).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => break,
                Ok(Ok(Notice::Committed {
                    tenant: t,
                    revision,
                })) if t == tenant && revision > since => break,
                Ok(Ok(Notice::Resync)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
            }
        }
        changes = s.store.changes_since(&tenant, since, 1000).await?;
    }
    let revision = s.store.revision(&tenant).await?;
    let items: Vec<_> = changes
        .iter()
        .map(|c| {
            serde_json::json!({
                "revision": c.revision,
                "mesh": c.mesh,
                // The kind's token (`service`, `authorization-policy`), not its prose name.
                "kind": c.kind,
                "name": c.name,
                "op": if c.op == ChangeOp::Delete { "delete" } else { "put" },
                "time": rfc3339(c.time),
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "revision": revision, "changes": items })).into_response())
}
