//! `GET /v1/tenants/{t}/meshes/{m}/rollout?revision=N`: has a change reached every proxy of
//! the mesh? How many proxies have ACKed it for everything they are sent, and for each that
//! has not, why: a NACK (type, error), disconnected (since when), a response out and not yet
//! answered, or still on an older revision. Read from the streams' rows that every replica
//! writes (`Store::rollout_rows`), so any replica answers for all.
//!
//! Revisions count the tenant's writes and most do not touch a given mesh, so a proxy is
//! compared with the mesh's own latest change at or before N (`Store::mesh_revision_at`): a
//! proxy whose mesh has not changed since it last ACKed has everything N means for it.

use crate::auth::Caller;
use crate::openapi::{Route, op, param, tenant_param};
use crate::{ApiError, AppState, rfc3339};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use switchboard_store::{ResourceKey, RolloutRow, TypeState};
use utoipa::openapi::path::{HttpMethod, ParameterIn};

/// Proxies listed as not having the revision, at most; `notAcked` counts them all.
const MAX_LISTED: usize = 1000;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(
            HttpMethod::Get,
            "/v1/tenants/{tenant}/meshes/{mesh}/rollout",
            op(
                "Whether a revision has reached every proxy of the mesh: how many ACKed it, \
                 and for each that did not, why (NACK and its error, disconnected since when, \
                 pushing, or behind)"
                    .into(),
                &[
                    tenant_param(),
                    param("mesh", ParameterIn::Path, "mesh name"),
                    param(
                        "revision",
                        ParameterIn::Query,
                        "a committed revision of the tenant (default: the current one)",
                    ),
                ],
                None,
                ("200", Some("Rollout")),
            ),
            get,
        )
        .schema::<Rollout>(),
    ]
}

/// The answer: where revision `revision` stands across the mesh's proxies.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Rollout {
    /// The revision asked about.
    revision: i64,
    /// The mesh's latest change at or before `revision`: what a proxy must have ACKed.
    mesh_revision: i64,
    /// Proxies (nodes) on record: connected to some replica, or disconnected within the
    /// last 10 minutes.
    proxies: usize,
    /// Proxies whose every live stream has ACKed `meshRevision` or later for everything it
    /// is sent.
    acked: usize,
    /// Proxies that have not (`acked + notAcked = proxies`).
    not_acked: usize,
    /// True when every proxy on record has it.
    complete: bool,
    /// The proxies that have not, by node name, with the reason (at most 1000).
    pending: Vec<Pending>,
}

/// Why a proxy does not have the revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum Reason {
    /// It rejected a response of the revision (or a later one) and runs its previous
    /// configuration.
    Nacked,
    /// No stream of it is connected.
    Disconnected,
    /// A response is out and not answered yet.
    Pushing,
    /// Its replica has not sent it the revision yet (or it connected with an older one).
    Behind,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Pending {
    node: String,
    reason: Reason,
    /// The revision the proxy has everything for (its lowest over its streams); absent
    /// until it first had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    acked_revision: Option<i64>,
    /// For `nacked`: the type, the proxy's error and what it rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    nack: Option<NackView>,
    /// For `disconnected`: when its last stream ended (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    disconnected_since: Option<String>,
    /// For `pushing`: the type and revision of the unanswered response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pushing: Option<PushView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct NackView {
    /// `CDS`, `LDS`, …
    #[serde(rename = "type")]
    type_name: String,
    /// The proxy's `error_detail`.
    error: String,
    /// The revision of the rejected response.
    revision: i64,
    resources: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct PushView {
    #[serde(rename = "type")]
    type_name: String,
    revision: i64,
}

async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, mesh)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    s.store.get(&ResourceKey::mesh(&tenant, &mesh)).await?;
    let current = s.store.revision(&tenant).await?;
    let revision = match q.get("revision") {
        None => current,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=current).contains(&n) => n,
            Ok(n) if n > current => {
                return Err(ApiError::bad_request(
                    "revision",
                    format!(
                        "revision {n} is not committed: tenant {tenant:?} is at revision {current}"
                    ),
                ));
            }
            _ => {
                return Err(ApiError::bad_request(
                    "revision",
                    format!("{v:?} is not a revision (a whole number from 1)"),
                ));
            }
        },
    };
    let mesh_revision = s.store.mesh_revision_at(&tenant, &mesh, revision).await?;
    let rows = s.store.rollout_rows(&tenant, &mesh, mesh_revision).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut nodes: BTreeMap<&str, Vec<&RolloutRow>> = BTreeMap::new();
    for r in &rows {
        nodes.entry(r.node.as_str()).or_default().push(r);
    }
    let proxies = nodes.len();
    let mut pending: Vec<Pending> = nodes
        .into_iter()
        .filter_map(|(node, streams)| judge(node, &streams, mesh_revision, now))
        .collect();
    let not_acked = pending.len();
    pending.truncate(MAX_LISTED);
    Ok(axum::Json(Rollout {
        revision,
        mesh_revision,
        proxies,
        acked: proxies - not_acked,
        not_acked,
        complete: not_acked == 0,
        pending,
    })
    .into_response())
}

/// Whether a node has `target`: `None` if it has, else why not. Its live streams decide;
/// with none, it is disconnected since its last stream went.
fn judge(node: &str, streams: &[&RolloutRow], target: i64, now: i64) -> Option<Pending> {
    let (live, gone): (Vec<&RolloutRow>, Vec<&RolloutRow>) = streams
        .iter()
        .copied()
        .partition(|r| r.gone_since(now).is_none());
    let mut out = Pending {
        node: node.to_owned(),
        reason: Reason::Behind,
        acked_revision: None,
        nack: None,
        disconnected_since: None,
        pushing: None,
    };
    if live.is_empty() {
        let since = gone.iter().filter_map(|r| r.gone_since(now)).max();
        out.reason = Reason::Disconnected;
        out.disconnected_since = since.map(rfc3339);
        out.acked_revision = gone
            .iter()
            .map(|r| r.acked_revision)
            .max()
            .filter(|r| *r > 0);
        return Some(out);
    }
    let behind: Vec<&RolloutRow> = live
        .iter()
        .copied()
        .filter(|r| r.acked_revision < target)
        .collect();
    if behind.is_empty() {
        return None;
    }
    out.acked_revision = live
        .iter()
        .map(|r| r.acked_revision)
        .min()
        .filter(|r| *r > 0);
    for r in &behind {
        let Some(status) = &r.status else { continue };
        for t in &status.types {
            match (t.state, &t.nack, &t.sent) {
                (TypeState::Nacked, Some(n), _) if out.reason > Reason::Nacked => {
                    out.reason = Reason::Nacked;
                    out.pushing = None;
                    out.nack = Some(NackView {
                        type_name: t.type_name.clone(),
                        error: n.error.clone(),
                        revision: n.revision,
                        resources: n.resources.clone(),
                    });
                }
                (TypeState::Pending, _, Some(sent)) if out.reason > Reason::Pushing => {
                    out.reason = Reason::Pushing;
                    out.pushing = Some(PushView {
                        type_name: t.type_name.clone(),
                        revision: sent.revision,
                    });
                }
                _ => {}
            }
        }
    }
    Some(out)
}
