//! HTTP/1 exchanges on upstream connections, plaintext or TLS, driven by the request's own
//! task.
//!
//! Why not hyper's client for these: it gives every connection a task of its own and passes
//! each request and response through channels between that task and the request's. For a
//! request with no body, that hand-over was about a fifth of the proxy's instructions per
//! request (loadtest/proxy-bench-log.md, fourteenth session). Here the request's task writes
//! the head, httparse (the parser hyper uses) reads the response head, and the response body
//! reads its own bytes; a connection with nothing in flight sits in its host's idle list and
//! has no task.
//!
//! Only requests [`eligible`] take this path: no body to send, no upgrade, not `CONNECT`,
//! over plaintext or TLS that does not offer `h2` (the pool decides). Everything else
//! (bodies, upgrades, HTTP/2) stays on hyper's client.
//!
//! Response framing follows RFC 9112 §6.3, as hyper's client does: no body for `HEAD`,
//! 1xx, 204 and 304; `Transfer-Encoding` with `chunked` last is chunked (trailers passed
//! on), without it the body runs to the connection's end; otherwise `Content-Length`
//! (several only when equal), else to the end. 1xx responses are skipped. A connection is
//! reused only after a complete body on a keep-alive exchange with nothing left over.

use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version, response};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::state::ConnectionSlot;
use super::transport::Stream;
use crate::body::{Body, BoxError};
use crate::headers::{Length, has_token, header_name, last_token_is_chunked};

/// Response header lines accepted, as hyper's client.
const MAX_HEADERS: usize = 100;
/// The largest response head (and chunk-size line or trailer section) read before giving
/// up: hyper's client's default buffer limit, so that both paths accept the same responses.
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// How much room a read asks for: at first, and at most (a body that keeps filling its
/// reads gets larger ones, as hyper's adaptive read buffer does).
const READ_CHUNK: usize = 8192;
const MAX_READ_CHUNK: usize = 128 * 1024;

/// Whether `req` can take this path (see the module doc). No `Upgrade` check: the handler
/// strips it with the other hop-by-hop headers (`forward::upstream_headers`) before any
/// request reaches a pool.
pub(super) fn eligible(req: &Request<Body>) -> bool {
    hyper::body::Body::is_end_stream(req.body()) && req.method() != Method::CONNECT
}

/// Whether a request may be sent again after its connection closed without an answer
/// (RFC 9110 §9.2.2).
pub(super) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// One upstream connection of this path.
pub(super) struct Conn {
    stream: Stream,
    /// Bytes read and not yet passed on.
    rbuf: BytesMut,
    /// The request head being written; kept for its capacity.
    wbuf: Vec<u8>,
    /// Frees the connection's `max_connections` slot when the connection closes.
    _slot: ConnectionSlot,
}

/// Why an exchange failed.
pub(super) enum Failure {
    /// The connection closed or reset before a byte of the response came: a request on a
    /// connection that had been idle may be sent again on another (if idempotent).
    Unanswered(String),
    /// Anything else; the message says what.
    Failed(String),
}

/// The response head and how its body is framed.
pub(super) struct Head {
    pub(super) parts: response::Parts,
    framing: Framing,
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the connection closes.
    Eof,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section and the final CRLF.
    Trailers,
    Done,
}

impl Conn {
    pub(super) fn new(stream: Stream, slot: ConnectionSlot) -> Self {
        Self {
            stream,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            _slot: slot,
        }
    }

    /// Whether a connection that sat idle can carry a request: a read finds nothing to
    /// read. The upstream closing it (a TLS `close_notify`, the end of the stream, a reset),
    /// or sending bytes nobody asked for, makes it unusable; TLS records that carry no data
    /// (a TLS 1.3 session ticket) do not. Costs a syscall only when the runtime saw the
    /// socket become readable.
    pub(super) fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        Pin::new(&mut self.stream)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Sends the head of `req` (no body: see [`eligible`]) as `path`, and reads the response
    /// head.
    pub(super) fn exchange(
        &mut self,
        req: &Request<Body>,
        path: &PathAndQuery,
        host_header: &HeaderValue,
    ) -> impl Future<Output = Result<Head, Failure>> + Send + '_ {
        encode(req, path, host_header, &mut self.wbuf);
        // Only this crosses an await: a request's body is not `Sync`.
        let head_only = req.method() == Method::HEAD;
        self.round_trip(head_only)
    }

    async fn round_trip(&mut self, head_only: bool) -> Result<Head, Failure> {
        // The flush sends what TLS holds back; over plaintext it does nothing.
        let written = match self.stream.write_all(&self.wbuf).await {
            Ok(()) => self.stream.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            return Err(Failure::Unanswered(format!("writing the request: {e}")));
        }
        let mut received = false;
        loop {
            match parse_head(&mut self.rbuf, head_only) {
                Ok(Some(Parsed::Informational)) => {
                    received = true;
                    continue;
                }
                Ok(Some(Parsed::Final(head))) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err(Failure::Failed(e)),
            }
            if self.rbuf.len() >= MAX_HEAD_BYTES {
                return Err(Failure::Failed("response head too large".to_owned()));
            }
            received |= !self.rbuf.is_empty();
            self.rbuf.reserve(READ_CHUNK);
            let read = self.stream.read_buf(&mut self.rbuf).await;
            let closed = match read {
                Ok(0) => "connection closed before message completed".to_owned(),
                Ok(_) => continue,
                Err(e) => format!("reading the response: {e}"),
            };
            return Err(if received {
                Failure::Failed(closed)
            } else {
                Failure::Unanswered(closed)
            });
        }
    }
}

/// The request head, as hyper's client writes a request with no body: origin-form target,
/// `host` added when missing, no `transfer-encoding` and no `content-length` added.
fn encode(req: &Request<Body>, path: &PathAndQuery, host_header: &HeaderValue, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let headers = req.headers();
    if !headers.contains_key(HOST) {
        line(out, b"host", host_header.as_bytes());
    }
    for (name, value) in headers {
        if name != TRANSFER_ENCODING {
            line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

enum Parsed {
    /// A 1xx response, consumed.
    Informational,
    Final(Head),
}

/// Parses a response head at the start of `buf` and consumes it; `None` while incomplete.
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Parsed>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Where each header's name and value lie in `buf`, so that the values can be slices of
    // one frozen buffer (no copy) once httparse's borrow of it ends.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, code, version, count) = {
        // Left uninitialised (httparse writes what it returns): 3.2 kB of stores saved on
        // every response.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("invalid response head: {e}")),
        };
        let base = buf.as_ptr() as usize;
        // httparse returns slices of its input; should one not be, the offsets fall outside
        // the head and the lookup below refuses them rather than panicking.
        let offset =
            |s: &[u8]| u32::try_from((s.as_ptr() as usize).wrapping_sub(base)).unwrap_or(u32::MAX);
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            let (n, v) = (offset(h.name.as_bytes()), offset(h.value));
            let end =
                |start: u32, l: usize| start.saturating_add(u32::try_from(l).unwrap_or(u32::MAX));
            *span = (n, end(n, h.name.len()), v, end(v, h.value.len()));
        }
        (
            len,
            resp.code.unwrap_or_default(),
            resp.version.unwrap_or_default(),
            resp.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let status =
        StatusCode::from_u16(code).map_err(|_| format!("invalid response status {code}"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("unexpected 101 Switching Protocols to a request without an upgrade".into());
    }
    if status.is_informational() {
        return Ok(Some(Parsed::Informational));
    }
    let http10 = version == 0;
    let mut headers = HeaderMap::with_capacity(count);
    let mut keep_alive = !http10;
    let mut close = false;
    let mut te = None::<bool>;
    let mut length = Length::None;
    for &(ns, ne, vs, ve) in spans.iter().take(count) {
        let range = |s: u32, e: u32| (s as usize)..(e as usize);
        let name = header_name(head.get(range(ns, ne)).unwrap_or_default())
            .map_err(|_| "invalid response header name".to_owned())?;
        let value = match head.get(range(vs, ve)) {
            // A slice of the frozen head, not a copy.
            Some(_) => HeaderValue::from_maybe_shared(head.slice(range(vs, ve))),
            None => return Err(format!("invalid value of response header {name}")),
        }
        .map_err(|_| format!("invalid value of response header {name}"))?;
        if name == CONNECTION {
            if has_token(value.as_bytes(), b"close") {
                close = true;
            } else if http10 && has_token(value.as_bytes(), b"keep-alive") {
                keep_alive = true;
            }
        } else if name == TRANSFER_ENCODING {
            // Only the last coding of the last line counts.
            te = Some(last_token_is_chunked(value.as_bytes()));
        } else if name == CONTENT_LENGTH {
            length = length.add(value.as_bytes());
        }
        headers.append(name, value);
    }
    let keep_alive = keep_alive && !close;
    let framing =
        if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Length(0)
        } else if let Some(chunked) = te {
            if http10 {
                return Err("transfer-encoding in an HTTP/1.0 response".to_owned());
            }
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::Eof
            }
        } else {
            match length {
                Length::None => Framing::Eof,
                Length::Valid(n) => Framing::Length(n),
                Length::Invalid => return Err("invalid content-length in the response".to_owned()),
            }
        };
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    parts.headers = headers;
    Ok(Some(Parsed::Final(Head {
        parts,
        // A body running to the connection's end uses the connection up.
        keep_alive: keep_alive && framing != Framing::Eof,
        framing,
    })))
}

/// Why a response body did not end well.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseError {
    #[error("upstream connection closed before the response body ended")]
    Closed,
    #[error("reading the upstream response body: {0}")]
    Io(#[from] io::Error),
    #[error("invalid chunked response body: {0}")]
    Chunked(&'static str),
}

/// The response body: reads its bytes from the connection whenever it is polled, and puts
/// the connection back in its host's idle list when it ends on a reusable exchange.
pub(super) struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    idle: Arc<Idle>,
    /// The room the next read asks for.
    read_size: usize,
}

impl ResponseBody {
    pub(super) fn new(conn: Conn, head: &Head, idle: Arc<Idle>) -> Self {
        let mut body = Self {
            conn: Some(conn),
            framing: head.framing,
            keep_alive: head.keep_alive,
            idle,
            read_size: READ_CHUNK,
        };
        if body.is_done() {
            body.finish();
        }
        body
    }

    fn is_done(&self) -> bool {
        matches!(
            self.framing,
            Framing::Length(0) | Framing::Chunked(Chunk::Done)
        )
    }

    /// The body ended: the connection goes back to the pool when it can carry another
    /// exchange (nothing left over from this one).
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.rbuf.is_empty()
        {
            self.idle.put(conn);
        }
    }

    /// How many bytes decoding may wait for before the data is called malformed.
    fn waiting_too_long(&self) -> bool {
        matches!(
            self.framing,
            Framing::Chunked(Chunk::Size | Chunk::Trailers)
        ) && self
            .conn
            .as_ref()
            .is_some_and(|c| c.rbuf.len() >= MAX_HEAD_BYTES)
    }
}

/// The next frame of a body framed as `framing` from the bytes read so far, if they hold
/// one; `framing` moves on.
fn decode(
    framing: &mut Framing,
    buf: &mut BytesMut,
) -> Result<Option<Frame<Bytes>>, ResponseError> {
    loop {
        match *framing {
            Framing::Length(0) | Framing::Chunked(Chunk::Done) => return Ok(None),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = take(buf.len(), left);
                *framing = Framing::Length(left - n as u64);
                return Ok(Some(Frame::data(buf.split_to(n).freeze())));
            }
            Framing::Eof => {
                if buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Frame::data(buf.split().freeze())));
            }
            Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    *framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(ResponseError::Chunked("bad chunk size line")),
            },
            Framing::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = take(buf.len(), left);
                let rest = left - n as u64;
                *framing = Framing::Chunked(if rest == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rest)
                });
                return Ok(Some(Frame::data(buf.split_to(n).freeze())));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(ResponseError::Chunked("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (used, trailers) = match httparse::parse_headers(buf, &mut lines) {
                    Ok(httparse::Status::Complete((used, lines))) => {
                        let mut trailers = HeaderMap::with_capacity(lines.len());
                        for l in lines.iter() {
                            let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(l.name.as_bytes()),
                                HeaderValue::from_bytes(l.value),
                            ) else {
                                return Err(ResponseError::Chunked("invalid trailer"));
                            };
                            trailers.append(name, value);
                        }
                        (used, trailers)
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(ResponseError::Chunked("invalid trailer section")),
                };
                buf.advance(used);
                *framing = Framing::Chunked(Chunk::Done);
                if trailers.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Frame::trailers(trailers)));
            }
        }
    }
}

/// One endpoint's idle connections of this path, newest last, and the reaper that closes
/// those the upstream closed (within [`REAP_INTERVAL`]) or that sat idle for the pool's
/// idle timeout: the job the connection's own task does on hyper's path. The reaper is a
/// task only while there are idle connections.
pub(super) struct Idle {
    timeout: Duration,
    inner: Mutex<IdleList>,
    /// The host's "a connection came back" (shared with hyper's path), for requests waiting
    /// for a connection slot.
    returned: Arc<Notify>,
}

#[derive(Default)]
struct IdleList {
    /// With when each became idle.
    conns: Vec<(Conn, Instant)>,
    reaping: bool,
}

/// How often the reaper looks at the idle connections.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

impl Idle {
    pub(super) fn new(timeout: Duration, returned: Arc<Notify>) -> Self {
        Self {
            timeout,
            inner: Mutex::new(IdleList::default()),
            returned,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleList> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lock().conns.is_empty()
    }

    /// The newest idle connection that is still usable; those that are not are closed on
    /// the way.
    pub(super) fn take(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some((mut conn, _)) = idle.conns.pop() {
            if conn.reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// Closes the oldest idle connection, if any, freeing its connection slot for a
    /// request of hyper's path.
    pub(super) fn close_oldest(&self) {
        let mut idle = self.lock();
        if !idle.conns.is_empty() {
            drop(idle.conns.remove(0));
        }
    }

    /// A connection whose exchange ended cleanly, idle now; starts the reaper if it is not
    /// running.
    fn put(self: &Arc<Self>, conn: Conn) {
        let mut idle = self.lock();
        idle.conns.push((conn, Instant::now()));
        let start_reaper = !idle.reaping;
        idle.reaping = true;
        drop(idle);
        self.returned.notify_one();
        if start_reaper {
            let this = self.clone();
            tokio::spawn(async move { this.reap().await });
        }
    }

    async fn reap(&self) {
        loop {
            tokio::time::sleep(REAP_INTERVAL).await;
            let mut idle = self.lock();
            let now = Instant::now();
            let timeout = self.timeout;
            idle.conns.retain_mut(|(conn, since)| {
                now.duration_since(*since) < timeout && conn.reusable()
            });
            if idle.conns.is_empty() {
                idle.reaping = false;
                return;
            }
        }
    }
}

/// At most `left` of `available` bytes.
fn take(available: usize, left: u64) -> usize {
    usize::try_from(left).map_or(available, |l| l.min(available))
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            let decoded = match this.conn.as_mut() {
                Some(conn) => decode(&mut this.framing, &mut conn.rbuf),
                None => Ok(None),
            };
            match decoded {
                Ok(Some(frame)) => {
                    if this.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if this.is_done() => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BoxError::new(e))));
                }
            }
            if this.waiting_too_long() {
                this.conn = None;
                return Poll::Ready(Some(Err(BoxError::new(ResponseError::Chunked(
                    "chunk size line or trailers too long",
                )))));
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            conn.rbuf.reserve(this.read_size);
            // Through `AsyncRead`, whose short reads tell the runtime the socket is drained:
            // then checking the connection when it is next taken costs no syscall.
            let read = pin!(conn.stream.read_buf(&mut conn.rbuf)).poll(cx);
            match std::task::ready!(read) {
                Ok(0) => {
                    this.conn = None;
                    if this.framing == Framing::Eof {
                        this.framing = Framing::Length(0);
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(BoxError::new(ResponseError::Closed))));
                }
                Ok(n) => {
                    if n >= this.read_size {
                        this.read_size = (this.read_size * 2).min(MAX_READ_CHUNK);
                    }
                }
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BoxError::new(ResponseError::Io(e)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
