//! One HTTP connection of a listener: the protocol is chosen by ALPN on TLS (`h2`, else
//! HTTP/1.1) or by the HTTP/2 connection preface on cleartext (h2c prior knowledge). HTTP/1.1
//! starts on the listener's own path for requests without a body ([`h1`]) and passes to
//! hyper's HTTP/1 server at the first request that needs more; HTTP/2 is hyper's server.
//! Each runs with the listener's [`HttpLimits`], handing each request to the listener's
//! [`HttpHandler`] with the connection's addresses and verified peer identity (for RBAC)
//! beside it ([`RequestContext`]):
//! - request headers over `max_request_headers_bytes` (or `max_headers_count` headers) are
//!   answered 431 on HTTP/1; on HTTP/2 the limit is `SETTINGS_MAX_HEADER_LIST_SIZE`, and a
//!   larger header block gets the stream refused;
//! - HTTP/1 request headers must be complete `request_headers_timeout` after their first
//!   byte (and the first bytes of a connection must tell its protocol within it), else the
//!   connection is closed: this cuts slowloris clients;
//! - a connection with no request in flight for `idle_timeout` is closed (HTTP/2 with a
//!   GOAWAY);
//! - HTTP/2 streams per connection are capped at `max_concurrent_streams`, and protocol
//!   errors (bad frames, bad HPACK) close that connection only.
//!
//! On drain the connection shuts down gracefully; at the drain deadline (`kill`) it is
//! dropped.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use slab::Slab;
use switchboard_proxy_xds::config::listener::{DEFAULT_MAX_HEADERS_COUNT, HttpLimits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::coalesce::{Flushing, coalesce};
use crate::gate::Gate;
use crate::http::{HttpHandler, RequestContext};
use crate::idle::StreamIdle;
use crate::telemetry::DownstreamAddrs;
use crate::telemetry::request::Inbound;
use crate::tls::PeerIdentity;

mod h1;
mod spare;

/// HTTP/1 reads are buffered up to at least this (hyper's default), or the header limit plus
/// some room when that is larger, so that the header limit is what answers 431.
const MIN_HTTP1_BUFFER: usize = 8192 + 4096 * 100;

/// The HTTP/2 connection preface; anything else starts HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every request of a connection is handed with: the connection's addresses and, on
/// TLS with a verified client certificate, the peer's identity.
pub(super) struct Downstream {
    pub(super) addrs: Option<DownstreamAddrs>,
    pub(super) peer: Option<Arc<PeerIdentity>>,
}

impl Downstream {
    /// A request starting on this connection: what it is handed with, its
    /// `stream_idle_timeout` (when the listener has one), and its count as in flight.
    fn begin(
        &self,
        state: &Arc<ConnState>,
        stream_idle: Option<Duration>,
    ) -> (RequestContext, Option<Arc<StreamIdle>>, InFlight) {
        let idle = stream_idle.map(|t| Arc::new(StreamIdle::new(t)));
        let ctx = RequestContext {
            addrs: self.addrs,
            peer: self.peer.clone(),
            idle: idle.clone(),
        };
        let in_flight = InFlight::begin(state.clone(), idle.clone());
        (ctx, idle, in_flight)
    }
}

/// Serves HTTP on `io` until the client is done, the connection times out, or it is drained
/// (`drain`) or killed (`kill`).
///
/// An `async` block, not an `async fn`: an `async fn` keeps its arguments twice in its state
/// (as captured and again as locals), and every open connection's task holds this state.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in every connection's task"
)]
pub(super) fn serve<S>(
    io: S,
    alpn: Option<Vec<u8>>,
    downstream: Downstream,
    limits: &HttpLimits,
    handler: Arc<HttpHandler>,
    drain: CancellationToken,
    kill: CancellationToken,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let state = Arc::new(ConnState::new());
        let mut io = Watched {
            inner: io,
            state: state.clone(),
            headers: true,
            replay: Vec::new(),
            replayed: 0,
        };
        let (prefix, h2) = match alpn.as_deref() {
            Some(b"h2") => (Vec::new(), true),
            Some(_) => (Vec::new(), false),
            None => {
                let sniffed = tokio::select! {
                    sniffed = sniff(&mut io) => sniffed,
                    expiry = watchdog(&state, limits) => {
                        tracing::debug!(?expiry, "no request in time; closing");
                        return;
                    }
                    () = drain.cancelled() => return,
                    () = kill.cancelled() => return,
                };
                match sniffed {
                    Ok(Some(sniffed)) => sniffed,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the first bytes failed");
                        return;
                    }
                }
            }
        };
        io.replay = prefix;
        if h2 {
            // HTTP/2 frames are not request headers: only idle time applies at this level.
            io.headers = false;
            state.clear_headers();
        } else if h1::serves(limits) {
            let shutdown = AtomicBool::new(false);
            let conn = h1::Conn {
                state: &state,
                limits,
                handler: &handler,
                downstream: &downstream,
                shutdown: &shutdown,
            };
            let ended = drive(
                pin!(h1::serve(&mut io, conn)),
                |_: Pin<&mut _>| shutdown.store(true, Ordering::Release),
                &state,
                limits,
                drain.clone(),
                kill.clone(),
            )
            .await;
            match ended {
                Some(h1::Ended::Handover(rest)) => {
                    // hyper's server reads the request from its first byte.
                    let mut replay = rest.to_vec();
                    replay.extend_from_slice(io.replay.get(io.replayed..).unwrap_or_default());
                    io.replay = replay;
                    io.replayed = 0;
                }
                Some(h1::Ended::Failed(e)) => {
                    tracing::debug!(error = %e, "connection ended with an error");
                    return;
                }
                Some(h1::Ended::Closed) | None => return,
            }
        }
        let svc = {
            let state = state.clone();
            let stream_idle = limits.stream_idle_timeout;
            service_fn(move |req: Request<Incoming>| {
                let (ctx, idle, in_flight) = downstream.begin(&state, stream_idle);
                let handler = handler.clone();
                // In a box: hyper moves this future by value (see `spare`).
                let handling = spare::InSlot::new(|| handler.handle(req.map(Inbound::Hyper), ctx));
                async move {
                    let resp = handling.await;
                    Ok::<_, Infallible>(resp.map(|body| Tracked {
                        body,
                        idle,
                        _in_flight: in_flight,
                    }))
                }
            })
        };
        let io = TokioIo::new(io);
        let ended = if h2 {
            let mut builder = http2::Builder::new(ConnExec { kill: kill.clone() });
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_concurrent_streams)
                .max_header_list_size(
                    u32::try_from(limits.max_request_headers_bytes).unwrap_or(u32::MAX),
                );
            if let Some(w) = limits.initial_stream_window_size {
                builder.initial_stream_window_size(w);
            }
            if let Some(w) = limits.initial_connection_window_size {
                builder.initial_connection_window_size(w);
            }
            if let Some(k) = limits.http2_keepalive {
                builder
                    .keep_alive_interval(k.interval)
                    .keep_alive_timeout(k.timeout);
            }
            let (io, flusher) = coalesce(io);
            // Boxed: HTTP/2's connection state is several times HTTP/1's, and an HTTP/1
            // connection's task would otherwise carry room for it while it idles.
            drive(
                Box::pin(Flushing::new(builder.serve_connection(io, svc), flusher)),
                |c: Pin<&mut Flushing<_, _>>| http2::Connection::graceful_shutdown(c.conn()),
                &state,
                limits,
                drain,
                kill,
            )
            .await
        } else {
            let mut builder = http1::Builder::new();
            // hyper's own cap is Envoy's default, 100 headers, in arrays it leaves unfilled.
            // Set explicitly, any count makes hyper fill two vectors of that many slots for
            // every request: 1,700 instructions a request at 100 in a `release` build (the
            // `dist` build's fat LTO and PGO remove the fill), so the default is left to hyper.
            if limits.max_headers_count != DEFAULT_MAX_HEADERS_COUNT {
                builder.max_headers(limits.max_headers_count);
            }
            builder
                .keep_alive(true)
                .max_header_size(limits.max_request_headers_bytes)
                .max_buf_size(
                    MIN_HTTP1_BUFFER
                        .max(limits.max_request_headers_bytes.saturating_add(16 * 1024)),
                )
                // The watchdog times request headers from their first byte, as Envoy does;
                // hyper's own timer would also cut idle keep-alive connections.
                .header_read_timeout(None);
            drive(
                pin!(builder.serve_connection(io, svc)),
                |c: Pin<&mut _>| http1::Connection::graceful_shutdown(c),
                &state,
                limits,
                drain,
                kill,
            )
            .await
        };
        if let Some(Err(e)) = ended {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Reads until the bytes either differ from the HTTP/2 preface or are all of it. `None`
/// when the client closed without sending anything.
async fn sniff<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<Option<(Vec<u8>, bool)>> {
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let mut chunk = [0u8; 24];
    loop {
        let want = H2_PREFACE.len() - buf.len();
        let n = io.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok((!buf.is_empty()).then_some((buf, false)));
        }
        buf.extend_from_slice(&chunk[..n]);
        if !H2_PREFACE.starts_with(&buf) {
            return Ok(Some((buf, false)));
        }
        if buf.len() == H2_PREFACE.len() {
            return Ok(Some((buf, true)));
        }
    }
}

/// Polls an HTTP connection until it ends, shutting it down gracefully on drain or idle
/// timeout, and dropping it (closing the socket) on a header timeout or the drain deadline.
/// While it shuts down, its streams' idle timeouts still apply. `None` when it was dropped.
///
/// The connection comes pinned where its caller keeps it: taken by value, it would be
/// stored twice in the task, once as the argument and once where it is pinned (rustc does
/// not overlap the two), which cost each idle HTTP/1 connection 1.2 KiB.
async fn drive<C, P>(
    mut conn: Pin<P>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    state: &ConnState,
    limits: &HttpLimits,
    drain: CancellationToken,
    kill: CancellationToken,
) -> Option<C::Output>
where
    C: Future,
    P: std::ops::DerefMut<Target = C>,
{
    let streams_only = HttpLimits {
        request_headers_timeout: None,
        idle_timeout: None,
        ..*limits
    };
    let mut watchdog = pin!(watchdog(state, limits));
    let mut drained = pin!(drain.cancelled());
    let mut killed = pin!(kill.cancelled());
    // The connection is polled on every wake-up; the rest only when one of them woke the
    // task (see `Gate`).
    let gate = Gate::new();
    let mut closing = false;
    loop {
        let event = poll_fn(|cx| {
            if let Poll::Ready(done) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Done(done));
            }
            gate.poll(cx, |cx| {
                if !closing && drained.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Drain);
                }
                if let Poll::Ready(expiry) = watchdog.as_mut().poll(cx) {
                    return Poll::Ready(Event::Expired(expiry));
                }
                if killed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Kill);
                }
                Poll::Pending
            })
        })
        .await;
        match event {
            Event::Done(done) => return Some(done),
            Event::Drain => {
                graceful_shutdown(conn.as_mut());
                closing = true;
                watchdog.set(self::watchdog(state, &streams_only));
            }
            Event::Expired(Expiry::RequestHeaders) => {
                tracing::debug!("request headers not complete in time; closing");
                return None;
            }
            Event::Expired(Expiry::Idle) => {
                tracing::debug!("idle timeout; closing");
                graceful_shutdown(conn.as_mut());
                closing = true;
                watchdog.set(self::watchdog(state, &streams_only));
            }
            Event::Kill => return None,
        }
        // A new watchdog has registered nothing yet, and the tokens may still be ready.
        gate.open();
    }
}

/// What ended one wait of [`drive`].
enum Event<T> {
    Done(T),
    Drain,
    Expired(Expiry),
    Kill,
}

#[derive(Debug)]
enum Expiry {
    RequestHeaders,
    Idle,
}

/// Resolves when the connection's request headers are late or it has been idle too long,
/// and fires the idle timeout of each stream that moved nothing for too long.
///
/// One timer for the connection and no wake-up per request: requests only touch atomics.
/// While anything is in flight it sleeps until the earliest deadline it knows of, but never
/// longer than the shortest timeout, because whatever starts meanwhile (the next request's
/// headers, a stream, the connection falling idle) has a deadline no earlier than that.
/// Only a connection with nothing in flight sleeps until its idle deadline; it is then
/// `parked`, and the first byte of a request or a new stream wakes it.
async fn watchdog(state: &ConnState, limits: &HttpLimits) -> Expiry {
    let bound = [
        limits.request_headers_timeout,
        limits.stream_idle_timeout,
        limits.idle_timeout,
    ]
    .into_iter()
    .flatten()
    .min();
    let mut sleep = pin!(tokio::time::sleep_until(Instant::now()));
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut earliest = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        let headers_since = state.headers_since();
        if let (Some(timeout), Some(since)) = (limits.request_headers_timeout, headers_since) {
            let at = since + timeout;
            if now >= at {
                return Expiry::RequestHeaders;
            }
            earliest(at);
        }
        let active = state.active.load(Ordering::Acquire) > 0;
        if let Some(timeout) = limits.idle_timeout
            && !active
        {
            let at = state.idle_since() + timeout;
            if now >= at {
                return Expiry::Idle;
            }
            earliest(at);
        }
        if limits.stream_idle_timeout.is_some()
            && let Some(at) = state.check_streams(now)
        {
            earliest(at);
        }
        if active || headers_since.is_some() {
            if let Some(bound) = bound {
                earliest(now + bound);
            }
        } else {
            state.parked.store(true, Ordering::SeqCst);
            // A request began between the reads above and parking: look again.
            if state.active.load(Ordering::SeqCst) > 0 || state.headers_since().is_some() {
                state.parked.store(false, Ordering::SeqCst);
                continue;
            }
        }
        match next {
            Some(at) => {
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
                tokio::select! {
                    () = sleep.as_mut() => {}
                    () = state.changed.notified() => {}
                }
            }
            None => state.changed.notified().await,
        }
    }
}

/// What the watchdog of one HTTP connection watches; times are milliseconds since `start`.
struct ConnState {
    start: Instant,
    /// Requests (HTTP/2 streams) whose response has not ended.
    active: AtomicUsize,
    /// When `active` last became zero.
    idle_since_ms: AtomicU64,
    /// The first byte read while no request was active (HTTP/1: the start of the next
    /// request's headers); [`NONE`] when there is none.
    headers_since_ms: AtomicU64,
    /// The streams in flight that have a `stream_idle_timeout`.
    streams: Mutex<Slab<Arc<StreamIdle>>>,
    /// The watchdog sleeps until the idle deadline: a request starting must wake it.
    parked: AtomicBool,
    /// Wakes the watchdog when `parked`.
    changed: Notify,
}

const NONE: u64 = u64::MAX;

impl ConnState {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            headers_since_ms: AtomicU64::new(NONE),
            streams: Mutex::new(Slab::new()),
            parked: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn idle_since(&self) -> Instant {
        self.at(self.idle_since_ms.load(Ordering::Acquire))
    }

    fn headers_since(&self) -> Option<Instant> {
        match self.headers_since_ms.load(Ordering::Acquire) {
            NONE => None,
            ms => Some(self.at(ms)),
        }
    }

    fn clear_headers(&self) {
        self.headers_since_ms.store(NONE, Ordering::Release);
    }

    /// Something started that the parked watchdog must time.
    fn wake_if_parked(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: when no request is active they start the next request's headers.
    fn on_read(&self) {
        if self.active.load(Ordering::Acquire) == 0
            && self
                .headers_since_ms
                .compare_exchange(NONE, self.now_ms(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.wake_if_parked();
        }
    }

    /// Fires the streams idle for their timeout; the earliest deadline of the others.
    fn check_streams(&self, now: Instant) -> Option<Instant> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next: Option<Instant> = None;
        for (_, stream) in streams.iter() {
            if stream.fired() {
                continue;
            }
            let at = stream.deadline();
            if now >= at {
                stream.fire();
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next
    }
}

/// One request in flight on a connection: from the service call to the end (or drop) of its
/// response body. Its stream is in the connection's list for the watchdog meanwhile.
struct InFlight {
    state: Arc<ConnState>,
    stream: Option<usize>,
}

impl InFlight {
    fn begin(state: Arc<ConnState>, idle: Option<Arc<StreamIdle>>) -> Self {
        state.active.fetch_add(1, Ordering::AcqRel);
        state.clear_headers();
        let stream = idle.map(|idle| {
            state
                .streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(idle)
        });
        state.wake_if_parked();
        Self { state, stream }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.state;
        if let Some(key) = self.stream {
            state
                .streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_remove(key);
        }
        if state.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            state.idle_since_ms.store(state.now_ms(), Ordering::Release);
        }
    }
}

/// A response body that keeps its request counted as active until it ends or is dropped,
/// and ends it with an error (a stream reset) once `stream_idle_timeout` passes with nothing
/// moving.
struct Tracked<B> {
    body: B,
    idle: Option<Arc<StreamIdle>>,
    _in_flight: InFlight,
}

/// Why a response body was cut short.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout")]
struct StreamIdleTimeout;

impl<B> HttpBody for Tracked<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = &this.idle {
                    idle.touch();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this
                    .idle
                    .as_ref()
                    .is_some_and(|idle| idle.poll_expired(cx).is_ready())
                {
                    tracing::debug!("stream idle timeout: resetting the response");
                    return Poll::Ready(Some(Err(Box::new(StreamIdleTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Spawns hyper's HTTP/2 stream tasks so that they end at the drain deadline with their
/// connection.
#[derive(Clone)]
struct ConnExec {
    kill: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for ConnExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let kill = self.kill.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                () = kill.cancelled() => {}
            }
        });
    }
}

/// The connection's byte stream, telling [`ConnState`] when request headers start, and
/// reading again first the bytes read while choosing the protocol.
struct Watched<S> {
    inner: S,
    state: Arc<ConnState>,
    /// Whether reads can be request headers (HTTP/1).
    headers: bool,
    /// The sniffed bytes, and how many of them have been read again (already seen by
    /// [`ConnState`], so replaying them does not count as a read).
    replay: Vec<u8>,
    replayed: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replayed < self.replay.len() {
            let rest = &self.replay[self.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replayed += n;
            if self.replayed == self.replay.len() {
                self.replay = Vec::new();
                self.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.headers && buf.filled().len() > before {
            self.state.on_read();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
