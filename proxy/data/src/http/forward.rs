//! Sending a routed request upstream: endpoint choice, circuit breakers, pooled
//! connections, the per-route timeout, retries, outlier detection and request mirroring.
//!
//! Retries and mirrors need the request body again, so only requests whose body is known to
//! be at most [`MAX_RETRY_BODY`] are buffered; larger or unknown-length bodies stream
//! through once, and are neither retried nor mirrored. The route timeout bounds the whole
//! exchange up to the response headers, retries and backoff included; `per_try_timeout`
//! bounds each attempt.
//!
//! Each attempt takes a `max_requests` slot of its cluster until its response body ends; a
//! retry needs a slot of the retry budget (or `max_retries`) as well, and a refused retry
//! passes the last upstream answer on. Each attempt's outcome feeds the endpoint's outlier
//! detection and the cluster's metrics (see [`crate::cluster`]).
//!
//! Mirrors (`request_mirror_policies`) get a copy of the request, with `-shadow` appended
//! to the host (before any port), on a task of their own: their answers are drained and
//! dropped, their failures only logged, and they are bounded by the route timeout (15 s
//! when the route has none).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use rand::Rng;
use switchboard_proxy_xds::config::cluster::{Cluster, LbPolicy, TransportChoice};
use switchboard_proxy_xds::config::route::{
    DEFAULT_TIMEOUT, Forward, HashPolicy, Mirror, RetryPolicy,
};

use super::{Target, local};
use crate::body::{Body, BoxError, full};
use crate::cluster::{
    AttemptOutcome, Clock, ClusterState, ConnectionPools, EndpointSource, HostState, Lease, Picked,
    Pool, RequestSlot, SendError, Threshold, UpstreamBody, endpoint_source,
};
use crate::headers;
use crate::ring::{HashInput, request_hash};
use crate::telemetry::ResponseFlags;
use crate::telemetry::request::RequestBody;
use tokio_util::either::Either;

/// Bodies up to this size are buffered so that the request can be retried or mirrored.
pub const MAX_RETRY_BODY: u64 = 64 * 1024;

/// One cluster as a request sends to it.
struct Upstream {
    cluster: Arc<Cluster>,
    /// The pool of the cluster's own transport socket, and one per `transport_socket_matches`
    /// entry (none in most clusters, so nothing is allocated for them).
    pool: Arc<Pool>,
    matched: Vec<(TransportChoice, Arc<Pool>)>,
    endpoints: Option<Arc<dyn EndpointSource>>,
    /// The request's hash, for a ring hash cluster.
    hash: Option<u64>,
}

impl Upstream {
    fn new(
        pools: &ConnectionPools,
        target: &Target<'_>,
        cluster: &Arc<Cluster>,
        hash: impl FnOnce() -> Option<u64>,
    ) -> Self {
        let pool = |c| pools.pool_in(cluster, c, target.registry, target.snapshot);
        let matched = (0..cluster.tls_matches.len())
            .map(|i| (TransportChoice::Match(i), pool(TransportChoice::Match(i))))
            .collect();
        Self {
            pool: pool(TransportChoice::Default),
            matched,
            cluster: cluster.clone(),
            endpoints: endpoint_source(target.snapshot, cluster),
            hash: match cluster.lb_policy {
                LbPolicy::RingHash(_) => hash(),
                _ => None,
            },
        }
    }

    /// The cluster's state, shared by every worker; reached through this worker's pool
    /// rather than the registry's lock, with no clone of its `Arc`.
    fn state(&self) -> &Arc<ClusterState> {
        self.pool.state()
    }

    /// The pool for `address`: the one of the transport socket its metadata selects.
    fn pool_for(&self, address: SocketAddr) -> &Arc<Pool> {
        if self.matched.is_empty() {
            return &self.pool;
        }
        let labels = self
            .endpoints
            .as_ref()
            .and_then(|e| e.load_assignment())
            .and_then(|la| {
                la.localities
                    .iter()
                    .flat_map(|l| &l.endpoints)
                    .find(|e| e.address == address)
            })
            .map(|e| &e.transport_labels);
        let choice = labels.map_or(TransportChoice::Default, |l| self.cluster.transport_for(l));
        self.matched
            .iter()
            .find(|(c, _)| *c == choice)
            .map_or(&self.pool, |(_, p)| p)
    }

    fn pick(&self) -> Option<Picked> {
        let endpoints = self.endpoints.as_ref()?;
        self.state().pick(
            self.cluster.lb_policy,
            endpoints,
            self.hash,
            self.cluster.outlier_detection.as_ref(),
            Clock,
        )
    }

    /// Counts how an attempt on `host` ended, for metrics and outlier detection.
    fn finish(&self, host: &Arc<HostState>, outcome: AttemptOutcome) {
        self.state().metrics.attempt(outcome);
        self.state().record(
            host,
            outcome.failed(),
            self.cluster.outlier_detection.as_ref(),
            Clock,
        );
    }
}

/// What goes upstream of the request, whatever the attempt.
#[derive(Clone)]
struct Head {
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
}

/// What a ring hash policy may hash besides the head.
struct HashSource<'a> {
    policy: &'a [HashPolicy],
    authority: Option<Authority>,
    source_ip: Option<IpAddr>,
}

impl HashSource<'_> {
    fn hash(&self, head: &Head) -> Option<u64> {
        let input = HashInput {
            method: &head.method,
            authority: self.authority.as_ref().map(Authority::as_str).or_else(|| {
                head.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            }),
            path_and_query: head.path_and_query.as_str(),
            headers: &head.headers,
            source_ip: self.source_ip,
        };
        request_hash(self.policy, &input)
    }
}

/// How one attempt ended, before retry policy looks at it.
enum Outcome {
    /// The response, and the endpoint that sent it.
    Response(Response<Body>, SocketAddr),
    ConnectFailure(String),
    Reset(String),
    TimedOut,
    NoEndpoint,
    Overflow(Threshold),
}

/// The endpoint of the attempt in flight, so that a route timeout can be charged to it.
type Current = Mutex<Option<Arc<HostState>>>;

pub(super) async fn forward(
    pools: &ConnectionPools,
    target: &Target<'_>,
    f: &Forward,
    req: Request<RequestBody>,
) -> (Response<Body>, Option<SocketAddr>) {
    let Some(cluster) = target.snapshot.clusters.get(target.cluster) else {
        let resp = local::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cluster {:?} is not configured", target.cluster),
        );
        return (flagged(resp, ResponseFlags::NO_CLUSTER), None);
    };
    let (parts, body) = req.into_parts();
    let mut uri = parts.uri.into_parts();
    let head = Head {
        path_and_query: uri
            .path_and_query
            .take()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        headers: upstream_headers(parts.headers),
        method: parts.method,
    };
    let hashing = HashSource {
        policy: &f.hash_policy,
        authority: uri.authority.take(),
        source_ip: target.source_ip,
    };
    let up = Upstream::new(pools, target, cluster, || hashing.hash(&head));
    let current: Current = Mutex::new(None);
    let per_try = f.retry.as_ref().and_then(|r| r.per_try_timeout);
    let work = match buffered(f, &body, &up.cluster.name) {
        // The common case, one try with the body streamed, awaits `attempt` directly.
        None => Either::Left(attempt(&up, per_try, head, body.boxed_unsync(), &current)),
        // Boxed: a future is as large as its largest await, and every request's future is
        // copied as it moves into hyper's dispatcher and each caller, so the retry loop
        // would otherwise add its size to every request's copies.
        Some(mirrors) => Either::Right(Box::pin(attempts(
            pools, target, &up, f, head, body, mirrors, &hashing, &current,
        ))),
    };
    let result = match f.timeout {
        Some(t) => tokio::time::timeout(t, work).await.ok(),
        None => Some(work.await),
    };
    let Some(outcome) = result else {
        timed_out(&up, &current);
        let resp = local::error(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
        return (flagged(resp, ResponseFlags::UPSTREAM_REQUEST_TIMEOUT), None);
    };
    let name = &cluster.name;
    let resp = match outcome {
        Outcome::Response(resp, upstream) => return (resp, Some(upstream)),
        Outcome::NoEndpoint => flagged(
            local::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no healthy endpoint in cluster {name:?}"),
            ),
            ResponseFlags::NO_HEALTHY_UPSTREAM,
        ),
        Outcome::ConnectFailure(e) => flagged(
            local::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream connect error (cluster {name:?}): {e}"),
            ),
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
        ),
        Outcome::Reset(e) => flagged(
            local::error(
                StatusCode::BAD_GATEWAY,
                format!("upstream reset (cluster {name:?}): {e}"),
            ),
            ResponseFlags::UPSTREAM_REMOTE_RESET,
        ),
        Outcome::TimedOut => flagged(
            local::error(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
            ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
        ),
        Outcome::Overflow(t) => {
            let mut resp = local::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream overflow: circuit breaker {t} of cluster {name:?} is full"),
            );
            resp.headers_mut()
                .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
            flagged(resp, ResponseFlags::UPSTREAM_OVERFLOW)
        }
    };
    (resp, None)
}

/// Marks a local reply with why the proxy made it (for the access log).
fn flagged(mut resp: Response<Body>, flags: ResponseFlags) -> Response<Body> {
    resp.extensions_mut().insert(flags);
    resp
}

/// Whether the request is buffered (to be retried or mirrored) and, if so, the mirrors it
/// goes to; `None` means one try with the body streamed (see the module's note on
/// [`MAX_RETRY_BODY`]).
fn buffered<'f>(f: &'f Forward, body: &RequestBody, cluster: &str) -> Option<Vec<&'f Mirror>> {
    let retry = f.retry.as_ref().is_some_and(|r| r.num_retries > 0);
    let mirrors: Vec<&Mirror> = f
        .mirrors
        .iter()
        .filter(|m| sampled(m.per_million))
        .collect();
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= MAX_RETRY_BODY);
    if !small || (!retry && mirrors.is_empty()) {
        if !mirrors.is_empty() {
            tracing::debug!(cluster = %cluster,
                "request body too large or of unknown length: not mirrored");
        }
        return None;
    }
    Some(mirrors)
}

/// Buffers the body, sends the mirrors and runs the first attempt and any retries the
/// policy and the circuit breakers allow.
#[allow(clippy::too_many_arguments)]
async fn attempts(
    pools: &ConnectionPools,
    target: &Target<'_>,
    up: &Upstream,
    f: &Forward,
    head: Head,
    body: RequestBody,
    mirrors: Vec<&Mirror>,
    hashing: &HashSource<'_>,
    current: &Current,
) -> Outcome {
    let retry = f.retry.as_ref().filter(|r| r.num_retries > 0);
    let per_try = f.retry.as_ref().and_then(|r| r.per_try_timeout);
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return Outcome::Reset(format!("reading the request body: {e}")),
    };
    for m in mirrors {
        mirror(pools, target, f, m, &head, bytes.clone(), hashing);
    }
    let Some(policy) = retry else {
        return attempt(up, per_try, head, full(bytes), current).await;
    };
    let mut retries = 0;
    let mut _retry_slot = None;
    loop {
        let outcome = attempt(up, per_try, head.clone(), full(bytes.clone()), current).await;
        if retries >= policy.num_retries || !retriable(policy, &outcome) {
            return outcome;
        }
        // The previous retry is over once its attempt has answered (Envoy's accounting).
        _retry_slot = None;
        match up.state().begin_retry(&up.cluster.circuit_breakers) {
            Ok(slot) => _retry_slot = Some(slot),
            Err(t) => {
                tracing::debug!(cluster = %up.cluster.name, threshold = %t,
                    "retry refused by the circuit breaker");
                return outcome;
            }
        }
        drop(outcome);
        retries += 1;
        tracing::debug!(cluster = %up.cluster.name, attempt = retries, "retrying");
        tokio::time::sleep(backoff(policy, retries)).await;
    }
}

/// One try: take a request slot, pick an endpoint, send, and wait for the response headers.
async fn attempt(
    up: &Upstream,
    per_try_timeout: Option<Duration>,
    head: Head,
    body: Body,
    current: &Current,
) -> Outcome {
    let slot = match up.state().begin_request(&up.cluster.circuit_breakers) {
        Ok(g) => g,
        Err(t) => return Outcome::Overflow(t),
    };
    let Some(picked) = up.pick() else {
        return Outcome::NoEndpoint;
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = Uri::from(head.path_and_query);
    *req.headers_mut() = head.headers;
    let pool = up.pool_for(picked.address);
    set_current(current, Some(picked.host.clone()));
    let send = pool.send(picked.address, req);
    let result = match per_try_timeout {
        Some(t) => tokio::time::timeout(t, send).await.ok(),
        None => Some(send.await),
    };
    set_current(current, None);
    let Some(result) = result else {
        up.finish(&picked.host, AttemptOutcome::Timeout);
        return Outcome::TimedOut;
    };
    match result {
        Ok((resp, lease)) => {
            up.finish(&picked.host, AttemptOutcome::Status(resp.status().as_u16()));
            let address = picked.address;
            let mut resp = resp.map(|b| Guarded::new(b, (slot, picked), lease).boxed_unsync());
            strip_response_hop_by_hop(resp.headers_mut());
            Outcome::Response(resp, address)
        }
        Err(SendError::Overflow(t)) => {
            up.state().overflow(t);
            Outcome::Overflow(t)
        }
        Err(SendError::Connect(e)) => {
            up.finish(&picked.host, AttemptOutcome::ConnectFailure);
            Outcome::ConnectFailure(e)
        }
        Err(SendError::Reset(e)) => {
            up.finish(&picked.host, AttemptOutcome::Reset);
            Outcome::Reset(e)
        }
    }
}

fn set_current(current: &Current, host: Option<Arc<HostState>>) {
    *current.lock().unwrap_or_else(PoisonError::into_inner) = host;
}

/// The attempt in flight when an overall timeout fired counts as timed out on its host
/// (outlier detection and the endpoint's failure count).
fn timed_out(up: &Upstream, current: &Current) {
    let host = current
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(host) = host {
        up.finish(&host, AttemptOutcome::Timeout);
    }
}

/// Sends a copy of the request to `m.cluster` on a task of its own.
fn mirror(
    pools: &ConnectionPools,
    target: &Target<'_>,
    f: &Forward,
    m: &Mirror,
    head: &Head,
    body: Bytes,
    hashing: &HashSource<'_>,
) {
    let Some(cluster) = target.snapshot.clusters.get(&m.cluster) else {
        tracing::debug!(cluster = %m.cluster, "mirror cluster is not configured; not mirrored");
        return;
    };
    let up = Upstream::new(pools, target, cluster, || hashing.hash(head));
    let mut headers = head.headers.clone();
    if let Some(host) = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        && let Ok(shadow) = HeaderValue::from_str(&shadow_host(host))
    {
        headers.insert(http::header::HOST, shadow);
    }
    let head = Head {
        method: head.method.clone(),
        path_and_query: head.path_and_query.clone(),
        headers,
    };
    let limit = f.timeout.unwrap_or(DEFAULT_TIMEOUT);
    up.state().metrics.mirrored.increment(1);
    tokio::spawn(async move {
        let current: Current = Mutex::new(None);
        let work = async {
            match attempt(&up, None, head, full(body), &current).await {
                Outcome::Response(resp, _) => {
                    // Read and drop the answer, so the connection can be reused.
                    let mut body = resp.into_body();
                    while let Some(frame) = body.frame().await {
                        if frame.is_err() {
                            break;
                        }
                    }
                }
                Outcome::Overflow(t) => {
                    tracing::debug!(cluster = %up.cluster.name, threshold = %t,
                        "mirror refused by the circuit breaker");
                }
                Outcome::NoEndpoint => {
                    tracing::debug!(cluster = %up.cluster.name, "mirror: no healthy endpoint");
                }
                Outcome::ConnectFailure(e) | Outcome::Reset(e) => {
                    tracing::debug!(cluster = %up.cluster.name, error = %e, "mirror failed");
                }
                Outcome::TimedOut => {}
            }
        };
        if tokio::time::timeout(limit, work).await.is_err() {
            timed_out(&up, &current);
            tracing::debug!(cluster = %up.cluster.name, "mirror timed out");
        }
    });
}

/// Envoy's shadow host: `-shadow` appended to the host name, before the port if any.
fn shadow_host(host: &str) -> String {
    let port_start = host.rfind(':').filter(|&i| {
        let (name, port) = host.split_at(i);
        let port = port.get(1..).unwrap_or_default();
        let bare_ipv6 = name.contains(':') && !name.ends_with(']');
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !bare_ipv6
    });
    match port_start {
        Some(i) => {
            let (name, port) = host.split_at(i);
            format!("{name}-shadow{port}")
        }
        None => format!("{host}-shadow"),
    }
}

fn sampled(per_million: u32) -> bool {
    per_million >= 1_000_000 || rand::rng().random_range(0..1_000_000) < per_million
}

/// An upstream response body that holds its attempt's circuit breaker slot and endpoint
/// (for least request) until it ends or is dropped.
struct Guarded {
    body: UpstreamBody,
    guards: Option<(RequestSlot, Picked)>,
    lease: Option<Lease>,
}

impl Guarded {
    fn new(body: UpstreamBody, guards: (RequestSlot, Picked), lease: Lease) -> Self {
        Self {
            body,
            guards: Some(guards),
            lease: Some(lease),
        }
    }
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                this.guards = None;
                if let Some(lease) = this.lease.take() {
                    lease.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.guards = None;
                this.lease = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A body read to its end hands its connection back even when its reader stopped at the
/// last frame (a known length lets hyper stop polling before the end is signalled).
impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take()
            && self.body.is_end_stream()
        {
            lease.finish();
        }
    }
}

/// Drops hop-by-hop headers, which belong to the downstream connection (and which HTTP/2
/// forbids), keeping `te: trailers` that gRPC needs.
fn upstream_headers(mut headers: HeaderMap) -> HeaderMap {
    use http::header::{CONNECTION, PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE};
    const HOP_BY_HOP: [HeaderName; 7] = [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        PROXY_AUTHORIZATION,
        TRANSFER_ENCODING,
        UPGRADE,
        TE,
    ];
    if !headers::contains_any(&headers, &HOP_BY_HOP) {
        return headers;
    }
    let te_trailers = headers
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    headers
}

/// Drops the upstream connection's hop-by-hop headers from a response, so that framing is
/// decided by the downstream connection (an HTTP/1.1 `transfer-encoding` must not reach an
/// HTTP/2 client, nor a `connection: close` close the wrong connection).
fn strip_response_hop_by_hop(headers: &mut HeaderMap) {
    use http::header::{CONNECTION, TRANSFER_ENCODING, UPGRADE};
    const HOP_BY_HOP: [HeaderName; 5] = [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
    ];
    if headers::contains_any(headers, &HOP_BY_HOP) {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// Hop-by-hop headers without a constant in `http`: by name, so that removing them does not
/// parse the name for every request.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn retriable(p: &RetryPolicy, outcome: &Outcome) -> bool {
    let on = |c: &str| p.retry_on.iter().any(|r| r == c);
    match outcome {
        Outcome::Response(r, _) => {
            let s = r.status().as_u16();
            (on("5xx") && s >= 500)
                || (on("gateway-error") && matches!(s, 502..=504))
                || (on("retriable-status-codes") && p.retriable_status_codes.contains(&s))
        }
        Outcome::ConnectFailure(_) => on("connect-failure") || on("5xx") || on("gateway-error"),
        Outcome::Reset(_) => on("reset") || on("5xx") || on("gateway-error"),
        Outcome::TimedOut => on("5xx") || on("gateway-error"),
        // Envoy never retries an overflow.
        Outcome::NoEndpoint | Outcome::Overflow(_) => false,
    }
}

/// Fully jittered exponential backoff, capped at the policy's maximum.
fn backoff(p: &RetryPolicy, retry: u32) -> Duration {
    let ceiling = p
        .base_interval
        .saturating_mul(1 << retry.min(16))
        .min(p.max_interval);
    if ceiling.is_zero() {
        return ceiling;
    }
    rand::rng().random_range(Duration::ZERO..ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_goes_before_the_port() {
        let cases = [
            ("svc", "svc-shadow"),
            ("svc:8080", "svc-shadow:8080"),
            ("10.0.0.1:80", "10.0.0.1-shadow:80"),
            ("[::1]:80", "[::1]-shadow:80"),
            ("[::1]", "[::1]-shadow"),
            ("::1", "::1-shadow"),
            ("svc:", "svc:-shadow"),
        ];
        for (host, want) in cases {
            assert_eq!(shadow_host(host), want, "{host}");
        }
    }
}
