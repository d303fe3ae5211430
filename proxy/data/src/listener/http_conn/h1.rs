//! HTTP/1.1 requests without a body, served by the connection's own task instead of hyper's
//! server.
//!
//! Why: hyper's HTTP/1 dispatcher was about a third of the proxy's user-space instructions
//! for such a request (loadtest/proxy-bench-log.md, twentieth session), and it keeps a
//! 16 KiB read buffer and an 8 KiB write buffer for each connection's life: most of the
//! 26 KiB an idle keep-alive connection cost. Here httparse (the parser hyper uses) reads
//! the head from a 4 KiB buffer, the request's header values are slices of it, and the
//! response head goes out with the body's first data in one vectored write.
//!
//! Only requests with nothing to negotiate take this path: HTTP/1.1, not `HEAD` or
//! `CONNECT`, no `content-length`, `transfer-encoding`, `expect`, `upgrade` or `te`, and a
//! head within the listener's limits that parses. At the first request that is not, the
//! connection goes to hyper's server with the bytes read so far ([`Ended::Handover`]), and
//! hyper serves it from there: bodies, upgrades, and the 400, 414 and 431 answers.
//!
//! What hyper's server does that matters, done the same way:
//! - a client that closes its connection while its request is in flight cancels it;
//! - `connection: close` from the client, or a graceful shutdown before the response head,
//!   closes after the response and says so in a `connection: close` header;
//! - responses are framed as hyper frames them (RFC 9112 §6): the body's exact length
//!   as `content-length` (a length header already there is trusted), `chunked` when
//!   unknown, no body for 204 and 304, a `date` header when there is none, trailers
//!   dropped (the client did not ask for them with `te: trailers`);
//! - a body that fails, or ends short of its length, closes the connection.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, Entry, TRAILER, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version, response};
use hyper::body::Body as HttpBody;
use switchboard_proxy_xds::config::listener::HttpLimits;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{ConnState, Downstream, Tracked, spare};
use crate::headers::{Length, has_token, header_name, last_token_is_chunked};
use crate::http::HttpHandler;
use crate::telemetry::request::Inbound;

/// Request header lines parsed at most: hyper's server's default cap. A listener that
/// allows more is served by hyper alone ([`serves`]).
const MAX_HEADERS: usize = 100;
/// Request headers that ask for more than this path does: a body, an upgrade, a `100
/// Continue`, trailers.
const LEFT_TO_HYPER: [&[u8]; 5] = [
    b"content-length",
    b"transfer-encoding",
    b"upgrade",
    b"expect",
    b"te",
];
/// The longest request target hyper's server accepts (it answers 414 above).
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Whether this path can serve a listener with these limits.
pub(super) fn serves(limits: &HttpLimits) -> bool {
    limits.max_headers_count <= MAX_HEADERS
}

/// What one connection's requests are served with.
pub(super) struct Conn<'a> {
    pub(super) state: &'a Arc<ConnState>,
    pub(super) limits: &'a HttpLimits,
    pub(super) handler: &'a Arc<HttpHandler>,
    pub(super) downstream: &'a Downstream,
    /// Set by a graceful shutdown (drain, idle timeout): close once nothing is in flight.
    pub(super) shutdown: &'a AtomicBool,
}

/// How serving ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// The connection is done: the client closed it, or it was closed after a response.
    Closed,
    /// A request this path leaves to hyper starts at the front of these bytes.
    Handover(BytesMut),
    /// Reading or writing failed, the client went away mid-request, or a response could
    /// not be sent whole; the message says which.
    Failed(String),
}

/// Serves requests on `io` until the connection ends or a request needs hyper.
///
/// The read buffer (4 KiB, where hyper's grows to 16) and the box the request's future runs
/// in go back to the worker while the connection waits for a request, and come from it
/// when one arrives ([`spare`]): kept for the connection's life, as hyper's server keeps
/// them, they cost each idle connection 10 KiB. The last response's header map is kept,
/// cleared, for the next request's headers, and the response head's buffer for its
/// capacity: handing those to the worker too saved 0.5 KiB a connection for 230
/// instructions a request.
pub(super) async fn serve<S>(io: &mut S, conn: Conn<'_>) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Between requests, the worker's ([`spare`]).
    let mut buf = BytesMut::new();
    // The response head; kept for its capacity.
    let mut out = Vec::new();
    // The request's headers; the response's, cleared, become the next request's.
    let mut headers = HeaderMap::new();
    // The box a request's future runs in (boxed, as hyper boxes it: it is the largest state
    // a connection has); between requests, the worker's.
    let mut handling = None;
    loop {
        let (req, keep_alive) = loop {
            match parse(&mut buf, &mut headers, conn.limits) {
                Parsed::Request(req, keep_alive) => break (req, keep_alive),
                Parsed::Other => return Ended::Handover(buf),
                Parsed::Partial => {}
            }
            let read = poll_fn(|cx| {
                if conn.shutdown.load(Ordering::Acquire) {
                    return Poll::Ready(None);
                }
                let read = poll_read_head(io, &mut buf, cx);
                if read.is_pending() {
                    spare::give_slot(&mut handling);
                }
                read.map(Some)
            })
            .await;
            match read {
                None => return close(io).await,
                Some(Ok(0)) if buf.is_empty() => return Ended::Closed,
                // hyper answers (or ends) an incomplete head as it always has.
                Some(Ok(0)) => return Ended::Handover(buf),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ended::Failed(format!("reading a request: {e}")),
            }
        };
        let (ctx, idle, in_flight) = conn
            .downstream
            .begin(conn.state, conn.limits.stream_idle_timeout);
        let slot = handling.get_or_insert_with(spare::take_slot);
        slot.set(Some(Arc::clone(conn.handler).handle(req, ctx)));
        let resp = poll_fn(|cx| {
            if let Some(fut) = slot.as_mut().as_pin_mut()
                && let Poll::Ready(resp) = fut.poll(cx)
            {
                return Poll::Ready(Some(resp));
            }
            match gone(io, &mut buf, cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        slot.set(None);
        let Some(resp) = resp else {
            return Ended::Failed(
                "the client closed the connection with its request in flight".to_owned(),
            );
        };
        let (mut parts, body) = resp.into_parts();
        let body = Tracked {
            body,
            idle,
            _in_flight: in_flight,
        };
        let length = if body.is_end_stream() {
            BodyLength::None
        } else {
            match body.size_hint().exact() {
                Some(n) => BodyLength::Known(n),
                None => BodyLength::Unknown,
            }
        };
        let keep_alive = keep_alive && !conn.shutdown.load(Ordering::Acquire);
        let (framing, last) = match encode_head(&mut parts, length, keep_alive, &mut out) {
            Ok(encoded) => encoded,
            Err(e) => return Ended::Failed(e),
        };
        headers = parts.headers;
        headers.clear();
        if let Err(ended) = send_body(io, &mut buf, &mut out, body, framing).await {
            return ended;
        }
        if let Err(e) = io.flush().await {
            return Ended::Failed(format!("writing a response: {e}"));
        }
        if last || conn.shutdown.load(Ordering::Acquire) {
            return close(io).await;
        }
    }
}

/// Shuts the write side down, as hyper does when it closes a connection.
async fn close<S: AsyncWrite + Unpin>(io: &mut S) -> Ended {
    // The client may be gone already; the connection ends either way.
    let _ = io.shutdown().await;
    Ended::Closed
}

/// Reads into `buf`, giving it room first; a longer head takes more reads. An empty `buf`
/// without room takes one of the worker's spares ([`spare`]).
fn poll_read<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == buf.len() {
        if buf.is_empty() {
            *buf = spare::take();
        } else {
            buf.reserve(spare::BUFFER);
        }
    }
    pin!(io.read_buf(buf)).poll(cx)
}

/// [`poll_read`] for a request's head: with nothing to read yet, an empty `buf` goes back
/// to the worker's spares while the connection waits.
fn poll_read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let read = poll_read(io, buf, cx);
    if read.is_pending() {
        spare::give(buf);
    }
    read
}

/// Whether the client went away while its request is in flight, as hyper's server checks:
/// with nothing already read ahead, a read that finds the end of the stream (or fails)
/// means it did. Bytes of a next request are kept. Costs no syscall while the runtime has
/// seen nothing to read.
fn gone<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<()> {
    if !buf.is_empty() {
        return Poll::Pending;
    }
    match poll_read(io, buf, cx) {
        Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(()),
        Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
    }
}

/// What a buffer holds at its front.
// Returned once a request and moved on at once; boxing the request would allocate for each.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// Not all of a request head yet.
    Partial,
    /// A request this path serves, and whether the client keeps the connection open.
    Request(Request<Inbound>, bool),
    /// A request for hyper's server (see the module doc), or bytes it will refuse.
    Other,
}

/// Parses a request head at the front of `buf`, and takes it off when this path serves it.
/// The request's headers go into `headers` (emptied, kept for its capacity).
fn parse(buf: &mut BytesMut, headers: &mut HeaderMap, limits: &HttpLimits) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let max_bytes = limits.max_request_headers_bytes;
    // Where the target and each header's name and value lie in `buf`, so that they can be
    // slices of one frozen buffer (no copy) once httparse's borrow of it ends.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let mut keep_alive = true;
    let (len, method, target, count) = {
        // Left uninitialised, as hyper leaves them: httparse writes what it returns.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let max_headers = limits.max_headers_count.min(MAX_HEADERS);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut headers[..max_headers],
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= max_bytes => len,
            Ok(httparse::Status::Partial) if buf.len() <= max_bytes => return Parsed::Partial,
            // Too large, too many headers, or malformed: hyper answers.
            _ => return Parsed::Other,
        };
        if req.version != Some(1) {
            return Parsed::Other;
        }
        let method = match req.method.map(|m| Method::from_bytes(m.as_bytes())) {
            Some(Ok(m)) if m != Method::HEAD && m != Method::CONNECT => m,
            _ => return Parsed::Other,
        };
        let base = buf.as_ptr() as usize;
        // httparse returns slices of its input; should one not be, the offsets fall outside
        // the head and the lookups below refuse them rather than panicking.
        let offset =
            |s: &[u8]| u32::try_from((s.as_ptr() as usize).wrapping_sub(base)).unwrap_or(u32::MAX);
        let end = |start: u32, l: usize| start.saturating_add(u32::try_from(l).unwrap_or(u32::MAX));
        let target = match req.path {
            Some(p) if p.len() <= MAX_TARGET => {
                let start = offset(p.as_bytes());
                (start, end(start, p.len()))
            }
            _ => return Parsed::Other,
        };
        for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
            let name = h.name.as_bytes();
            if LEFT_TO_HYPER.iter().any(|n| name.eq_ignore_ascii_case(n)) {
                return Parsed::Other;
            }
            if name.eq_ignore_ascii_case(b"connection") && has_token(h.value, b"close") {
                keep_alive = false;
            }
            let (n, v) = (offset(name), offset(h.value));
            *span = (n, end(n, name.len()), v, end(v, h.value.len()));
        }
        (len, method, target, req.headers.len())
    };
    let range = |s: u32, e: u32| (s as usize)..(e as usize);
    if len > buf.len() {
        return Parsed::Other;
    }
    let head = buf.split_to(len).freeze();
    let rejoin = |head: Bytes, buf: &mut BytesMut| {
        let mut whole = BytesMut::with_capacity(head.len() + buf.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(buf);
        *buf = whole;
        Parsed::Other
    };
    let uri = match head.get(range(target.0, target.1)) {
        Some(_) => Uri::from_maybe_shared(head.slice(range(target.0, target.1))),
        None => return rejoin(head, buf),
    };
    let Ok(uri) = uri else {
        return rejoin(head, buf);
    };
    let mut headers = std::mem::take(headers);
    headers.reserve(count);
    for &(ns, ne, vs, ve) in spans.iter().take(count) {
        let Some(Ok(name)) = head.get(range(ns, ne)).map(header_name) else {
            return rejoin(head, buf);
        };
        // A slice of the frozen head, not a copy; checked as `HeaderValue` checks.
        let value = match head.get(range(vs, ve)) {
            Some(_) => HeaderValue::from_maybe_shared(head.slice(range(vs, ve))),
            None => return rejoin(head, buf),
        };
        let Ok(value) = value else {
            return rejoin(head, buf);
        };
        headers.append(name, value);
    }
    let mut req = Request::new(Inbound::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Parsed::Request(req, keep_alive)
}

/// What hyper's server knows of a response body before polling it.
#[derive(Clone, Copy)]
enum BodyLength {
    /// Ended before it started.
    None,
    Known(u64),
    Unknown,
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes; more are not sent.
    Length(u64),
    Chunked,
    /// Until the connection closes.
    Close,
}

/// Writes the response head into `out` as hyper's server does for a request that is not
/// `HEAD` or `CONNECT`; the body's framing, and whether the connection closes after it.
fn encode_head(
    parts: &mut response::Parts,
    length: BodyLength,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Result<(Framing, bool), String> {
    out.clear();
    let mut status = parts.status;
    let mut length = length;
    if status.is_informational() {
        // hyper's server refuses a 1xx as a response the same way.
        status = StatusCode::INTERNAL_SERVER_ERROR;
        parts.headers.clear();
        length = BodyLength::None;
    }
    let http10 = parts.version == Version::HTTP_10;
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if !http10 && status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(r) => out.extend_from_slice(r.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    let mut last = !keep_alive || parts.status.is_informational();
    if !keep_alive {
        let close = HeaderValue::from_static("close");
        match parts.headers.entry(CONNECTION) {
            Entry::Occupied(mut e) => {
                if !e.iter().any(|v| has_token(v.as_bytes(), b"close")) {
                    e.append(close);
                }
            }
            Entry::Vacant(e) => {
                e.insert(close);
            }
        }
    }
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let can_chunk = !http10 && !bodiless;
    let mut framing = Framing::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    // A line whose values are joined with ", " (connection, transfer-encoding, trailer) or
    // of which only the first is written (content-length), still open.
    let mut open: Option<&http::HeaderName> = None;
    let mut chunked_last = true;
    let mut declared = Length::None;
    for (name, value) in &parts.headers {
        let continues = open == Some(name);
        if !continues && let Some(prev) = open.take() {
            if *prev == TRANSFER_ENCODING && !chunked_last {
                out.extend_from_slice(b", chunked");
            }
            out.extend_from_slice(b"\r\n");
        }
        if *name == CONTENT_LENGTH {
            match length {
                BodyLength::None => {}
                BodyLength::Known(n) => {
                    if wrote_len && !continues {
                        return Err("a content-length beside a transfer-encoding".to_owned());
                    }
                    if !continues {
                        line_start(out, b"content-length", value.as_bytes());
                        framing = Framing::Length(n);
                        wrote_len = true;
                        open = Some(name);
                    }
                }
                BodyLength::Unknown => {
                    if wrote_len && !continues {
                        return Err("a content-length beside a transfer-encoding".to_owned());
                    }
                    let before = declared;
                    declared = declared.add(value.as_bytes());
                    match (before, declared) {
                        (_, Length::Invalid) => {
                            return Err(format!("invalid or differing content-length {value:?}"));
                        }
                        (Length::None, Length::Valid(n)) => {
                            line_start(out, b"content-length", value.as_bytes());
                            framing = Framing::Length(n);
                            wrote_len = true;
                            open = Some(name);
                        }
                        _ => {}
                    }
                }
            }
            continue;
        }
        if *name == TRANSFER_ENCODING {
            if wrote_len && !continues {
                return Err("a transfer-encoding beside a content-length".to_owned());
            }
            if !can_chunk {
                continue;
            }
            wrote_len = true;
            chunked_last = last_token_is_chunked(value.as_bytes());
            if continues {
                out.extend_from_slice(b", ");
                out.extend_from_slice(value.as_bytes());
            } else {
                framing = Framing::Chunked;
                line_start(out, b"transfer-encoding", value.as_bytes());
                open = Some(name);
            }
            continue;
        }
        if *name == CONNECTION || *name == TRAILER {
            if *name == TRAILER && !can_chunk {
                continue;
            }
            if *name == CONNECTION && has_token(value.as_bytes(), b"close") {
                last = true;
            }
            if continues {
                out.extend_from_slice(b", ");
                out.extend_from_slice(value.as_bytes());
            } else {
                line_start(out, name.as_str().as_bytes(), value.as_bytes());
                open = Some(name);
            }
            continue;
        }
        if *name == DATE {
            wrote_date = true;
        }
        line_start(out, name.as_str().as_bytes(), value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(prev) = open {
        if *prev == TRANSFER_ENCODING && !chunked_last {
            out.extend_from_slice(b", chunked");
        }
        out.extend_from_slice(b"\r\n");
    }
    if !wrote_len {
        framing = match length {
            BodyLength::Unknown if can_chunk => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            BodyLength::Unknown => Framing::Close,
            BodyLength::None | BodyLength::Known(0) => {
                if !bodiless {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            BodyLength::Known(_) if bodiless => Framing::Length(0),
            BodyLength::Known(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
        };
    }
    if bodiless {
        framing = Framing::Length(0);
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        extend_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((framing, last || framing == Framing::Close))
}

/// Starts a header line, leaving it open for more values.
fn line_start(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
}

thread_local! {
    /// The `date` value of the current second, formatted once a second per worker as
    /// hyper caches its own.
    static CACHED_DATE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
}

fn extend_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let value = CACHED_DATE.with(|date| {
        let (at, value) = date.get();
        if at == secs {
            return value;
        }
        let mut value = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        if let Some(src) = formatted.as_bytes().get(..29) {
            value.copy_from_slice(src);
        }
        date.set((secs, value));
        value
    });
    out.extend_from_slice(&value);
}

/// A response body's error, as [`Tracked`] gives it.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One step of sending a body.
enum Step {
    Frame(Option<Result<hyper::body::Frame<Bytes>, BoxError>>),
    /// The body has nothing yet: send what is written so far.
    Flush,
    /// The client went away.
    Gone,
}

/// Sends the head in `out` and the body after it, framed as `framing`. As hyper's server
/// does, the body is dropped (ending its request's telemetry) as soon as its last frame has
/// been taken, before that frame is written.
async fn send_body<S, B>(
    io: &mut S,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    body: Tracked<B>,
    framing: Framing,
) -> Result<(), Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Tracked<B>: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    let failed = |e: io::Error| Ended::Failed(format!("writing a response: {e}"));
    let mut remaining = match framing {
        Framing::Length(n) => n,
        Framing::Chunked | Framing::Close => 0,
    };
    let mut body = (framing != Framing::Length(0)).then_some(body);
    while let Some(b) = body.as_mut() {
        let step = poll_fn(|cx| match Pin::new(&mut *b).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Step::Frame(frame)),
            Poll::Pending if !out.is_empty() => Poll::Ready(Step::Flush),
            Poll::Pending => match gone(io, buf, cx) {
                Poll::Ready(()) => Poll::Ready(Step::Gone),
                Poll::Pending => Poll::Pending,
            },
        })
        .await;
        let frame = match step {
            Step::Flush => {
                write_parts(io, [out, &[], &[], &[]])
                    .await
                    .map_err(failed)?;
                out.clear();
                // Out now, not with the first data (a TLS stream may hold what it wrote).
                io.flush().await.map_err(failed)?;
                continue;
            }
            Step::Gone => {
                return Err(Ended::Failed(
                    "the client closed the connection during the response".to_owned(),
                ));
            }
            Step::Frame(None) => {
                drop(body.take());
                break;
            }
            Step::Frame(Some(Err(e))) => {
                return Err(Ended::Failed(format!("the response body failed: {e}")));
            }
            Step::Frame(Some(Ok(frame))) => frame,
        };
        let Ok(mut data) = frame.into_data() else {
            // Trailers end the body; HTTP/1 sends them only to a client that asked.
            drop(body.take());
            break;
        };
        let mut end = b.is_end_stream();
        if data.is_empty() && !end {
            continue;
        }
        let mut size = [0u8; 18];
        let (prefix, suffix): (&[u8], &[u8]) = match framing {
            Framing::Length(_) => {
                let take = usize::try_from(remaining).map_or(data.len(), |r| r.min(data.len()));
                data.truncate(take);
                remaining -= take as u64;
                // The declared length is sent: nothing more of the body is.
                end |= remaining == 0;
                (&[], &[])
            }
            Framing::Chunked if data.is_empty() => (&[], b"0\r\n\r\n"),
            Framing::Chunked => {
                let n = chunk_size(data.len(), &mut size);
                let prefix = size.get(..n).unwrap_or_default();
                (prefix, if end { b"\r\n0\r\n\r\n" } else { b"\r\n" })
            }
            Framing::Close => (&[], &[]),
        };
        if end {
            drop(body.take());
        }
        write_parts(io, [out, prefix, &data, suffix])
            .await
            .map_err(failed)?;
        out.clear();
        if end {
            return finish(io, out, framing, remaining, true).await;
        }
    }
    finish(io, out, framing, remaining, false).await
}

/// Ends a body whose last frame (if any) has been written: the head when nothing else was,
/// the last chunk when not yet sent; a body short of its length fails the connection.
async fn finish<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    framing: Framing,
    remaining: u64,
    ended_with_data: bool,
) -> Result<(), Ended> {
    let tail: &[u8] = match framing {
        Framing::Chunked if !ended_with_data => b"0\r\n\r\n",
        _ => &[],
    };
    write_parts(io, [out, tail, &[], &[]])
        .await
        .map_err(|e| Ended::Failed(format!("writing a response: {e}")))?;
    out.clear();
    if remaining > 0 {
        return Err(Ended::Failed(format!(
            "the response body ended {remaining} bytes short of its content-length"
        )));
    }
    Ok(())
}

/// Writes a chunk-size line for `n` (hex digits, CRLF) into `out`; its length.
fn chunk_size(n: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out.iter_mut().take(digits).enumerate() {
        let shift = 4 * (digits - 1 - i);
        *slot = HEX[(n >> shift) & 0xf];
    }
    for (slot, &b) in out.iter_mut().skip(digits).zip(b"\r\n") {
        *slot = b;
    }
    digits + 2
}

/// Writes all of `parts`, in order, in as few writes as the stream takes.
async fn write_parts<S: AsyncWrite + Unpin>(io: &mut S, parts: [&[u8]; 4]) -> io::Result<()> {
    let mut parts = parts;
    loop {
        if parts.iter().all(|p| p.is_empty()) {
            return Ok(());
        }
        let slices = parts.map(IoSlice::new);
        let mut n = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &slices)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        for p in &mut parts {
            let k = n.min(p.len());
            *p = p.get(k..).unwrap_or_default();
            n -= k;
        }
    }
}

#[cfg(test)]
mod tests;
