//! A span per request (method, route, tenant, mesh, request id) and the request metrics
//! `switchboard_http_requests_total` and `switchboard_http_request_seconds`, by route and status
//! ([`METRICS`]). The route is the matched template (`/v1/tenants/{tenant}/…`, or `unmatched`),
//! never the path itself, so the labels stay bounded whatever callers send.
//!
//! The span continues the caller's trace when the request carries a W3C `traceparent`
//! (exactly one, valid): the store's commit span is its child, and the xDS server's snapshot
//! build and pushes follow, so one trace shows a write from the caller to the proxies' ACKs.
//! Only the method, route template, tenant, mesh and request id are recorded: never a header
//! (no `Authorization`), a body or a query.

use axum::extract::{MatchedPath, Request};

pub use switchboard_runtime::MetricDoc;

/// Every metric the REST API records.
pub const METRICS: &[MetricDoc] = &[
    MetricDoc {
        name: "switchboard_http_requests_total",
        kind: "counter",
        labels: "route, method, status",
        help: "REST requests answered, by route template, method and HTTP status",
    },
    MetricDoc {
        name: "switchboard_http_request_seconds",
        kind: "histogram",
        labels: "route, method, status",
        help: "REST request latency, from the request's arrival to its response's head",
    },
];
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

const REQUEST_ID: &str = "x-request-id";
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

pub async fn middleware(req: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    // Keep a caller's request id if it is sane; otherwise make one.
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut scope = req
        .uri()
        .path()
        .strip_prefix("/v1/tenants/")
        .unwrap_or("")
        .split('/');
    let tenant = scope.next().unwrap_or("").to_string();
    let mesh = match (scope.next(), scope.next()) {
        (Some("meshes"), Some(mesh)) => mesh.to_string(),
        _ => String::new(),
    };
    let span = tracing::info_span!(
        "request", %method, %route, tenant = %tenant, mesh = %mesh, request_id = %request_id
    );
    let mut traceparents = req.headers().get_all(TRACEPARENT).iter();
    if let (Some(tp), None) = (traceparents.next(), traceparents.next())
        && let Ok(tp) = tp.to_str()
    {
        let tracestate = req.headers().get(TRACESTATE).and_then(|v| v.to_str().ok());
        switchboard_runtime::otel::continue_trace(&span, tp, tracestate);
    }
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    let secs = start.elapsed().as_secs_f64();
    span.in_scope(|| tracing::info!(status, ms = secs * 1000.0, "request"));
    let labels = [
        ("route", route),
        ("method", method),
        ("status", status.to_string()),
    ];
    metrics::counter!("switchboard_http_requests_total", &labels).increment(1);
    metrics::histogram!("switchboard_http_request_seconds", &labels).record(secs);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}
