//! Switchboard's REST API.
//!
//! `router(state)` builds the whole axum app, so tests drive it with `oneshot` or over a real
//! socket alike. Handlers parse and validate (model), then make exactly one store call per
//! write; every error leaves as RFC 9457 problem+json naming the offending field.
//!
//! Code map:
//! - `openapi`: [`Route`](openapi::Route), one operation declared once (method, path,
//!   documentation, handler), and the assembly of routes into the router and the OpenAPI
//!   document together, so the document cannot miss a route.
//! - `tenants`, `credentials`, `resources`, `changes`, `proxies`: the handlers, each module
//!   with the routes it serves. `resources` has one generic set for every kind.
//! - `quotas`: a tenant's quotas (`…/quotas`, set by the platform admin) and the per-replica
//!   `writesPerSecond` token bucket every tenant write passes (a middleware).
//! - `cas`: the mesh CA (`…/meshes/{mesh}/ca`): show, upload, rotate. Keys are sealed here
//!   with the KEK in [`AppState`] before the store sees them.
//! - `plan`: what a change would send to which proxies (`…/meshes/{mesh}/plan`), checked as
//!   an import and computed through the [`NodeConfigs`] port.
//! - `history`: a resource's revisions with the credential that wrote each, rollback of a
//!   resource or of a whole mesh to a revision, and the tenant's audit log.
//! - `rollout`: whether a revision reached every proxy of a mesh, and why not where not.
//! - `bundle`: export and import of a tenant (documents; private keys only when asked,
//!   encrypted with the caller's passphrase), the import in one store transaction.
//! - `proxies` also defines the [`NodeConfigs`] port: what a node is sent comes from the
//!   process's xDS server, which the binary plugs in; this crate does not depend on it.
//! - `auth` (the caller: admin or a tenant's API key), `body` (JSON or YAML bodies), `error`
//!   (problem+json), `observe` (a span and metrics per request).

mod auth;
mod body;
pub mod bundle;
mod cas;
mod certificates;
mod changes;
mod credentials;
mod error;
mod history;
pub mod observe;
mod openapi;
pub mod plan;
mod proxies;
mod quotas;
mod resources;
mod rollout;
mod tenants;

#[cfg(test)]
mod tests;

pub use auth::AdminToken;
pub use error::ApiError;
pub use proxies::{NodeConfigFuture, NodeConfigs};

use axum::{Extension, Router};
use std::sync::Arc;
use switchboard_store::Store;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// A time in Unix milliseconds as RFC 3339 (how every time in the API is written).
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Largest request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub admin: AdminToken,
    /// What a proxy is being sent (the xDS server of this process).
    pub node_configs: Arc<dyn NodeConfigs>,
    /// Seals the mesh CAs' private keys before they reach the store.
    pub kek: Arc<switchboard_pki::Kek>,
}

/// Every operation the API serves, in the order the document lists them.
fn routes() -> Vec<openapi::Route> {
    [
        openapi::routes(),
        tenants::routes(),
        quotas::routes(),
        changes::routes(),
        credentials::routes(),
        resources::routes(),
        history::routes(),
        cas::routes(),
        proxies::routes(),
        rollout::routes(),
        plan::routes(),
        bundle::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn api() -> OpenApiRouter<AppState> {
    openapi::assemble(routes())
}

/// The OpenAPI document of [`router`].
pub fn openapi() -> OpenApi {
    api().into_openapi()
}

pub fn router(state: AppState) -> Router {
    let (router, doc) = api().split_for_parts();
    let limiter = Arc::new(quotas::WriteLimiter::default());
    history::any_kind(resources::any_kind(router))
        .fallback(|| async { ApiError::not_found("no such API path") })
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), limiter),
            quotas::limit_writes,
        ))
        .layer(Extension(Arc::new(doc)))
        .layer(axum::middleware::from_fn(observe::middleware))
        .with_state(state)
}
