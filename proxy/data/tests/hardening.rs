#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bad clients against `listener::run` on 127.0.0.1: oversized headers, slowloris, garbage
//! and malformed HTTP/2 frames, and a bounded flood of malformed requests. Each closes (or
//! refuses) only the offending connection or stream; everyone else keeps being served.

mod listener_support;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchboard_proxy_xds::ConfigStore;
use switchboard_proxy_xds::config::cluster::UpstreamProtocol;
use switchboard_proxy_xds::config::listener::HttpLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use listener_support::*;
use support::{backend, get, h1_client, set_cluster};

/// An HTTP listener `name` with `limits`, routing everything to a real backend.
async fn http_proxy(name: &str, limits: HttpLimits) -> (Running, ConfigStore) {
    proxy_to(backend("a").await, name, limits).await
}

/// An HTTP listener `name` with `limits`, routing everything to `upstream` (HTTP/1.1).
async fn proxy_to(upstream: SocketAddr, name: &str, limits: HttpLimits) -> (Running, ConfigStore) {
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "a", UpstreamProtocol::Http1, &[upstream]);
    route_all_to_a(&mut store);
    set_http_listener(&mut store, name, limits, None);
    let running = start(&store, name, Duration::from_secs(5)).await;
    (running, store)
}

/// Default limits but for a request headers timeout of `timeout`.
fn headers_timeout(timeout: Duration) -> HttpLimits {
    HttpLimits {
        request_headers_timeout: Some(timeout),
        ..HttpLimits::default()
    }
}

fn req(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "x")
        .body(Empty::new())
        .unwrap()
}

/// A kept-alive HTTP/1.1 connection.
async fn h1_conn(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn h2_conn(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn h1_status(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> u16 {
    status_of(send.send_request(req("/"))).await
}

async fn h2_status(send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>) -> u16 {
    status_of(send.send_request(req("/"))).await
}

/// The status of the response `sent` brings (within 10 s), its body read to the end.
async fn status_of(
    sent: impl std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
) -> u16 {
    let resp = tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

// --- HTTP/2 frames by hand, so that the server side is what gets tested ---

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24);
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(n: u32, first: u8, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing, with a literal name (no Huffman).
fn hpack_literal(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_int(7, 0, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(7, 0, value.len(), out);
    out.extend_from_slice(value);
}

/// GET / with `:authority: x` and the extra headers.
fn request_block(extra: &[(&str, &[u8])]) -> Vec<u8> {
    // :method GET, :scheme http, :path / from the static table.
    let mut block = vec![0x82, 0x86, 0x84];
    hpack_literal(":authority", b"x", &mut block);
    for (name, value) in extra {
        hpack_literal(name, value, &mut block);
    }
    block
}

struct Frame {
    ty: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads frames (after the server's preface-less start) until `done` says so, the server
/// closes, or `within` passes. Returns the frames and whether the server closed.
async fn read_frames(
    s: &mut TcpStream,
    within: Duration,
    done: impl Fn(&[Frame]) -> bool,
) -> (Vec<Frame>, bool) {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let deadline = Instant::now() + within;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            frames.push(Frame {
                ty: buf[3],
                stream,
                payload: buf[9..9 + len].to_vec(),
            });
            buf.drain(..9 + len);
        }
        if done(&frames) {
            return (frames, false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (frames, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (frames, false),
        }
    }
}

async fn h2_raw(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    s
}

/// With the default `max_headers_count` (Envoy's 100), left to hyper's own cap: 100 request
/// headers are served, 101 are answered 431.
#[tokio::test]
async fn the_default_header_count_admits_100_and_answers_431_above() {
    assert_eq!(HttpLimits::default().max_headers_count, 100);
    let (running, _store) = http_proxy("default-count", HttpLimits::default()).await;
    let addr = running.addr;
    for (count, status) in [(100, "200"), (101, "431")] {
        // `host` and `connection` are two of them; `close` ends the exchange either way.
        let extra: String = (2..count).map(|i| format!("x-h{i}: v\r\n")).collect();
        let request = format!("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n");
        let reply = exchange(addr, request.as_bytes(), false, Duration::from_secs(10))
            .await
            .expect("the connection was not closed");
        assert!(
            reply.starts_with(format!("HTTP/1.1 {status}").as_bytes()),
            "{count} headers: {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
}

#[tokio::test]
async fn oversized_headers_get_431_and_neighbours_are_unaffected() {
    let limits = HttpLimits {
        max_request_headers_bytes: 8 * 1024,
        max_headers_count: 50,
        ..HttpLimits::default()
    };
    let (running, _store) = http_proxy("big-headers", limits).await;
    let addr = running.addr;
    let mut neighbour = h1_conn(addr).await;
    let mut h2_neighbour = h2_conn(addr).await;
    assert_eq!(h1_status(&mut neighbour).await, 200);
    assert_eq!(h2_status(&mut h2_neighbour).await, 200);

    // HTTP/1: one 12 KiB header, and too many small ones, are each answered 431.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(12 * 1024)
    );
    let many: String = (0..80).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n");
    for request in [big, many] {
        let reply = exchange(addr, request.as_bytes(), false, Duration::from_secs(10))
            .await
            .expect("the connection was not closed");
        assert!(
            reply.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    // Just under the limit is fine.
    let client = h1_client();
    let six_k = "b".repeat(6 * 1024);
    let got = get(&client, addr, "x", "/", &[("x-fits", six_k.as_str())]).await;
    assert_eq!(got.status, StatusCode::OK);

    // HTTP/2: a 12 KiB header block gets that stream refused (h2 answers 431 and resets
    // it); the connection stays up and its next stream is served.
    let mut s = h2_raw(addr).await;
    let big_value = vec![b'a'; 12 * 1024];
    let oversized = request_block(&[("x-big", &big_value)]);
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &oversized))
        .await
        .unwrap();
    let on_stream_1 = |f: &Frame| (f.ty == HEADERS || f.ty == RST_STREAM) && f.stream == 1;
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(10), |f| {
        f.iter().any(on_stream_1)
    })
    .await;
    assert!(!closed, "an oversized header block closed the connection");
    let refused = frames
        .iter()
        .find(|f| on_stream_1(f))
        .expect("stream 1 unanswered");
    // Not a `:status: 200` (HPACK static index 8, 0x88).
    assert!(refused.ty == RST_STREAM || refused.payload.first() != Some(&0x88));
    assert!(!frames.iter().any(|f| f.ty == GOAWAY));
    s.write_all(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &request_block(&[]),
    ))
    .await
    .unwrap();
    let (frames, _) = read_frames(&mut s, Duration::from_secs(10), |f| {
        f.iter().any(|f| f.ty == HEADERS && f.stream == 3)
    })
    .await;
    let response = frames
        .iter()
        .find(|f| f.ty == HEADERS && f.stream == 3)
        .expect("no response on the next stream");
    // HPACK static index 8 is `:status: 200`.
    assert_eq!(response.payload.first(), Some(&0x88));
    assert!(frames.iter().any(|f| f.ty == DATA && f.stream == 3));

    // Through a real h2 client: 431 (or the stream reset), and the same connection goes on.
    let mut h2_big = h2_conn(addr).await;
    let mut big_req = req("/");
    big_req
        .headers_mut()
        .insert("x-big", "a".repeat(12 * 1024).parse().unwrap());
    match tokio::time::timeout(Duration::from_secs(10), h2_big.send_request(big_req))
        .await
        .unwrap()
    {
        Ok(resp) => assert_eq!(resp.status().as_u16(), 431),
        Err(e) => assert!(!e.is_closed(), "the connection closed: {e}"),
    }
    assert_eq!(h2_status(&mut h2_big).await, 200);

    // Neighbours never noticed.
    assert_eq!(h1_status(&mut neighbour).await, 200);
    assert_eq!(h2_status(&mut h2_neighbour).await, 200);
}

#[tokio::test]
async fn slowloris_connections_are_cut_while_normal_requests_are_served() {
    let limits = headers_timeout(Duration::from_secs(1));
    let (running, _store) = http_proxy("slowloris", limits).await;
    let addr = running.addr;

    // A keep-alive connection idle for longer than the header timeout is not cut: the timer
    // starts with the first byte of the next request's headers, as in Envoy.
    let mut patient = h1_conn(addr).await;
    assert_eq!(h1_status(&mut patient).await, 200);
    let patient_idle_since = Instant::now();

    // 50 clients sending one header byte every 200 ms (5 of them the HTTP/2 preface, which
    // is cut while the protocol is still being told apart), each for at most 15 s.
    let mut slow = JoinSet::new();
    for i in 0..50 {
        let payload: Vec<u8> = if i % 10 == 0 {
            PREFACE.to_vec()
        } else {
            let mut p = b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ".to_vec();
            p.extend(std::iter::repeat_n(b'a', 100));
            p
        };
        slow.spawn(async move {
            let started = Instant::now();
            let s = TcpStream::connect(addr).await.unwrap();
            let (mut r, mut w) = s.into_split();
            let closed = async {
                let mut buf = [0u8; 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            let trickle = async {
                for byte in payload {
                    if w.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // Out of bytes without being cut: wait for the read side (bounded below).
                std::future::pending::<()>().await;
            };
            let cut = tokio::time::timeout(Duration::from_secs(15), async {
                tokio::select! {
                    () = closed => {}
                    () = trickle => {}
                }
            })
            .await
            .is_ok();
            (cut, started.elapsed())
        });
    }

    // Meanwhile normal requests, on fresh and pooled connections, are all served.
    let client = h1_client();
    let mut served = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !slow.is_empty() && Instant::now() < deadline {
        let got = get(&client, addr, "x", "/", &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        served += 1;
        tokio::select! {
            Some(done) = slow.join_next() => {
                let (cut, after) = done.unwrap();
                assert!(cut, "a slowloris connection was still open after {after:?}");
                // Cut near the 1 s timeout (generous bound: no timing claim beyond "soon").
                assert!(after < Duration::from_secs(10), "cut only after {after:?}");
                // ...and by the header timeout, not before it.
                assert!(after >= Duration::from_millis(1000), "cut early, after {after:?}");
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    while let Some(done) = slow.join_next().await {
        let (cut, after) = done.unwrap();
        assert!(cut, "a slowloris connection was still open after {after:?}");
        assert!(after < Duration::from_secs(10), "cut only after {after:?}");
        // ...and by the header timeout, not before it.
        assert!(
            after >= Duration::from_millis(1000),
            "cut early, after {after:?}"
        );
    }
    assert!(served > 0);
    // The patient keep-alive connection, idle for well over 1 s, still works.
    tokio::time::sleep_until((patient_idle_since + Duration::from_millis(1500)).into()).await;
    assert_eq!(h1_status(&mut patient).await, 200);
}

#[tokio::test]
async fn garbage_http2_frames_close_only_that_connection() {
    let (running, _store) = http_proxy("garbage", HttpLimits::default()).await;
    let addr = running.addr;
    let mut neighbour = h2_conn(addr).await;
    let mut h1_neighbour = h1_conn(addr).await;
    assert_eq!(h2_status(&mut neighbour).await, 200);

    // Garbage right after the preface: a connection error (GOAWAY), then the close.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend([0xffu8; 64]);
    s.write_all(&bytes).await.unwrap();
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(10), |_| false).await;
    assert!(closed, "the connection sending garbage was not closed");
    assert!(frames.iter().any(|f| f.ty == GOAWAY), "no GOAWAY");

    // A HEADERS frame whose HPACK block is invalid (index 0): a connection error, close.
    let mut s = h2_raw(addr).await;
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x80]))
        .await
        .unwrap();
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(10), |_| false).await;
    assert!(
        closed,
        "the connection with a bad HPACK block was not closed"
    );
    let goaway = frames
        .iter()
        .find(|f| f.ty == GOAWAY)
        .expect("no GOAWAY for a bad HPACK block");
    // GOAWAY: last stream id (4 bytes), then the error code: h2 reports HPACK failures as
    // PROTOCOL_ERROR (0x1); COMPRESSION_ERROR (0x9) would be as right.
    let code = goaway.payload.get(4..8).expect("a GOAWAY error code");
    assert!(
        code == [0, 0, 0, 1] || code == [0, 0, 0, 9],
        "GOAWAY error code {code:?}"
    );

    // A DATA frame on stream 0 (a protocol error) closes that connection too.
    let mut s = h2_raw(addr).await;
    s.write_all(&frame(DATA, 0, 0, b"x")).await.unwrap();
    let (_, closed) = read_frames(&mut s, Duration::from_secs(10), |_| false).await;
    assert!(closed);

    // TLS bytes on the cleartext port: 400 and close.
    let reply = exchange(
        addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        false,
        Duration::from_secs(10),
    )
    .await
    .expect("not closed");
    assert!(reply.is_empty() || reply.starts_with(b"HTTP/1.1 400"));

    // The neighbours, on their existing connections, and a new connection, are served.
    assert_eq!(h2_status(&mut neighbour).await, 200);
    assert_eq!(h1_status(&mut h1_neighbour).await, 200);
    assert_eq!(h2_status(&mut h2_conn(addr).await).await, 200);
}

/// Malformed inputs of many kinds, HTTP/1 and HTTP/2.
fn malformed(i: usize) -> Vec<u8> {
    let mut bad_hpack = PREFACE.to_vec();
    bad_hpack.extend(frame(SETTINGS, 0, 0, &[]));
    bad_hpack.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &[0xbf, 0xff, 0xff, 0xff, 0x7f],
    ));
    let mut headers_then_garbage = PREFACE.to_vec();
    headers_then_garbage.extend(frame(SETTINGS, 0, 0, &[]));
    headers_then_garbage.extend(frame(HEADERS, END_HEADERS, 1, &request_block(&[])));
    headers_then_garbage.extend([0x00, 0x00, 0x01, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x00]);
    let many: String = (0..300).map(|i| format!("h{i}: v\r\n")).collect();
    // A cheap deterministic generator for random bytes.
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let random: Vec<u8> = (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let cases: [Vec<u8>; 14] = [
        b"\x00\x01\x02garbage\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost x\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\nhost: x\r\n\r\n".to_vec(),
        b"GET /\x01\x7f HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_vec(),
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nshort".to_vec(),
        b"GET / HTTP/1.1\r\nhost: x\r\nbad\x00header: v\r\n\r\n".to_vec(),
        format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n").into_bytes(),
        bad_hpack,
        headers_then_garbage,
        [PREFACE, &random[..]].concat(),
        random,
    ];
    cases[i % cases.len()].clone()
}

#[tokio::test]
async fn two_thousand_malformed_requests_do_not_stop_the_proxy() {
    let limits = headers_timeout(Duration::from_secs(2));
    let (running, _store) = http_proxy("malformed", limits).await;
    let addr = running.addr;
    const TOTAL: usize = 2000;
    const WORKERS: usize = 25;
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for w in 0..WORKERS {
        workers.spawn(async move {
            let mut not_closed = 0;
            for i in (w..TOTAL).step_by(WORKERS) {
                // Half-closing after the bytes lets inputs that wait for more end quickly;
                // every exchange is bounded anyway.
                let closed = exchange(addr, &malformed(i), true, Duration::from_secs(10)).await;
                if closed.is_none() {
                    not_closed += 1;
                }
            }
            not_closed
        });
    }
    let mut not_closed = 0;
    let all = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(n) = workers.join_next().await {
            not_closed += n.unwrap();
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "the malformed requests did not finish in time ({:?})",
        started.elapsed()
    );
    assert_eq!(not_closed, 0, "connections left open by the proxy");

    // Still serving, on both protocols.
    let got = get(&h1_client(), addr, "x", "/", &[]).await;
    assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "a"));
    assert_eq!(h2_status(&mut h2_conn(addr).await).await, 200);
}

/// An HTTP/1.1 backend written by hand: `/hang` never answers; `/stall` sends its headers
/// and one chunk, then nothing; `/drip` sends a one-byte chunk every 100 ms, eight in all,
/// then ends (each with `connection: close`, and holding the connection open for 30 s).
async fn slow_backend() -> SocketAddr {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                const HEAD: &[u8] =
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                match path.as_str() {
                    "/stall" => {
                        let _ = s.write_all(HEAD).await;
                        let _ = s.write_all(b"5\r\nhello\r\n").await;
                    }
                    "/drip" => {
                        let _ = s.write_all(HEAD).await;
                        for _ in 0..8 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let _ = s.write_all(b"1\r\nx\r\n").await;
                        }
                        let _ = s.write_all(b"0\r\n\r\n").await;
                    }
                    _ => {}
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

/// `f`, or a failed test after 10 s.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("no answer within 10 s")
}

#[tokio::test]
async fn stream_idle_timeout_answers_408_resets_stalled_streams_and_spares_active_ones() {
    let limits = HttpLimits {
        stream_idle_timeout: Some(Duration::from_millis(300)),
        ..HttpLimits::default()
    };
    let (running, _store) = proxy_to(slow_backend().await, "stream-idle", limits).await;

    // No answer at all: 408 (the route's own timeout is 15 s).
    let mut h2 = h2_conn(running.addr).await;
    let started = Instant::now();
    let resp = within(h2.send_request(req("/hang"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Headers and a chunk, then silence: the stream is reset after what arrived.
    let resp = within(h2.send_request(req("/stall"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "hello");
    let rest = within(body.collect()).await;
    assert!(rest.is_err(), "the stalled stream was reset: {rest:?}");

    // A slow but steady stream on the same connection runs to its end.
    let resp = within(h2.send_request(req("/drip"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = within(resp.into_body().collect()).await.unwrap();
    assert_eq!(body.to_bytes(), "xxxxxxxx");

    // Over HTTP/1.1 a stalled response ends its connection.
    let mut h1 = h1_conn(running.addr).await;
    let resp = within(h1.send_request(req("/stall"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let rest = within(resp.into_body().collect()).await;
    assert!(rest.is_err(), "the stalled response was cut: {rest:?}");
}

/// A kept-alive connection over HTTP/1.1 or HTTP/2 (prior knowledge).
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    /// The connection, and the task driving it, which ends when the proxy closes it.
    async fn open(addr: SocketAddr, h2: bool) -> (Conn, tokio::task::JoinHandle<()>) {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            (
                Conn::H2(send),
                tokio::spawn(async move { drop(conn.await) }),
            )
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            (
                Conn::H1(send),
                tokio::spawn(async move { drop(conn.await) }),
            )
        }
    }

    /// The status of a `/drip` request, its body read to the end.
    async fn drip(&mut self) -> u16 {
        match self {
            Conn::H1(send) => status_of(send.send_request(req("/drip"))).await,
            Conn::H2(send) => status_of(send.send_request(req("/drip"))).await,
        }
    }
}

#[tokio::test]
async fn idle_timeout_closes_connections_with_nothing_in_flight_and_spares_busy_ones() {
    // `/drip` takes about 800 ms, longer than the idle timeout.
    let limits = HttpLimits {
        idle_timeout: Some(Duration::from_millis(500)),
        ..HttpLimits::default()
    };
    let (running, _store) = proxy_to(slow_backend().await, "conn-idle", limits).await;

    for h2 in [false, true] {
        let (mut conn, mut closed) = Conn::open(running.addr, h2).await;
        // A request in flight for longer than the idle timeout keeps its connection, and so
        // do requests that follow one another with shorter gaps in between.
        let mut last_sent = Instant::now();
        for _ in 0..3 {
            last_sent = Instant::now();
            assert_eq!(within(conn.drip()).await, 200, "h2: {h2}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!closed.is_finished(), "h2: {h2}: closed while in use");
        }
        // Then nothing: closed (HTTP/2 with a GOAWAY) once idle for the timeout, not before.
        // The connection fell idle after the last request was sent, so no sooner than 500 ms
        // after that.
        within(&mut closed).await.unwrap();
        let after = last_sent.elapsed();
        assert!(
            after >= Duration::from_millis(1300),
            "h2: {h2}: closed after {after:?}"
        );
        assert!(
            after < Duration::from_secs(6),
            "h2: {h2}: closed after {after:?}"
        );
    }
}
