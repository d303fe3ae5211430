#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The upstream HTTP/1 path that requests without a body take (`cluster::h1`), against
//! backends that write their answers byte by byte on 127.0.0.1: response framing (chunked
//! with trailers, to the connection's end, truncated), connections the upstream closes while
//! idle or without answering, and connection slots shared with requests that carry a body
//! (hyper's client).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use switchboard_proxy_data::ClusterManager;
use switchboard_proxy_xds::ConfigStore;
use switchboard_proxy_xds::config::cluster::Cluster;
use switchboard_proxy_xds::config::route::{Action, PathMatch};
use switchboard_runtime::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::*;

/// What a [`wire_backend`] does with one request: write these bytes (then close the
/// connection if `close`), or close without answering (`None`).
type Answer = Option<(&'static [u8], bool)>;

/// A backend that reads request heads (and `content-length` bodies) and answers each as
/// `script(connection, request)` says, both counted from 0. Returns the address and the
/// number of connections accepted.
async fn wire_backend(
    script: impl Fn(usize, usize) -> Answer + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let conn = count.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut request = 0;
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let body = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + body {
                            break;
                        }
                        buf.drain(..end + 4 + body);
                        let Some((bytes, close)) = script(conn, request) else {
                            return;
                        };
                        request += 1;
                        if socket.write_all(bytes).await.is_err() || close {
                            return;
                        }
                    }
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A proxy forwarding everything to cluster `wire` (HTTP/1.1, endpoint `backend`, edited by
/// `edit`), with its cluster manager for `describe()`.
async fn proxy_to(
    backend: SocketAddr,
    edit: impl FnOnce(&mut Cluster),
) -> (SocketAddr, ConfigStore, Arc<ClusterManager>) {
    let mut store = ConfigStore::new();
    set_cluster_with(&mut store, "wire", &[backend], edit);
    let all = route(
        "all",
        PathMatch::Prefix("/".into()),
        Action::Forward(to("wire")),
    );
    set_routes(&mut store, vec![vhost("all", &["*"], vec![all])]);
    set_listener(&mut store);
    let clusters = Arc::new(ClusterManager::new());
    let addr = proxy_with(&store, clusters.clone()).await;
    (addr, store, clusters)
}

fn open_connections(store: &ConfigStore, clusters: &ClusterManager) -> u64 {
    clusters
        .describe(&store.snapshot())
        .into_iter()
        .find(|c| c.name == "wire")
        .expect("cluster in describe()")
        .circuit_breakers
        .connections
}

const KEEP_ALIVE_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn chunked_responses_keep_their_trailers_and_connection() {
    let (backend, accepted) = wire_backend(|_, _| {
        Some((
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n",
            false,
        ))
    })
    .await;
    let (proxy, _store, _clusters) = proxy_to(backend, |_| {}).await;
    let got = get(&h2_client(), proxy, "svc", "/", &[]).await;
    assert_eq!(
        (got.status.as_u16(), got.body.as_str()),
        (200, "hello world")
    );
    assert_eq!(
        got.trailers.expect("trailers were dropped")["grpc-status"],
        "0"
    );
    let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
    assert_eq!(
        (got.status.as_u16(), got.body.as_str()),
        (200, "hello world")
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the connection was reused"
    );
}

#[tokio::test]
async fn a_body_without_a_length_runs_to_the_connection_end() {
    let (backend, accepted) =
        wire_backend(|_, _| Some((b"HTTP/1.1 200 OK\r\n\r\nall of it", true))).await;
    let (proxy, _store, _clusters) = proxy_to(backend, |_| {}).await;
    for _ in 0..2 {
        let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "all of it"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a used-up connection was reused"
    );
}

#[tokio::test]
async fn a_truncated_body_fails_downstream() {
    let (backend, _) =
        wire_backend(|_, _| Some((b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf", true)))
            .await;
    let (proxy, _store, _clusters) = proxy_to(backend, |_| {}).await;
    let req = http::Request::get(format!("http://{proxy}/"))
        .header("host", "svc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // The proxy may fail the response before its head is out, or its body after.
    let complete = tokio::time::timeout(Duration::from_secs(10), async {
        let resp = h1_client().request(req).await.ok()?;
        resp.into_body().collect().await.ok()
    })
    .await
    .expect("the response neither ended nor failed");
    assert!(complete.is_none(), "a truncated body ended cleanly");
}

#[tokio::test]
async fn malformed_response_heads_are_502() {
    let (backend, _) = wire_backend(|_, _| {
        Some((
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nok",
            true,
        ))
    })
    .await;
    let (proxy, _store, _clusters) = proxy_to(backend, |_| {}).await;
    let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
    assert_eq!(got.status.as_u16(), 502, "{}", got.body);
    assert!(got.body.contains("content-length"), "{}", got.body);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    // Every connection answers once, then closes (without saying so).
    let (backend, accepted) = wire_backend(|_, _| Some((KEEP_ALIVE_OK, true))).await;
    let (proxy, store, clusters) = proxy_to(backend, |_| {}).await;
    for i in 1..=3 {
        let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "ok"));
        assert_eq!(accepted.load(Ordering::SeqCst), i);
        // The reaper closes the dead connection and frees its slot.
        eventually("the closed connection's slot freed", || async {
            (open_connections(&store, &clusters) == 0).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn an_idempotent_request_is_sent_again_when_a_reused_connection_closes_unanswered() {
    // The first connection answers its first request and closes on the second without a
    // word; the next connection answers.
    let (backend, accepted) = wire_backend(|conn, request| match (conn, request) {
        (0, 0) => Some((KEEP_ALIVE_OK, false)),
        (0, _) => None,
        _ => Some((KEEP_ALIVE_OK, false)),
    })
    .await;
    let (proxy, _store, _clusters) = proxy_to(backend, |_| {}).await;
    let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
    assert_eq!(got.status.as_u16(), 200);
    let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
    assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "ok"));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // A POST is not sent twice: the same failure is the client's to see.
    let (backend, _) = wire_backend(|conn, request| match (conn, request) {
        (0, 0) => Some((KEEP_ALIVE_OK, false)),
        _ => None,
    })
    .await;
    let (proxy, _store, _clusters) = proxy_to(backend, |_| {}).await;
    let client = h1_client();
    let got = send(&client, proxy, "GET", "svc", "/", &[], "").await;
    assert_eq!(got.status.as_u16(), 200);
    let got = send(&client, proxy, "POST", "svc", "/", &[], "").await;
    assert_eq!(got.status.as_u16(), 502, "{}", got.body);
}

#[tokio::test]
async fn requests_with_and_without_a_body_share_one_connection_slot() {
    let (backend, _) = wire_backend(|_, _| Some((KEEP_ALIVE_OK, false))).await;
    let (proxy, store, clusters) = proxy_to(backend, |c| {
        c.circuit_breakers.max_connections = 1;
    })
    .await;
    let client = h1_client();
    // Each path finds the slot held by the other's idle connection, which gives it up.
    for (method, body) in [("GET", ""), ("POST", "data"), ("GET", ""), ("POST", "more")] {
        let got = send(&client, proxy, method, "svc", "/", &[], body).await;
        assert_eq!(
            (got.status.as_u16(), got.body.as_str()),
            (200, "ok"),
            "{method}"
        );
        assert!(open_connections(&store, &clusters) <= 1);
    }
}
