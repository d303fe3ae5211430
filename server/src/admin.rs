//! The admin port: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz` (ready only
//! while the store answers).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::time::Duration;
use switchboard_store::Store;

#[derive(Clone)]
struct AdminState {
    store: Store,
    prometheus: PrometheusHandle,
}

pub fn router(store: Store, prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { store, prometheus })
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_string()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store did not answer within 2s\n".to_string(),
        ),
    }
}
