//! What the proxy does itself, without an upstream: local responses (errors, direct
//! responses, redirects) and the request/response edits a route asks for.

use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use switchboard_proxy_xds::config::route::{Forward, HeaderMutation, PathMatch, Redirect, Route};

use crate::body::{Body, full};
use crate::telemetry::{LocalReply, ResponseFlags};

/// A plain-text local reply; the body says what is wrong so an operator reading a client's
/// log does not have to guess whether the proxy or the app answered. It carries the
/// response flags its reason implies (`%RESPONSE_FLAGS%`); a caller that knows better
/// inserts its own [`ResponseFlags`], which replace them.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut body = message.into();
    let flags = flags_of(status, &body);
    body.push('\n');
    let mut resp = text(status, body);
    if !flags.is_empty() {
        resp.extensions_mut().insert(flags);
    }
    resp
}

/// The response flags a local error's status and reason imply: the forward path reports
/// why it gave up through these reasons (no healthy endpoint, connect error, timeout,
/// reset, overflow, unknown cluster).
fn flags_of(status: StatusCode, reason: &str) -> ResponseFlags {
    let reason = reason.to_ascii_lowercase();
    let has = |s: &str| reason.contains(s);
    if has("overflow") || has("circuit breaker") {
        ResponseFlags::UPSTREAM_OVERFLOW
    } else if has("no healthy") {
        ResponseFlags::NO_HEALTHY_UPSTREAM
    } else if has("connect error") || has("connection failure") || has("connect failure") {
        ResponseFlags::UPSTREAM_CONNECTION_FAILURE
    } else if has("timeout") || has("timed out") {
        ResponseFlags::UPSTREAM_REQUEST_TIMEOUT
    } else if has("reset") {
        ResponseFlags::UPSTREAM_REMOTE_RESET
    } else if has("cluster") && has("not configured") {
        ResponseFlags::NO_CLUSTER
    } else if status == StatusCode::GATEWAY_TIMEOUT {
        ResponseFlags::UPSTREAM_REQUEST_TIMEOUT
    } else {
        ResponseFlags::empty()
    }
}

/// Marks a response as the proxy's own (for telemetry: `cluster` labels, response flags).
pub(super) fn mark_local(resp: &mut Response<Body>) {
    resp.extensions_mut().insert(LocalReply);
}

pub(super) fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    mark_local(&mut resp);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert("server", HeaderValue::from_static("switchboard-proxy"));
    resp
}

pub(super) fn direct(status: u16, body: Option<&str>) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(status, body.unwrap_or_default().to_owned())
}

/// Builds `Location` from the request with the redirect's replacements applied.
pub(super) fn redirect<B>(
    r: &Redirect,
    req: &Request<B>,
    host: &str,
    matched: &PathMatch,
) -> Response<Body> {
    let scheme = r
        .scheme
        .clone()
        .or_else(|| req.uri().scheme_str().map(str::to_owned))
        .unwrap_or_else(|| "http".to_owned());
    let (orig_host, orig_port) = match host.parse::<Authority>() {
        Ok(a) => (a.host().to_owned(), a.port_u16()),
        Err(_) => (host.to_owned(), None),
    };
    let host = r.host.clone().unwrap_or(orig_host);
    // A scheme change drops the original port (it belonged to the old scheme).
    let port = r.port.or(if r.scheme.is_some() { None } else { orig_port });
    let path = req.uri().path();
    let path = match (&r.path, &r.prefix_rewrite) {
        (Some(p), _) => p.clone(),
        (None, Some(prefix)) => replace_prefix(path, matched, prefix),
        (None, None) => path.to_owned(),
    };
    let query = match req.uri().query() {
        Some(q) if !r.strip_query && !path.contains('?') => format!("?{q}"),
        _ => String::new(),
    };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    let location = format!("{scheme}://{host}{port}{path}{query}");
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let mut resp = text(status, String::new());
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(LOCATION, v);
            resp
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the redirect produced an invalid Location",
        ),
    }
}

/// Envoy's prefix rewrite: the matched prefix (the whole path for an exact match) is
/// replaced; regex matches are left alone (Envoy rejects that combination).
fn replace_prefix(path: &str, matched: &PathMatch, replacement: &str) -> String {
    let cut = match matched {
        PathMatch::Prefix(p) if path.starts_with(p.as_str()) => p.len(),
        PathMatch::Exact(p) if path == p => p.len(),
        _ => return path.to_owned(),
    };
    let rest = path.get(cut..).unwrap_or_default();
    format!("{replacement}{rest}")
}

/// The request as it goes upstream: header mutations, prefix rewrite and host rewrite.
pub(super) fn rewrite<B>(
    mut req: Request<B>,
    route: &Route,
    f: &Forward,
    host: &str,
) -> Request<B> {
    // HTTP/2 clients carry the host in :authority only; HTTP/1.1 upstreams need a Host.
    if !req.headers().contains_key(HOST)
        && let Ok(v) = HeaderValue::from_str(host)
    {
        req.headers_mut().insert(HOST, v);
    }
    if let Some(h) = &f.host_rewrite
        && let Ok(v) = HeaderValue::from_str(h)
    {
        req.headers_mut().insert(HOST, v);
    }
    mutate(req.headers_mut(), &route.request_headers);
    if let Some(prefix) = &f.prefix_rewrite {
        let path = replace_prefix(req.uri().path(), &route.matcher.path, prefix);
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        if let Ok(pq) = pq.parse::<PathAndQuery>() {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

/// Applies a route's header mutation: removals first, then sets, then appends (Envoy's
/// order, so a route can replace a header it also removes).
pub(super) fn mutate(headers: &mut HeaderMap, m: &HeaderMutation) {
    for name in &m.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &m.set {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &m.append {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.append(n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_replacement() {
        let cases = [
            ("/api/v1/x", PathMatch::Prefix("/api/".into()), "/", "/v1/x"),
            (
                "/api/v1/x",
                PathMatch::Prefix("/api".into()),
                "/svc",
                "/svc/v1/x",
            ),
            ("/old", PathMatch::Exact("/old".into()), "/new", "/new"),
            ("/other", PathMatch::Prefix("/api".into()), "/x", "/other"),
        ];
        for (path, m, rep, want) in cases {
            assert_eq!(replace_prefix(path, &m, rep), want, "{path}");
        }
    }

    #[test]
    fn error_flags_follow_the_reason() {
        let cases = [
            (503, "no healthy endpoint in cluster \"a\"", "UH"),
            (503, "upstream connect error (cluster \"a\"): refused", "UF"),
            (504, "upstream request timeout", "UT"),
            (502, "upstream reset (cluster \"a\"): eof", "UR"),
            (503, "cluster \"a\" is not configured", "NC"),
            (503, "upstream overflow (circuit breaker)", "UO"),
            (404, "no route matches this request", "-"),
        ];
        for (status, reason, want) in cases {
            let resp = error(StatusCode::from_u16(status).unwrap(), reason);
            let flags = resp
                .extensions()
                .get::<ResponseFlags>()
                .copied()
                .unwrap_or_default();
            assert_eq!(flags.to_string(), want, "{reason}");
            assert!(resp.extensions().get::<LocalReply>().is_some());
        }
    }
}
