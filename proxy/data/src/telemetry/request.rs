//! Per-request telemetry, in three steps the handler calls: [`Observer::start`] when a
//! request arrives (span, trace context, active gauge, request capture for the access log),
//! [`Exchange`] filled while routing (names for labels, flags, the `traceparent` to send
//! upstream), and [`Observer::finish`] with the response (counter, latency histogram, span
//! status, and a body wrapper that counts bytes and writes the access log at its end).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use opentelemetry::trace::TraceContextExt;
use switchboard_proxy_xds::config::route::RetryPolicy;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::access_log::{LogRecord, access_log};
use super::meters::{ListenerMeters, Series};
use super::trace_context::{CallerTrace, TRACEPARENT, TRACESTATE, TraceParent};
use super::{DownstreamAddrs, LocalReply, ResponseFlags};
use crate::body::{Body, BoxError};
use crate::idle::StreamIdle;

/// What routing decided about a request, filled in by the handler as it goes. The names
/// borrow from the configuration snapshot the request was routed with (`'s`), so naming
/// costs no allocation; the access log copies the two it prints.
#[derive(Debug, Default)]
pub(crate) struct Exchange<'s> {
    pub(crate) route_config: &'s str,
    pub(crate) virtual_host: &'s str,
    pub(crate) route: &'s str,
    /// The cluster the request was sent to (or failed to be); empty for local replies.
    pub(crate) cluster: &'s str,
    pub(crate) flags: ResponseFlags,
    /// `%RESPONSE_CODE_DETAILS%` for a local reply the handler made itself.
    pub(crate) details: Option<Cow<'static, str>>,
    /// The endpoint that sent the response, when one did.
    pub(crate) upstream_host: Option<SocketAddr>,
    traceparent: Option<HeaderValue>,
    keep_tracestate: bool,
}

impl Exchange<'_> {
    /// Sets the request's W3C trace headers for the upstream: a `traceparent` naming the
    /// proxy's span as parent; the caller's `tracestate` is kept only if its `traceparent`
    /// was valid (a new trace starts with no state). Once per request: the value moves
    /// into the headers.
    pub(crate) fn propagate_trace(&mut self, headers: &mut HeaderMap) {
        let Some(tp) = self.traceparent.take() else {
            return;
        };
        headers.insert(TRACEPARENT, tp);
        if !self.keep_tracestate {
            crate::headers::remove(headers, &TRACESTATE);
        }
    }
}

/// The request, as the access log shows it: captured on arrival, before route edits.
struct Arrival {
    /// The wall-clock time of arrival, read only when the access log is on.
    start_time: SystemTime,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    downstream: Option<DownstreamAddrs>,
}

impl Arrival {
    /// The request's log record as if the downstream went away before any response
    /// (response code 0, `DC`, as Envoy logs it); a request answered overwrites the
    /// response's fields.
    fn record(self, elapsed: Duration, trace_id: String) -> LogRecord {
        LogRecord {
            start_time: self.start_time,
            method: self.method,
            uri: self.uri,
            version: self.version,
            request_headers: self.headers,
            downstream: self.downstream,
            status: 0,
            response_headers: HeaderMap::new(),
            trailers: None,
            flags: ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            details: Cow::Borrowed("downstream_remote_disconnect"),
            bytes_received: 0,
            bytes_sent: 0,
            duration: elapsed,
            response_duration: elapsed,
            upstream_host: None,
            cluster: String::new(),
            route: String::new(),
            trace_id,
        }
    }
}

/// One request's telemetry from arrival to the end of its response body.
pub(crate) struct Observer {
    meters: Arc<ListenerMeters>,
    start: Instant,
    span: Span,
    trace: TraceParent,
    active: ActiveRequest,
    arrival: Option<Arrival>,
    /// Request body bytes read so far (shared with the [`RequestBody`]); counted only for
    /// the access log, so only when it is on.
    received: Option<Arc<AtomicU64>>,
    /// The request's `stream_idle_timeout`, if its listener has one.
    idle: Option<Arc<StreamIdle>>,
    bodiless: bool,
    finished: bool,
}

impl Observer {
    /// Starts observing `req`, whose body comes back wrapped to count the bytes read.
    pub(crate) fn start(
        meters: &Arc<ListenerMeters>,
        req: Request<Inbound>,
        downstream: Option<DownstreamAddrs>,
        idle: Option<Arc<StreamIdle>>,
    ) -> (Self, Exchange<'static>, Request<RequestBody>) {
        let start = Instant::now();
        let listener = meters.listener();
        let active = ActiveRequest::new(meters.active());
        let incoming = CallerTrace::from_headers(req.headers());
        let span = tracing::info_span!(
            "proxy_request",
            otel.kind = "server",
            otel.status_code = Empty,
            listener = %listener,
            method = %req.method(),
            path = req.uri().path(),
            route = Empty,
            cluster = Empty,
            status = Empty,
            trace_id = Empty,
        );
        let trace = otel_trace(&span, incoming.as_ref()).unwrap_or_else(|| match &incoming {
            Some(parent) => parent.child(),
            None => TraceParent::new_sampled_root(),
        });
        if !span.is_disabled() {
            span.record("trace_id", trace.trace_id_hex());
        }
        let arrival = access_log().enabled().then(|| Arrival {
            start_time: SystemTime::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            downstream,
        });
        let received = arrival.is_some().then(|| Arc::new(AtomicU64::new(0)));
        let bodiless = req.method() == Method::HEAD;
        let req = req.map(|inner| RequestBody {
            inner,
            received: received.clone(),
            idle: idle.clone(),
        });
        let exchange = Exchange {
            traceparent: Some(trace.to_header_value()),
            keep_tracestate: incoming.is_some(),
            ..Default::default()
        };
        let observer = Self {
            meters: meters.clone(),
            start,
            span,
            trace,
            active,
            arrival,
            received,
            idle,
            bodiless,
            finished: false,
        };
        (observer, exchange, req)
    }

    /// The request's span, to instrument the handler with.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Records the response (metrics, span fields) and wraps its body so that the access
    /// log is written, the span closed and the request counted inactive when it ends.
    pub(crate) fn finish(mut self, ex: Exchange<'_>, resp: Response<Body>) -> Response<Body> {
        self.finished = true;
        let elapsed = self.start.elapsed();
        let status = resp.status();
        let local = resp.extensions().get::<LocalReply>().is_some();
        let mut flags = ex.flags;
        if let Some(f) = resp.extensions().get::<ResponseFlags>() {
            flags.insert(*f);
        }
        let details = ex
            .details
            .unwrap_or_else(|| Cow::Borrowed(details(flags, local)));

        self.meters.record(
            Series {
                route_config: ex.route_config,
                virtual_host: ex.virtual_host,
                cluster: ex.cluster,
                code_class: code_class(status),
            },
            elapsed,
        );

        let span = std::mem::replace(&mut self.span, Span::none());
        // i64: OpenTelemetry has no unsigned integers (a u64 would be exported as text).
        span.record("status", i64::from(status.as_u16()));
        if !ex.route.is_empty() {
            span.record("route", ex.route);
        }
        if !ex.cluster.is_empty() {
            span.record("cluster", ex.cluster);
        }
        if status.is_server_error() {
            span.record("otel.status_code", "error");
        }

        let record = self.arrival.take().map(|a| {
            Box::new(LogRecord {
                status: status.as_u16(),
                response_headers: resp.headers().clone(),
                flags,
                details,
                upstream_host: ex.upstream_host,
                cluster: ex.cluster.to_owned(),
                route: ex.route.to_owned(),
                ..a.record(elapsed, self.trace.trace_id_hex())
            })
        });
        let bodiless = self.bodiless
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let ending = Ending {
            start: self.start,
            span,
            active: self.active.take(),
            record,
            received: self.received.take(),
            idle: self.idle.take(),
            bytes_sent: 0,
            bodiless,
        };
        resp.map(|inner| {
            ObservedBody {
                inner,
                ending: Some(ending),
            }
            .boxed_unsync()
        })
    }
}

/// A request dropped before its response (the client went away): logged with response
/// code 0 and `DC`, as Envoy does.
impl Drop for Observer {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(a) = self.arrival.take() {
            access_log().emit(&LogRecord {
                bytes_received: self
                    .received
                    .as_ref()
                    .map_or(0, |r| r.load(Ordering::Relaxed)),
                ..a.record(self.start.elapsed(), self.trace.trace_id_hex())
            });
        }
    }
}

/// The OpenTelemetry ids of `span` with the caller's trace context as parent (so the
/// exported span joins the caller's trace), or `None` when no OpenTelemetry layer is
/// installed or the span is disabled.
fn otel_trace(span: &Span, caller: Option<&CallerTrace>) -> Option<TraceParent> {
    if span.is_disabled() {
        return None;
    }
    // An explicit empty parent makes the span a root rather than a child of whatever span
    // the connection runs in.
    let parent = caller.map_or_else(opentelemetry::Context::new, CallerTrace::otel_parent);
    span.set_parent(parent).ok()?;
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    sc.is_valid().then(|| {
        TraceParent::from_parts(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.is_sampled(),
        )
    })
}

/// Whether the last answer of a retried route is one the retry policy would have retried:
/// the retries ran out (`URX`). `body_retriable` says whether the request body was small
/// enough to be retried at all.
pub(crate) fn retries_exhausted(
    policy: Option<&RetryPolicy>,
    body_retriable: bool,
    resp: &Response<Body>,
) -> bool {
    let Some(p) = policy.filter(|p| p.num_retries > 0) else {
        return false;
    };
    if !body_retriable
        || resp.extensions().get::<LocalReply>().is_some()
        || resp.extensions().get::<ResponseFlags>().is_some()
    {
        return false;
    }
    let on = |c: &str| p.retry_on.iter().any(|r| r == c);
    let s = resp.status().as_u16();
    (on("5xx") && s >= 500)
        || (on("gateway-error") && matches!(s, 502..=504))
        || (on("retriable-status-codes") && p.retriable_status_codes.contains(&s))
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for what the flags say.
fn details(flags: ResponseFlags, local: bool) -> &'static str {
    const BY_FLAG: [(ResponseFlags, &str); 9] = [
        (ResponseFlags::STREAM_IDLE_TIMEOUT, "stream_idle_timeout"),
        (ResponseFlags::NO_ROUTE, "route_not_found"),
        (ResponseFlags::NO_CLUSTER, "cluster_not_found"),
        (ResponseFlags::FAULT_INJECTED, "fault_filter_abort"),
        (ResponseFlags::NO_HEALTHY_UPSTREAM, "no_healthy_upstream"),
        (
            ResponseFlags::UPSTREAM_OVERFLOW,
            "upstream_reset_before_response_started{overflow}",
        ),
        (
            ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            "upstream_response_timeout",
        ),
        (
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            "upstream_reset_before_response_started{connection_failure}",
        ),
        (
            ResponseFlags::UPSTREAM_REMOTE_RESET,
            "upstream_reset_before_response_started{remote_reset}",
        ),
    ];
    if !local {
        return "via_upstream";
    }
    BY_FLAG
        .iter()
        .find(|(f, _)| flags.contains(*f))
        .map_or("local_reply", |(_, d)| d)
}

fn code_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The `active_requests` gauge, incremented for as long as this lives.
struct ActiveRequest(Option<metrics::Gauge>);

impl ActiveRequest {
    fn new(gauge: &metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(Some(gauge.clone()))
    }

    fn take(&mut self) -> Self {
        Self(self.0.take())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.decrement(1.0);
        }
    }
}

/// What happens when a response body ends: the access log line, the span's end, and the
/// request's leaving the active gauge.
struct Ending {
    start: Instant,
    span: Span,
    active: ActiveRequest,
    /// Boxed: only there when the access log is on, and the largest part.
    record: Option<Box<LogRecord>>,
    received: Option<Arc<AtomicU64>>,
    idle: Option<Arc<StreamIdle>>,
    bytes_sent: u64,
    /// Responses that carry no body (to HEAD, 1xx, 204, 304), which hyper drops unread.
    bodiless: bool,
}

/// A downstream request's body as the listener hands it over.
pub(crate) enum Inbound {
    /// Read by hyper's server.
    Hyper(Incoming),
    /// None: the request had no body framing. The listener's own HTTP/1 path serves only
    /// such requests (`listener::http_conn::h1`).
    Empty,
}

/// The downstream request body, counting the bytes it passes on for `%BYTES_RECEIVED%`:
/// what was read, not the declared length (chunked and gRPC bodies declare none).
pub(crate) struct RequestBody {
    inner: Inbound,
    /// `None` when the access log is off: nothing would read the count.
    received: Option<Arc<AtomicU64>>,
    /// Request data counts as activity for `stream_idle_timeout`.
    idle: Option<Arc<StreamIdle>>,
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Inbound::Hyper(inner) => Pin::new(inner).poll_frame(cx).map_err(BoxError::from),
            Inbound::Empty => return Poll::Ready(None),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            if let Some(received) = &self.received {
                let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                received.fetch_add(n, Ordering::Relaxed);
            }
            if let Some(idle) = &self.idle {
                idle.touch();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inbound::Hyper(inner) => inner.is_end_stream(),
            Inbound::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inbound::Hyper(inner) => inner.size_hint(),
            Inbound::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A response body that counts the bytes it passes and ends the request's telemetry when
/// it ends, fails, or is dropped (the downstream went away: `DC`).
struct ObservedBody {
    inner: Body,
    /// Inline: the body is boxed as a whole (one allocation for both).
    ending: Option<Ending>,
}

impl ObservedBody {
    fn end(&mut self, flags: ResponseFlags) {
        let Some(ending) = self.ending.take() else {
            return;
        };
        let Ending {
            start,
            span,
            active,
            record,
            received,
            idle: _,
            bytes_sent,
            bodiless: _,
        } = ending;
        if let Some(mut r) = record {
            r.flags.insert(flags);
            r.bytes_received = received.map_or(0, |c| c.load(Ordering::Relaxed));
            r.bytes_sent = bytes_sent;
            r.duration = start.elapsed();
            access_log().emit(&r);
        }
        drop(span);
        drop(active);
    }
}

impl hyper::body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(ending) = this.ending.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                        ending.bytes_sent = ending.bytes_sent.saturating_add(n);
                    } else if let Some(trailers) = frame.trailers_ref()
                        && let Some(r) = ending.record.as_mut()
                    {
                        r.trailers = Some(trailers.clone());
                    }
                }
                if this.inner.is_end_stream() {
                    this.end(ResponseFlags::empty());
                }
            }
            Poll::Ready(Some(Err(_))) => this.end(ResponseFlags::UPSTREAM_REMOTE_RESET),
            Poll::Ready(None) => this.end(ResponseFlags::empty()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        let complete =
            self.inner.is_end_stream() || self.ending.as_ref().is_some_and(|e| e.bodiless);
        let idle = self
            .ending
            .as_ref()
            .and_then(|e| e.idle.as_ref())
            .is_some_and(|i| i.fired());
        self.end(if complete {
            ResponseFlags::empty()
        } else if idle {
            // The listener reset the stream: it was idle, not the client that left.
            ResponseFlags::STREAM_IDLE_TIMEOUT
        } else {
            ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_classes() {
        for (s, c) in [
            (101, "1xx"),
            (200, "2xx"),
            (302, "3xx"),
            (404, "4xx"),
            (503, "5xx"),
        ] {
            assert_eq!(code_class(StatusCode::from_u16(s).unwrap()), c);
        }
    }

    #[test]
    fn details_follow_flags() {
        assert_eq!(details(ResponseFlags::empty(), false), "via_upstream");
        assert_eq!(details(ResponseFlags::NO_ROUTE, true), "route_not_found");
        assert_eq!(
            details(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT, true),
            "upstream_response_timeout"
        );
        assert_eq!(details(ResponseFlags::empty(), true), "local_reply");
    }
}
