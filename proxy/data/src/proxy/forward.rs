//! Sending a routed request upstream: endpoint choice, pooled connections, the per-route
//! timeout, and retries.
//!
//! Retries need the request body again, so only requests whose body is known to be at most
//! [`MAX_RETRY_BODY`] are buffered and retried; larger or unknown-length bodies stream
//! through once. The route timeout bounds the whole exchange up to the response headers,
//! retries and backoff included; `per_try_timeout` bounds each attempt.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use switchboard_proxy_xds::config::cluster::{Cluster, Discovery, UpstreamProtocol};
use switchboard_proxy_xds::config::route::{Forward, RetryPolicy};

use super::{Body, Target, full, local};

/// Bodies up to this size are buffered so that the request can be retried.
pub const MAX_RETRY_BODY: u64 = 64 * 1024;

type HttpClient = Client<HttpConnector, Body>;

/// Pooled clients, one per (HTTP/2?, connect timeout); each pools connections per endpoint,
/// and the HTTP/2 one multiplexes requests over one connection per endpoint.
#[derive(Default)]
pub(crate) struct Upstreams {
    clients: Mutex<HashMap<(bool, Duration), HttpClient>>,
}

impl Upstreams {
    fn client(&self, cluster: &Cluster) -> HttpClient {
        let key = (
            cluster.protocol == UpstreamProtocol::Http2,
            cluster.connect_timeout,
        );
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients
            .entry(key)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(cluster.connect_timeout));
                let mut builder = Client::builder(TokioExecutor::new());
                builder.pool_idle_timeout(Duration::from_secs(60));
                if cluster.protocol == UpstreamProtocol::Http2 {
                    builder.http2_only(true);
                }
                builder.build(connector)
            })
            .clone()
    }
}

/// How one attempt ended, before retry policy looks at it.
enum Outcome {
    Response(Response<Incoming>),
    ConnectFailure(String),
    Reset(String),
    TimedOut,
    NoEndpoint,
}

pub(super) async fn forward(
    upstreams: &Upstreams,
    target: &Target<'_>,
    f: &Forward,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(cluster) = target.snapshot.clusters.get(target.cluster) else {
        return local::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cluster {:?} is not configured", target.cluster),
        );
    };
    let client = upstreams.client(cluster);
    let work = attempts(&client, target, cluster, f, req);
    let result = match f.timeout {
        Some(t) => tokio::time::timeout(t, work).await.ok(),
        None => Some(work.await),
    };
    let Some(outcome) = result else {
        return local::error(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
    };
    match outcome {
        Outcome::Response(mut resp) => {
            strip_response_hop_by_hop(resp.headers_mut());
            resp.map(|b| b.boxed_unsync())
        }
        Outcome::NoEndpoint => local::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy endpoint in cluster {:?}", cluster.name),
        ),
        Outcome::ConnectFailure(e) => local::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream connect error (cluster {:?}): {e}", cluster.name),
        ),
        Outcome::Reset(e) => local::error(
            StatusCode::BAD_GATEWAY,
            format!("upstream reset (cluster {:?}): {e}", cluster.name),
        ),
        Outcome::TimedOut => local::error(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
    }
}

/// Runs the first attempt and any retries the policy allows.
async fn attempts(
    client: &HttpClient,
    target: &Target<'_>,
    cluster: &std::sync::Arc<Cluster>,
    f: &Forward,
    req: Request<Incoming>,
) -> Outcome {
    let (parts, body) = req.into_parts();
    let retry = f.retry.as_ref().filter(|r| r.num_retries > 0);
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= MAX_RETRY_BODY);
    let (Some(policy), true) = (retry, small) else {
        return attempt(
            client,
            target,
            cluster,
            f.retry.as_ref(),
            &parts,
            body.boxed_unsync(),
        )
        .await;
    };
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return Outcome::Reset(format!("reading the request body: {e}")),
    };
    let mut tries = 0;
    loop {
        let outcome = attempt(
            client,
            target,
            cluster,
            Some(policy),
            &parts,
            full(bytes.clone()),
        )
        .await;
        if tries >= policy.num_retries || !retriable(policy, &outcome) {
            return outcome;
        }
        tries += 1;
        tracing::debug!(cluster = %cluster.name, attempt = tries, "retrying");
        tokio::time::sleep(backoff(policy, tries)).await;
    }
}

/// One try: pick an endpoint, send, and wait for the response headers.
async fn attempt(
    client: &HttpClient,
    target: &Target<'_>,
    cluster: &std::sync::Arc<Cluster>,
    policy: Option<&RetryPolicy>,
    parts: &http::request::Parts,
    body: Body,
) -> Outcome {
    let picked = match &cluster.discovery {
        Discovery::Static(_) => target
            .balancers
            .pick(&cluster.name, cluster.lb_policy, cluster),
        Discovery::Eds { service_name } => match target.snapshot.endpoints.get(service_name) {
            Some(la) => target.balancers.pick(&cluster.name, cluster.lb_policy, la),
            None => None,
        },
    };
    let Some(picked) = picked else {
        return Outcome::NoEndpoint;
    };
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let Ok(uri) = format!("http://{}{pq}", picked.address).parse::<Uri>() else {
        return Outcome::Reset(format!("cannot build an upstream URI for {pq:?}"));
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = match cluster.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    *req.headers_mut() = upstream_headers(&parts.headers);
    let send = client.request(req);
    let result = match policy.and_then(|p| p.per_try_timeout) {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => return Outcome::TimedOut,
        },
        None => send.await,
    };
    // The endpoint counts as busy (least request) until the response headers are in.
    drop(picked);
    match result {
        Ok(resp) => Outcome::Response(resp),
        Err(e) if e.is_connect() => Outcome::ConnectFailure(error_chain(&e)),
        Err(e) => Outcome::Reset(error_chain(&e)),
    }
}

/// Drops hop-by-hop headers, which belong to the downstream connection (and which HTTP/2
/// forbids), keeping `te: trailers` that gRPC needs.
fn upstream_headers(headers: &HeaderMap) -> HeaderMap {
    const HOP_BY_HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "transfer-encoding",
        "upgrade",
        "te",
    ];
    let mut out = headers.clone();
    let te_trailers = headers
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in HOP_BY_HOP {
        out.remove(name);
    }
    if te_trailers {
        out.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    out
}

/// Drops the upstream connection's hop-by-hop headers from a response, so that framing is
/// decided by the downstream connection (an HTTP/1.1 `transfer-encoding` must not reach an
/// HTTP/2 client, nor a `connection: close` close the wrong connection).
fn strip_response_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

fn retriable(p: &RetryPolicy, outcome: &Outcome) -> bool {
    let on = |c: &str| p.retry_on.iter().any(|r| r == c);
    match outcome {
        Outcome::Response(r) => {
            let s = r.status().as_u16();
            (on("5xx") && s >= 500)
                || (on("gateway-error") && matches!(s, 502..=504))
                || (on("retriable-status-codes") && p.retriable_status_codes.contains(&s))
        }
        Outcome::ConnectFailure(_) => on("connect-failure") || on("5xx") || on("gateway-error"),
        Outcome::Reset(_) => on("reset") || on("5xx") || on("gateway-error"),
        Outcome::TimedOut => on("5xx") || on("gateway-error"),
        Outcome::NoEndpoint => false,
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

/// An error and its sources on one line: hyper's top-level messages alone are too vague.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
