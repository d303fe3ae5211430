//! The requests of one HTTP listener (`HttpHandler`; the listener accepts and serves its
//! connections): each request is served from the [`ConfigStore`] snapshot current when it
//! arrives. Nothing about routes or clusters is captured at bind time, so a new snapshot
//! applies to the next request on every open connection, and in-flight requests finish on
//! the snapshot they started with.
//!
//! - `local`: what the proxy answers itself (errors, direct responses, redirects) and the
//!   route's request and response edits.
//! - `fault`: fault injection.
//! - `forward`: sending a routed request to its cluster (retries, timeouts, mirrors).

mod fault;
mod forward;
mod local;
mod xfcc;

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use http::{Request, Response, StatusCode};
use switchboard_proxy_xds::config::listener::{ListenerKind, RouteSource};
use switchboard_proxy_xds::config::rbac::HttpRbac;
use switchboard_proxy_xds::config::route::{Action, Clusters};
use switchboard_proxy_xds::{ConfigStore, Snapshot};

use crate::body::Body;
use crate::cluster::{ClusterManager, ClusterRegistry, pick_weighted};
use crate::idle::StreamIdle;
use crate::rbac::{self, RequestView, Subject};
use crate::router::{self, RequestInfo};
use crate::telemetry::meters::ListenerMeters;
use crate::telemetry::request::{self, Exchange, Inbound, Observer, RequestBody};
use crate::telemetry::{DownstreamAddrs, RBAC_DENIED_TOTAL, ResponseFlags};
use crate::tls::PeerIdentity;

/// What the connection knows about one of its requests, handed to [`HttpHandler::handle`]
/// beside the request rather than in its extensions (a map and a box per value, for every
/// request).
#[derive(Default)]
pub(crate) struct RequestContext {
    /// The connection's addresses.
    pub(crate) addrs: Option<DownstreamAddrs>,
    /// On TLS with a verified client certificate, the peer's identity (for RBAC and XFCC).
    pub(crate) peer: Option<Arc<PeerIdentity>>,
    /// The request's `stream_idle_timeout`, when its listener has one.
    pub(crate) idle: Option<Arc<StreamIdle>>,
}

/// Request handling for one HTTP listener: what every connection of a bound socket hands
/// its requests to.
pub(crate) struct HttpHandler {
    listener: String,
    store: ConfigStore,
    clusters: Arc<ClusterManager>,
    meters: Arc<ListenerMeters>,
}

impl HttpHandler {
    /// Request handling for the listener named `listener`; one per bound socket.
    pub(crate) fn new(listener: String, store: ConfigStore, clusters: Arc<ClusterManager>) -> Self {
        Self {
            meters: Arc::new(ListenerMeters::new(&listener)),
            listener,
            store,
            clusters,
        }
    }

    /// Serves one request, with its telemetry: a `proxy_request` span, W3C trace context
    /// for the upstream, request metrics and the access log (see [`crate::telemetry`]).
    ///
    /// With a `stream_idle_timeout` (`ctx.idle`), a request that moves nothing for that
    /// long before its response headers gets 408.
    ///
    /// The future owns its handler (`self: Arc<Self>`), so that it is `'static`: a worker
    /// keeps spare boxes for it between requests (`listener::http_conn::h1::spare`).
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Inbound>,
        ctx: RequestContext,
    ) -> Response<Body> {
        // One configuration for the whole request; the exchange's names borrow from it.
        let snapshot = self.store.snapshot();
        let (observer, ex, req) = Observer::start(&self.meters, req, ctx.addrs, ctx.idle.clone());
        // `start` gives `Exchange<'static>` (no names yet); narrowed here to the snapshot's
        // borrow, which the names routing records come from.
        let mut ex: Exchange<'_> = ex;
        let answered = {
            // Pinned where it is built and polled in place, inside the request's span, so
            // that this request's largest future is not copied again into an
            // `Instrumented` and a `select!` (`tracing::Instrument` and `tokio::select!`
            // each take theirs by value).
            let mut dispatch = pin!(self.dispatch(&snapshot, req, &mut ex, &ctx));
            let span = observer.span();
            poll_fn(|cx| {
                if let Poll::Ready(resp) = span.in_scope(|| dispatch.as_mut().poll(cx)) {
                    return Poll::Ready(Some(resp));
                }
                match &ctx.idle {
                    Some(idle) if idle.poll_expired(cx).is_ready() => Poll::Ready(None),
                    _ => Poll::Pending,
                }
            })
            .await
        };
        let resp = answered.unwrap_or_else(|| {
            ex.flags.insert(ResponseFlags::STREAM_IDLE_TIMEOUT);
            local::error(StatusCode::REQUEST_TIMEOUT, "stream timeout")
        });
        observer.finish(ex, resp)
    }

    /// Routes and answers one request, recording in `ex` what was decided.
    async fn dispatch<'s>(
        &self,
        snapshot: &'s Snapshot,
        mut req: Request<RequestBody>,
        ex: &mut Exchange<'s>,
        ctx: &RequestContext,
    ) -> Response<Body> {
        let Some(listener) = snapshot.listeners.get(&self.listener) else {
            ex.flags.insert(ResponseFlags::NO_ROUTE);
            return local::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("listener {:?} is not configured", self.listener),
            );
        };
        let ListenerKind::Http(hcm) = &listener.kind else {
            ex.flags.insert(ResponseFlags::NO_ROUTE);
            return local::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("listener {:?} is not an HTTP listener", self.listener),
            );
        };
        let host = HostName::of(&req);
        let host = host.as_str();
        // Envoy's order: the RBAC filters come before the router, which picks the route.
        if !hcm.rbac.is_empty()
            && let Some(denied) = rbac_check(&hcm.rbac, &req, host, ctx, &self.listener, ex)
        {
            return denied;
        }
        xfcc::apply(req.headers_mut(), &hcm.xfcc, ctx.peer.as_deref());
        let routes = match &hcm.routes {
            RouteSource::Inline(rc) => rc,
            RouteSource::Rds(name) => match snapshot.routes.get(name) {
                Some(rc) => rc.as_ref(),
                None => {
                    ex.route_config = name;
                    ex.flags.insert(ResponseFlags::NO_ROUTE);
                    return local::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("route configuration {name:?} has not arrived yet"),
                    );
                }
            },
        };
        ex.route_config = &routes.name;
        let vh = router::virtual_host(routes, host);
        if let Some(vh) = vh {
            ex.virtual_host = &vh.name;
        }
        let info = RequestInfo {
            method: req.method(),
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let Some(route) = vh.and_then(|vh| router::route_in(vh, &info)) else {
            ex.flags.insert(ResponseFlags::NO_ROUTE);
            return local::error(StatusCode::NOT_FOUND, "no route matches this request");
        };
        ex.route = &route.name;
        if let Some(fault) = route.fault.as_ref().or(hcm.fault.as_ref()) {
            let injected = fault::inject(fault).await;
            if injected.delayed {
                ex.flags.insert(ResponseFlags::DELAY_INJECTED);
            }
            if let Some(mut resp) = injected.abort {
                local::mutate(resp.headers_mut(), &route.response_headers);
                return resp;
            }
        }
        let mut resp = match &route.action {
            Action::Direct { status, body } => {
                ex.details = Some("direct_response".into());
                local::direct(*status, body.as_deref())
            }
            Action::Redirect(r) => {
                ex.details = Some("direct_response".into());
                local::redirect(r, &req, host, &route.matcher.path)
            }
            Action::Forward(f) => {
                let cluster = match &f.clusters {
                    Clusters::One(c) => Some(c.as_str()),
                    Clusters::Weighted(w) => pick_weighted(w),
                };
                let Some(cluster) = cluster else {
                    ex.flags.insert(ResponseFlags::NO_CLUSTER);
                    return local::error(StatusCode::SERVICE_UNAVAILABLE, "no cluster to route to");
                };
                ex.cluster = cluster;
                let target = Target {
                    snapshot,
                    cluster,
                    registry: &self.clusters.registry,
                    source_ip: ctx.addrs.map(|a| a.remote.ip()),
                };
                let body_retriable = hyper::body::Body::size_hint(req.body())
                    .upper()
                    .is_some_and(|n| n <= forward::MAX_RETRY_BODY);
                req = local::rewrite(req, route, f, host);
                ex.propagate_trace(req.headers_mut());
                let (resp, upstream) =
                    forward::forward(&self.clusters.pools, &target, f, req).await;
                ex.upstream_host = upstream;
                if request::retries_exhausted(f.retry.as_ref(), body_retriable, &resp) {
                    ex.flags
                        .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                }
                resp
            }
        };
        local::mutate(resp.headers_mut(), &route.response_headers);
        resp
    }
}

/// The answer to a request the listener's RBAC filters deny: Envoy's 403 `RBAC: access
/// denied`, with the matched policy in `%RESPONSE_CODE_DETAILS%` and counted per policy.
fn rbac_check<B>(
    filters: &[HttpRbac],
    req: &Request<B>,
    host: &str,
    ctx: &RequestContext,
    listener: &str,
    ex: &mut Exchange<'_>,
) -> Option<Response<Body>> {
    let subject = Subject {
        peer: ctx.peer.as_deref(),
        destination_port: ctx.addrs.map(|a| a.local.port()),
        request: Some(RequestView {
            method: req.method(),
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        }),
    };
    let denied = rbac::check_http(filters, &subject)?;
    metrics::counter!(
        RBAC_DENIED_TOTAL,
        "listener" => listener.to_owned(),
        "filter" => "http",
        "policy" => denied.policy_name().to_owned(),
    )
    .increment(1);
    ex.details = Some(denied.details().into());
    // Envoy's body, without the newline of other local errors; the policy is named in a
    // header so that the caller can tell which one to look at (policy names are resource
    // names, not secrets).
    let mut resp = local::text(StatusCode::FORBIDDEN, "RBAC: access denied".to_owned());
    if let Ok(v) = http::HeaderValue::from_str(denied.policy_name()) {
        resp.headers_mut().insert(DENIED_BY, v);
    }
    Some(resp)
}

/// The response header of a request RBAC denied: the policy that denied it (`none` when no
/// allow policy matched).
pub const DENIED_BY: http::HeaderName = http::HeaderName::from_static("x-switchboard-denied-by");

/// Where a forwarded request may go: one cluster, resolved against one snapshot.
struct Target<'a> {
    snapshot: &'a Snapshot,
    cluster: &'a str,
    registry: &'a ClusterRegistry,
    /// The client's address, for hash policies on the source IP.
    source_ip: Option<std::net::IpAddr>,
}

/// The host a request is for: the authority of an HTTP/2 (or absolute-form) request, else
/// its `Host` header. Held apart from the request (which routing then changes and moves):
/// a reference-counted handle on the bytes hyper parsed, not a copy.
enum HostName {
    Authority(http::uri::Authority),
    Header(http::HeaderValue),
    Missing,
}

impl HostName {
    fn of<B>(req: &Request<B>) -> Self {
        if let Some(a) = req.uri().authority() {
            return Self::Authority(a.clone());
        }
        match req.headers().get(http::header::HOST) {
            Some(h) if h.to_str().is_ok() => Self::Header(h.clone()),
            _ => Self::Missing,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Authority(a) => a.as_str(),
            Self::Header(h) => h.to_str().unwrap_or_default(),
            Self::Missing => "",
        }
    }
}
