//! The admin port: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`.
//!
//! Readiness says whether a load balancer should send this replica new streams and requests:
//! not while it drains (from the shutdown signal on), and not while it could serve nothing,
//! which is only when the store does not answer and no mesh snapshot is held in memory. A
//! replica holding snapshots stays ready through a store outage: its xDS port keeps serving
//! them, to new streams too, and taking every replica out of rotation together would turn a
//! database outage into an xDS outage.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::time::Duration;
use switchboard_store::Store;
use switchboard_xds_server::XdsServer;
use tokio_util::sync::CancellationToken;

/// How long `/readyz` waits for the store when it has to ask it (probes time out in ~1 s).
const STORE_PROBE: Duration = Duration::from_millis(900);

#[derive(Clone)]
struct AdminState {
    store: Store,
    xds: XdsServer,
    prometheus: PrometheusHandle,
    /// Cancelled at the shutdown signal.
    draining: CancellationToken,
}

pub fn router(
    store: Store,
    xds: XdsServer,
    prometheus: PrometheusHandle,
    draining: CancellationToken,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            store,
            xds,
            prometheus,
            draining,
        })
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    crate::memory::refresh();
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.draining.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: shutting down\n".to_string(),
        );
    }
    // Snapshots in memory can be served whatever the store does: no need to ask it.
    let loaded = s.xds.snapshots_loaded();
    if loaded > 0 {
        return (StatusCode::OK, format!("ready ({loaded} meshes loaded)\n"));
    }
    match tokio::time::timeout(STORE_PROBE, s.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_string()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable and no configuration loaded yet: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "store did not answer within {}ms and no configuration loaded yet\n",
                STORE_PROBE.as_millis()
            ),
        ),
    }
}
