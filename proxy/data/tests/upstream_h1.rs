#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The upstream HTTP/1 path that requests without a body take (`cluster::h1`), against
//! backends that write their answers byte by byte on 127.0.0.1, in plaintext and over TLS:
//! response framing (chunked with trailers, to the connection's end, truncated),
//! connections the upstream closes while idle or without answering, and connection slots
//! shared with requests that carry a body (hyper's client). A cluster whose TLS offers `h2`
//! stays on hyper's client, which speaks HTTP/2 when the server picks it.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchboard_proxy_data::ClusterManager;
use switchboard_proxy_xds::ConfigStore;
use switchboard_proxy_xds::config::cluster::Cluster;
use switchboard_proxy_xds::config::listener::DataSource;
use switchboard_proxy_xds::config::route::{Action, PathMatch};
use switchboard_proxy_xds::config::tls::{ServerValidation, TrustedCa, UpstreamTls};
use switchboard_runtime::eventually;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use support::*;

/// What a [`wire_backend`] does with one request: write these bytes (then close the
/// connection if `close`), or close without answering (`None`).
type Answer = Option<(&'static [u8], bool)>;

/// How a backend talks: plaintext, or TLS with a certificate for `localhost` from a CA of
/// its own, which [`Wire::upstream`] gives the cluster to trust.
enum Wire {
    Plain,
    Tls {
        ca_pem: String,
        acceptor: TlsAcceptor,
    },
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Wire::Plain => "plaintext",
            Wire::Tls { .. } => "TLS",
        })
    }
}

impl Wire {
    fn both() -> [Wire; 2] {
        [Wire::Plain, Wire::tls(&[])]
    }

    /// TLS whose server offers `alpn`.
    fn tls(alpn: &[&str]) -> Wire {
        let ca = ca();
        // Valid for DNS `localhost`, the name the cluster asks for.
        let (chain, key) = ca.leaf("spiffe://t.sb/mesh/m/service/wire", 1);
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from_pem_slice(chain.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Wire::Tls {
            ca_pem: ca.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }

    /// The cluster's TLS towards a backend on this wire, offering `alpn`.
    fn upstream(&self, alpn: &[&str]) -> Option<UpstreamTls> {
        let Wire::Tls { ca_pem, .. } = self else {
            return None;
        };
        Some(UpstreamTls {
            client_certificate: None,
            validation: ServerValidation {
                trusted_ca: TrustedCa::Source(DataSource::Inline(ca_pem.clone().into_bytes())),
                san_matchers: vec![],
            },
            sni: Some("localhost".to_owned()),
            alpn_protocols: alpn.iter().map(|p| (*p).to_owned()).collect(),
        })
    }

    /// Binds 127.0.0.1:0 and hands each connection accepted (after the TLS handshake, on
    /// TLS) to `serve` with its number, from 0. Returns the address and the number of
    /// connections accepted.
    async fn listen<F, Fut>(&self, serve: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(Box<dyn Io>, usize) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let acceptor = match self {
            Wire::Plain => None,
            Wire::Tls { acceptor, .. } => Some(acceptor.clone()),
        };
        let serve = Arc::new(serve);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let conn = count.fetch_add(1, Ordering::SeqCst);
                let (serve, acceptor) = (serve.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let io: Box<dyn Io> = match acceptor {
                        None => Box::new(socket),
                        Some(acceptor) => match acceptor.accept(socket).await {
                            Ok(tls) => Box::new(tls),
                            Err(_) => return,
                        },
                    };
                    serve(io, conn).await;
                });
            }
        });
        (addr, accepted)
    }
}

/// A backend's connection, plaintext or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A backend on `wire` that reads request heads (and `content-length` bodies) and answers
/// each as `script(connection, request)` says, both counted from 0. Returns the address and
/// the number of connections accepted.
async fn wire_backend(
    wire: &Wire,
    script: impl Fn(usize, usize) -> Answer + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let script = Arc::new(script);
    wire.listen(move |mut socket, conn| {
        let script = script.clone();
        async move {
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
                    if socket.write_all(bytes).await.is_err() {
                        return;
                    }
                    if close {
                        // On TLS, a `close_notify` first.
                        let _ = socket.shutdown().await;
                        return;
                    }
                }
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    })
    .await
}

/// A proxy forwarding everything to cluster `wire` (HTTP/1.1, endpoint `backend` on `wire`,
/// edited by `edit`), with its cluster manager for `describe()`.
async fn proxy_to(
    backend: SocketAddr,
    wire: &Wire,
    edit: impl FnOnce(&mut Cluster),
) -> (SocketAddr, ConfigStore, Arc<ClusterManager>) {
    let mut store = ConfigStore::new();
    set_cluster_with(&mut store, "wire", &[backend], |c| {
        c.tls = wire.upstream(&[]);
        edit(c);
    });
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
    for wire in Wire::both() {
        let (backend, accepted) = wire_backend(&wire, |_, _| {
            Some((
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                  5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n",
                false,
            ))
        })
        .await;
        let (proxy, _store, _clusters) = proxy_to(backend, &wire, |_| {}).await;
        let got = get(&h2_client(), proxy, "svc", "/", &[]).await;
        assert_eq!(
            (got.status.as_u16(), got.body.as_str()),
            (200, "hello world"),
            "{wire:?}"
        );
        assert_eq!(
            got.trailers.expect("trailers were dropped")["grpc-status"],
            "0"
        );
        let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
        assert_eq!(
            (got.status.as_u16(), got.body.as_str()),
            (200, "hello world"),
            "{wire:?}"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "{wire:?}: the connection was not reused"
        );
    }
}

#[tokio::test]
async fn a_body_without_a_length_runs_to_the_connection_end() {
    for wire in Wire::both() {
        let (backend, accepted) = wire_backend(&wire, |_, _| {
            Some((b"HTTP/1.1 200 OK\r\n\r\nall of it", true))
        })
        .await;
        let (proxy, _store, _clusters) = proxy_to(backend, &wire, |_| {}).await;
        for _ in 0..2 {
            let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
            assert_eq!(
                (got.status.as_u16(), got.body.as_str()),
                (200, "all of it"),
                "{wire:?}"
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "{wire:?}: a used-up connection was reused"
        );
    }
}

#[tokio::test]
async fn a_truncated_body_fails_downstream() {
    for wire in Wire::both() {
        let (backend, _) = wire_backend(&wire, |_, _| {
            Some((b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf", true))
        })
        .await;
        let (proxy, _store, _clusters) = proxy_to(backend, &wire, |_| {}).await;
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
        assert!(
            complete.is_none(),
            "{wire:?}: a truncated body ended cleanly"
        );
    }
}

#[tokio::test]
async fn malformed_response_heads_are_502() {
    for wire in Wire::both() {
        let (backend, _) = wire_backend(&wire, |_, _| {
            Some((
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nok",
                true,
            ))
        })
        .await;
        let (proxy, _store, _clusters) = proxy_to(backend, &wire, |_| {}).await;
        let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
        assert_eq!(got.status.as_u16(), 502, "{wire:?}: {}", got.body);
        assert!(
            got.body.contains("content-length"),
            "{wire:?}: {}",
            got.body
        );
    }
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    for wire in Wire::both() {
        // Every connection answers once, then closes (without saying so in the response; on
        // TLS with a `close_notify`).
        let (backend, accepted) = wire_backend(&wire, |_, _| Some((KEEP_ALIVE_OK, true))).await;
        let (proxy, store, clusters) = proxy_to(backend, &wire, |_| {}).await;
        for i in 1..=3 {
            let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
            assert_eq!(
                (got.status.as_u16(), got.body.as_str()),
                (200, "ok"),
                "{wire:?}"
            );
            assert_eq!(accepted.load(Ordering::SeqCst), i, "{wire:?}");
            // The reaper closes the dead connection and frees its slot.
            eventually("the closed connection's slot freed", || async {
                (open_connections(&store, &clusters) == 0).then_some(())
            })
            .await;
        }
    }
}

#[tokio::test]
async fn an_idempotent_request_is_sent_again_when_a_reused_connection_closes_unanswered() {
    for wire in Wire::both() {
        // The first connection answers its first request and closes on the second without
        // a word; the next connection answers.
        let (backend, accepted) = wire_backend(&wire, |conn, request| match (conn, request) {
            (0, 0) => Some((KEEP_ALIVE_OK, false)),
            (0, _) => None,
            _ => Some((KEEP_ALIVE_OK, false)),
        })
        .await;
        let (proxy, _store, _clusters) = proxy_to(backend, &wire, |_| {}).await;
        let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
        assert_eq!(got.status.as_u16(), 200, "{wire:?}");
        let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
        assert_eq!(
            (got.status.as_u16(), got.body.as_str()),
            (200, "ok"),
            "{wire:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "{wire:?}");
        // A POST is not sent twice: the same failure is the client's to see.
        let (backend, _) = wire_backend(&wire, |conn, request| match (conn, request) {
            (0, 0) => Some((KEEP_ALIVE_OK, false)),
            _ => None,
        })
        .await;
        let (proxy, _store, _clusters) = proxy_to(backend, &wire, |_| {}).await;
        let client = h1_client();
        let got = send(&client, proxy, "GET", "svc", "/", &[], "").await;
        assert_eq!(got.status.as_u16(), 200, "{wire:?}");
        let got = send(&client, proxy, "POST", "svc", "/", &[], "").await;
        assert_eq!(got.status.as_u16(), 502, "{wire:?}: {}", got.body);
    }
}

#[tokio::test]
async fn requests_with_and_without_a_body_share_one_connection_slot() {
    for wire in Wire::both() {
        let (backend, _) = wire_backend(&wire, |_, _| Some((KEEP_ALIVE_OK, false))).await;
        let (proxy, store, clusters) = proxy_to(backend, &wire, |c| {
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
                "{wire:?} {method}"
            );
            assert!(open_connections(&store, &clusters) <= 1, "{wire:?}");
        }
    }
}

/// On TLS, the protocol is the server's pick among those offered: a cluster that offers
/// `h2` is served by hyper's client, which speaks HTTP/2 when the server picks it and
/// HTTP/1.1 when it does not; one that offers only `http/1.1` takes the `h1` path.
#[tokio::test]
async fn over_tls_the_request_speaks_the_protocol_alpn_picked() {
    for (server, cluster, spoken) in [
        (&["h2", "http/1.1"][..], &["h2", "http/1.1"][..], "HTTP/2.0"),
        (&["http/1.1"], &["h2", "http/1.1"], "HTTP/1.1"),
        (&["h2", "http/1.1"], &["http/1.1"], "HTTP/1.1"),
        (&[], &[], "HTTP/1.1"),
    ] {
        let wire = Wire::tls(server);
        let (backend, _) = wire
            .listen(|io, _| async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let version = format!("{:?}", req.version());
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        version,
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            })
            .await;
        let (proxy, _store, _clusters) = proxy_to(backend, &wire, |c| {
            c.tls = wire.upstream(cluster);
        })
        .await;
        for _ in 0..2 {
            let got = get(&h1_client(), proxy, "svc", "/", &[]).await;
            assert_eq!(
                (got.status.as_u16(), got.body.as_str()),
                (200, spoken),
                "server offers {server:?}, cluster {cluster:?}"
            );
        }
    }
}
