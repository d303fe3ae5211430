//! Switchboard's REST API.
//!
//! `router(state)` builds the whole axum app, so tests drive it with `oneshot` or over a real
//! socket alike. Handlers parse and validate (model), then make exactly one store call per
//! write; every error leaves as RFC 9457 problem+json naming the offending field.

mod auth;
mod body;
mod changes;
mod credentials;
mod error;
mod observe;
mod openapi;
mod proxies;
mod resources;
mod tenants;

pub use auth::AdminToken;
pub use error::ApiError;
pub use openapi::openapi;

use axum::Router;
use axum::routing::get;
use switchboard_store::Store;

/// Largest request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub admin: AdminToken,
    /// The xDS server of this process: what a proxy is being sent.
    pub xds: switchboard_xds_server::XdsServer,
}

pub fn router(state: AppState) -> Router {
    let t = "/v1/tenants/{tenant}";
    Router::new()
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/tenants", get(tenants::list).post(tenants::create))
        .route(t, get(tenants::get).delete(tenants::delete))
        .route(&format!("{t}/changes"), get(changes::get))
        .route(
            &format!("{t}/api-keys"),
            get(credentials::list_api_keys).post(credentials::create_api_key),
        )
        .route(
            &format!("{t}/api-keys/{{id}}"),
            axum::routing::delete(credentials::revoke_api_key),
        )
        .route(
            &format!("{t}/proxy-tokens"),
            get(credentials::list_proxy_tokens).post(credentials::create_proxy_token),
        )
        .route(
            &format!("{t}/proxy-tokens/{{id}}"),
            axum::routing::delete(credentials::revoke_proxy_token),
        )
        .route(
            &format!("{t}/meshes"),
            get(resources::list_meshes).post(resources::create_mesh),
        )
        .route(
            &format!("{t}/meshes/{{mesh}}"),
            get(resources::get_mesh)
                .put(resources::put_mesh)
                .delete(resources::delete_mesh),
        )
        .route(&format!("{t}/meshes/{{mesh}}/proxies"), get(proxies::list))
        .route(
            &format!("{t}/meshes/{{mesh}}/proxies/{{node}}"),
            get(proxies::get),
        )
        .route(
            &format!("{t}/meshes/{{mesh}}/proxies/{{node}}/config"),
            get(proxies::config),
        )
        .route(
            &format!("{t}/meshes/{{mesh}}/{{kind}}"),
            get(resources::list).post(resources::create),
        )
        .route(
            &format!("{t}/meshes/{{mesh}}/{{kind}}/{{name}}"),
            get(resources::get)
                .put(resources::put)
                .delete(resources::delete),
        )
        .fallback(|| async { ApiError::not_found("no such API path") })
        .layer(axum::middleware::from_fn(observe::middleware))
        .with_state(state)
}
