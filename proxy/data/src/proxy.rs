//! One HTTP listener: accepts connections (HTTP/1.1 or HTTP/2 prior knowledge, detected per
//! connection), and serves each request from the [`ConfigStore`] snapshot current when it
//! arrives. Nothing about routes or clusters is captured at bind time, so a new snapshot
//! applies to the next request on every open connection, and in-flight requests finish on
//! the snapshot they started with.

mod fault;
mod forward;
mod local;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use switchboard_proxy_xds::config::listener::{ListenerKind, RouteSource};
use switchboard_proxy_xds::config::route::{Action, Clusters};
use switchboard_proxy_xds::{ConfigStore, Snapshot};
use tokio::net::TcpListener;

use crate::balancer::{Balancers, pick_weighted};
use crate::clusters::ClusterManager;
use crate::router::{self, RequestInfo};
pub(crate) use forward::Upstreams;

/// The body of every response the proxy sends: upstream bodies stream through unchanged
/// (trailers included), local ones are buffered.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("listener {0:?}: accepting connections failed: {1}")]
    Accept(String, std::io::Error),
}

/// Serves the HTTP listener named `listener` (its HttpConnectionManager, looked up in each
/// request's snapshot) on `tcp` until the task is dropped or aborted. Upstream state
/// (balancers, pools) is the process's `clusters`, shared with every other listener.
///
/// The socket is the caller's, so the caller decides when to bind and when to drain; a
/// listener missing from the snapshot answers 503 rather than closing connections.
pub async fn serve(
    tcp: TcpListener,
    listener: impl Into<String>,
    store: ConfigStore,
    clusters: Arc<ClusterManager>,
) -> Result<(), ProxyError> {
    let shared = Arc::new(Shared {
        listener: listener.into(),
        store,
        clusters,
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(conn) => conn,
            Err(e) if is_transient(&e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %shared.listener, error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(ProxyError::Accept(shared.listener.clone(), e)),
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(shared.handle(req).await) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    !matches!(
        e.kind(),
        K::InvalidInput | K::Unsupported | K::PermissionDenied
    )
}

struct Shared {
    listener: String,
    store: ConfigStore,
    clusters: Arc<ClusterManager>,
}

impl Shared {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let snapshot = self.store.snapshot();
        let Some(listener) = snapshot.listeners.get(&self.listener) else {
            return local::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("listener {:?} is not configured", self.listener),
            );
        };
        let ListenerKind::Http(hcm) = &listener.kind else {
            return local::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("listener {:?} is not an HTTP listener", self.listener),
            );
        };
        let routes = match &hcm.routes {
            RouteSource::Inline(rc) => rc,
            RouteSource::Rds(name) => match snapshot.routes.get(name) {
                Some(rc) => rc.as_ref(),
                None => {
                    return local::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("route configuration {name:?} has not arrived yet"),
                    );
                }
            },
        };
        let host = request_host(&req).to_owned();
        let info = RequestInfo {
            method: req.method(),
            host: &host,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let Some(route) = router::route(routes, &info) else {
            return local::error(StatusCode::NOT_FOUND, "no route matches this request");
        };
        if let Some(fault) = route.fault.as_ref().or(hcm.fault.as_ref())
            && let Some(mut resp) = fault::inject(fault).await
        {
            local::mutate(resp.headers_mut(), &route.response_headers);
            return resp;
        }
        let mut resp = match &route.action {
            Action::Direct { status, body } => local::direct(*status, body.as_deref()),
            Action::Redirect(r) => local::redirect(r, &req, &host, &route.matcher.path),
            Action::Forward(f) => {
                let cluster = match &f.clusters {
                    Clusters::One(c) => Some(c.as_str()),
                    Clusters::Weighted(w) => pick_weighted(w),
                };
                let Some(cluster) = cluster else {
                    return local::error(StatusCode::SERVICE_UNAVAILABLE, "no cluster to route to");
                };
                let target = Target {
                    snapshot: &snapshot,
                    cluster,
                    balancers: &self.clusters.balancers,
                };
                let req = local::rewrite(req, route, f, &host);
                forward::forward(&self.clusters.upstreams, &target, f, req).await
            }
        };
        local::mutate(resp.headers_mut(), &route.response_headers);
        resp
    }
}

/// Where a forwarded request may go: one cluster, resolved against one snapshot.
struct Target<'a> {
    snapshot: &'a Snapshot,
    cluster: &'a str,
    balancers: &'a Balancers,
}

/// The authority of an HTTP/2 (or absolute-form) request, else its `Host` header.
fn request_host<B>(req: &Request<B>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// Boxes a body whose errors cannot happen into [`Body`].
fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
