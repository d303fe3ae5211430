#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The listener's own HTTP/1.1 path for requests without a body
//! (`listener::http_conn::h1`), from clients that write their requests byte by byte on
//! 127.0.0.1: pipelining, the hand-over to hyper's server when a request has a body,
//! `connection: close`, chunked responses, and a client that leaves mid-request.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use switchboard_proxy_xds::ConfigStore;
use switchboard_proxy_xds::config::cluster::UpstreamProtocol;
use switchboard_proxy_xds::config::route::{Action, PathMatch};
use switchboard_runtime::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// A proxy forwarding everything to cluster `b` (HTTP/1.1, one endpoint at `backend`),
/// with no route timeout: only the client can end a request early.
async fn proxy_to(backend: SocketAddr) -> (SocketAddr, ConfigStore) {
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "b", UpstreamProtocol::Http1, &[backend]);
    let mut forward = to("b");
    forward.timeout = None;
    let all = route(
        "all",
        PathMatch::Prefix("/".into()),
        Action::Forward(forward),
    );
    set_routes(&mut store, vec![vhost("all", &["*"], vec![all])]);
    set_listener(&mut store);
    let addr = proxy(&store).await;
    (addr, store)
}

/// One response as read off the wire.
#[derive(Debug)]
struct Wire {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (content-length, chunked, or none for `head_only`) from `s`, keeping
/// what follows it in `buf`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Wire {
    let (status, headers, len) = loop {
        let mut lines = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut lines);
        if let httparse::Status::Complete(len) = resp.parse(buf).unwrap() {
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            break (resp.code.unwrap(), headers, len);
        }
        fill(s, buf).await;
    };
    buf.drain(..len);
    let mut wire = Wire {
        status,
        headers,
        body: Vec::new(),
    };
    if head_only || status == 204 || status == 304 {
        return wire;
    }
    if wire.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf).await;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                fill(s, buf).await;
            }
            wire.body
                .extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            assert_eq!(&buf[line_end + 2 + size..line_end + 4 + size], b"\r\n");
            buf.drain(..line_end + 4 + size);
            if size == 0 {
                return wire;
            }
        }
    }
    let n: usize = wire
        .header("content-length")
        .expect("a length or chunked")
        .parse()
        .unwrap();
    while buf.len() < n {
        fill(s, buf).await;
    }
    wire.body = buf.drain(..n).collect();
    wire
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    assert!(n > 0, "the proxy closed the connection mid-response");
    buf.extend_from_slice(&chunk[..n]);
}

/// Whether the proxy closes `s` (reads end) within 5 s, with nothing more sent.
async fn closes(s: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (proxy, _store) = proxy_to(backend("b").await).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nhost: svc\r\n\r\nGET /two HTTP/1.1\r\nhost: svc\r\n\r\nGET /three HTTP/1.1\r\nHost: svc\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    for path in ["/one", "/two", "/three"] {
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-path"), Some(path));
        assert_eq!(r.body, b"b");
        assert!(r.header("date").is_some(), "no date header: {r:?}");
    }
    assert!(buf.is_empty());
}

#[tokio::test]
async fn requests_with_a_body_are_handed_to_hyper_on_the_same_connection() {
    let (proxy, _store) = proxy_to(backend("b").await).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::new();
    // Served here, then one with a body (hyper from then on), then more of both kinds.
    let requests: [(&[u8], &str, bool); 5] = [
        (b"GET /a HTTP/1.1\r\nhost: svc\r\n\r\n", "/a", false),
        (
            b"POST /b HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\n\r\nhello",
            "/b",
            false,
        ),
        (b"GET /c HTTP/1.1\r\nhost: svc\r\n\r\n", "/c", false),
        (b"HEAD /d HTTP/1.1\r\nhost: svc\r\n\r\n", "/d", true),
        (
            b"PUT /e HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "/e",
            false,
        ),
    ];
    for (bytes, path, head_only) in requests {
        s.write_all(bytes).await.unwrap();
        let r = read_response(&mut s, &mut buf, head_only).await;
        assert_eq!((r.status, r.header("x-path")), (200, Some(path)));
    }
    // A HEAD first: hyper from the start, and the connection still carries a GET.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"HEAD /f HTTP/1.1\r\nhost: svc\r\n\r\nGET /g HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, true).await;
    assert_eq!((r.status, r.header("content-length")), (200, Some("1")));
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status, r.header("x-path")), (200, Some("/g")));
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_hypers_answers_after_good_ones() {
    let (proxy, _store) = proxy_to(backend("b").await).await;
    let mut buf = Vec::new();
    let big = format!(
        "GET / HTTP/1.1\r\nhost: svc\r\nx-big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    for (bad, status) in [
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n".to_vec(), 400),
        (big.into_bytes(), 431),
    ] {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nhost: svc\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.status, 200);
        // The bad request may be cut short by the proxy answering it.
        let _ = s.write_all(&bad).await;
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.status, status);
        buf.clear();
    }
}

#[tokio::test]
async fn connection_close_is_answered_with_close_and_the_connection_ends() {
    let (proxy, _store) = proxy_to(backend("b").await).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /last HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status, r.header("x-path")), (200, Some("/last")));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closes(&mut s).await, "the connection stayed open");
}

#[tokio::test]
async fn a_body_of_unknown_length_is_sent_chunked_and_a_204_without_framing() {
    let upstream = serve_backend(|req: http::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/empty" {
            let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            return resp;
        }
        // `map_frame` hides the length: hyper's backend sends it chunked.
        let body = Full::new(Bytes::from("hello world")).map_frame(|f| f);
        Response::new(body.boxed_unsync())
    })
    .await;
    let (proxy, _store) = proxy_to(upstream).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(
        b"GET /stream HTTP/1.1\r\nhost: svc\r\n\r\nGET /empty HTTP/1.1\r\nhost: svc\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"hello world");
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 204);
    assert!(r.header("content-length").is_none() && r.header("transfer-encoding").is_none());
    // Nothing stray after the 204: the next response starts cleanly.
    s.write_all(b"GET /stream HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello world"[..]));
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_cancels_it_upstream() {
    let finished = Arc::new(AtomicBool::new(false));
    let cancelled = Arc::new(AtomicBool::new(false));
    let (f, c) = (finished.clone(), cancelled.clone());
    let upstream = serve_backend(move |_req: http::Request<hyper::body::Incoming>| {
        let (finished, cancelled) = (f.clone(), c.clone());
        async move {
            // Set when this future is dropped before it finishes.
            struct Guard(Arc<AtomicBool>, Arc<AtomicBool>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    if !self.0.load(Ordering::SeqCst) {
                        self.1.store(true, Ordering::SeqCst);
                    }
                }
            }
            let _guard = Guard(finished.clone(), cancelled);
            // Longer than `eventually`'s patience: only a cancellation sets the flag in time.
            tokio::time::sleep(Duration::from_secs(30)).await;
            finished.store(true, Ordering::SeqCst);
            Response::new(Full::new(Bytes::from("late")).boxed_unsync())
        }
    })
    .await;
    let (proxy, _store) = proxy_to(upstream).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /wait HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .unwrap();
    // Let the request reach the upstream, then go away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    eventually("the upstream request to be cancelled", || async {
        cancelled.load(Ordering::SeqCst).then_some(())
    })
    .await;
    assert!(!finished.load(Ordering::SeqCst));
}

/// Connections waiting for a request give their read buffer and their request's box to
/// the worker, and take one back when bytes come. Here connections take turns with heads
/// split across writes, idle gaps, and a head too long for one buffer; each answer must
/// carry its own request's path and header value (slices of whichever buffer read them).
#[tokio::test]
async fn connections_taking_turns_share_the_workers_buffers_without_mixing_requests() {
    let (proxy, _store) = proxy_to(backend("b").await).await;
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push((TcpStream::connect(proxy).await.unwrap(), Vec::new()));
    }
    for round in 0..4 {
        let heads: Vec<String> = (0..conns.len())
            .map(|c| {
                // Every third connection sends a head longer than a buffer in round 2.
                let pad = if round == 2 && c % 3 == 0 {
                    6000
                } else {
                    c * 40
                };
                format!(
                    "GET /r{round}/c{c} HTTP/1.1\r\nhost: svc\r\nx-added: c{c}-r{round}-{}\r\n\r\n",
                    "p".repeat(pad)
                )
            })
            .collect();
        // First halves on every connection, then the rest, so that each head arrives in
        // two reads while the other connections' reads come between.
        for ((s, _), head) in conns.iter_mut().zip(&heads) {
            s.write_all(&head.as_bytes()[..head.len() / 2])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for ((s, _), head) in conns.iter_mut().zip(&heads) {
            s.write_all(&head.as_bytes()[head.len() / 2..])
                .await
                .unwrap();
        }
        for (c, ((s, buf), head)) in conns.iter_mut().zip(&heads).enumerate() {
            let r = read_response(s, buf, false).await;
            let added = head
                .lines()
                .find_map(|l| l.strip_prefix("x-added: "))
                .unwrap();
            let path = format!("/r{round}/c{c}");
            assert_eq!(r.status, 200);
            assert_eq!(r.header("x-path"), Some(path.as_str()));
            assert_eq!(r.header("x-seen-added"), Some(added));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
