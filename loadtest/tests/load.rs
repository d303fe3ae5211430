#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The load generator against the in-process backend: request counts, windows and error kinds;
//! the new-connection loop, plaintext and with the mesh's mTLS client identity against an
//! in-process mTLS server. (An integration test, so that `load` and `backend` need not know
//! each other's tests.)

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{start_backend, target};

use bytes::Bytes;
use hdrhistogram::Histogram;
use switchboard_loadtest::load::{
    Errors, Failure, FixedRate, Protocol, Saturation, Target, fixed_rate, get, probe, saturation,
};
use switchboard_loadtest::{backend, grpc, handshake, mesh, sds, tls};
use switchboard_pki::MeshCa;
use time::OffsetDateTime;
use tokio_rustls::rustls::pki_types::ServerName;

fn h2_target(addr: SocketAddr, body_len: usize, protocol: Protocol) -> Target {
    Target {
        protocol,
        h2_connections: 4,
        ..target(addr, body_len)
    }
}

async fn connections_accepted(addr: SocketAddr) -> u64 {
    std::str::from_utf8(&get(addr, backend::CONNECTIONS_PATH).await.unwrap())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn fixed_rate_sends_every_request_of_the_window_once() {
    let t = target(start_backend(1024).await, 1024);
    let mut marks = 0;
    let shape = FixedRate {
        rate: 400,
        connections: 4,
        warmup: Duration::from_millis(250),
        duration: Duration::from_secs(1),
    };
    let o = fixed_rate(&t, shape, || marks += 1).await.unwrap();
    assert_eq!(marks, 2);
    assert_eq!(o.errors.total(), 0, "{}", o.errors.describe());
    assert_eq!(o.ok, 400);
    assert_eq!(o.latency.len(), 400);
    assert_eq!(o.pacer_lag.as_ref().map(Histogram::len), Some(400));
    // The window is one second; the last response may come a little after it.
    assert!(o.elapsed >= Duration::from_millis(990), "{:?}", o.elapsed);
    // The backend saw exactly the 4 keep-alive connections (the question is not counted).
    let accepted = get(t.addr, backend::CONNECTIONS_PATH).await.unwrap();
    assert_eq!(&accepted[..], b"4");
}

#[tokio::test]
async fn saturation_counts_responses_of_the_window() {
    let t = target(start_backend(1024).await, 1024);
    let mut marks = 0;
    let shape = Saturation {
        connections: 8,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(500),
    };
    let o = saturation(&t, shape, || marks += 1).await.unwrap();
    assert_eq!(marks, 2);
    assert_eq!(o.errors.total(), 0, "{}", o.errors.describe());
    assert!(o.ok > 0 && o.latency.len() >= o.ok);
    assert_eq!(o.elapsed, Duration::from_millis(500));
}

#[tokio::test]
async fn wrong_answers_are_errors_of_their_kind() {
    let addr = start_backend(1000).await;
    assert_eq!(probe(&target(addr, 1024)).await, Err(Failure::Body));
    assert_eq!(probe(&target(addr, 1000)).await, Ok(()));
    // A port nobody listens on (bound, then closed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(probe(&target(closed, 1024)).await, Err(Failure::Connect));
    let mut e = Errors::default();
    e.add(Failure::Io);
    e.add(Failure::Io);
    e.add(Failure::Timeout);
    assert_eq!(e.describe(), "3 (io 2, timeout 1)");
}

#[tokio::test]
async fn http2_lanes_share_the_connections_and_grpc_calls_are_checked() {
    for protocol in [Protocol::Http2, Protocol::Grpc] {
        let t = h2_target(start_backend(1024).await, 1024, protocol);
        let shape = FixedRate {
            rate: 400,
            connections: 16,
            warmup: Duration::from_millis(250),
            duration: Duration::from_secs(1),
        };
        let o = fixed_rate(&t, shape, || {}).await.unwrap();
        assert_eq!(o.errors.total(), 0, "{protocol:?}: {}", o.errors.describe());
        assert_eq!(o.ok, 400, "{protocol:?}");
        let shape = Saturation {
            connections: 32,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
        };
        let o = saturation(&t, shape, || {}).await.unwrap();
        assert_eq!(o.errors.total(), 0, "{protocol:?}: {}", o.errors.describe());
        assert!(o.ok > 0);
        // 16 and then 32 lanes, each time over 4 HTTP/2 connections.
        assert_eq!(connections_accepted(t.addr).await, 8, "{protocol:?}");
        assert_eq!(o.reconnects, 0);
    }
}

#[tokio::test]
async fn wrong_http2_and_grpc_answers_are_errors_of_their_kind() {
    let addr = start_backend(1000).await;
    for protocol in [Protocol::Http2, Protocol::Grpc] {
        assert_eq!(
            probe(&h2_target(addr, 1024, protocol)).await,
            Err(Failure::Body),
            "{protocol:?}"
        );
        assert_eq!(probe(&h2_target(addr, 1000, protocol)).await, Ok(()));
    }
}

/// The backend refuses a malformed gRPC message with `grpc-status: 3` and no message.
#[tokio::test]
async fn the_backend_checks_the_grpc_framing() {
    use http_body_util::{BodyExt, Full};
    let addr = start_backend(64).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (body, status, len) in [
        (grpc::frame(10, b'q'), grpc::OK, Some(64)),
        (
            grpc::frame(10, b'q').slice(..12),
            grpc::INVALID_ARGUMENT,
            Some(0),
        ),
    ] {
        let request = http::Request::post(format!("http://bench.local{}", grpc::PATH))
            .header(http::header::CONTENT_TYPE, grpc::CONTENT_TYPE)
            .body(Full::new(body))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap();
        let trailers = body.trailers().cloned().unwrap();
        assert_eq!(trailers.get(grpc::STATUS).unwrap(), status);
        let bytes = body.to_bytes();
        assert_eq!(
            if bytes.is_empty() {
                Some(0)
            } else {
                grpc::message_len(&bytes)
            },
            len
        );
    }
}

#[tokio::test]
async fn new_connection_loop_opens_one_connection_per_request() {
    let t = target(start_backend(1024).await, 1024);
    let mut marks = 0;
    let shape = Saturation {
        connections: 2,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(400),
    };
    let o = handshake::closed_loop(&t, None, shape, || marks += 1)
        .await
        .unwrap();
    assert_eq!(marks, 2);
    assert_eq!(o.errors.total(), 0, "{}", o.errors.describe());
    assert!(o.ok > 0);
    // Every request, warm-up included, came on a connection of its own.
    let accepted: u64 = std::str::from_utf8(&get(t.addr, backend::CONNECTIONS_PATH).await.unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        accepted >= o.ok + 2,
        "{accepted} connections for {} requests",
        o.ok
    );
}

/// A mesh-mTLS server on 127.0.0.1 (client certificate required, chained to `ca`), answering
/// 200 with `body_len` bytes; its certificate is issued by `ca` for `server_id`.
async fn mtls_backend(ca: &MeshCa, server_id: &str, body_len: usize) -> SocketAddr {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
    let issued = ca
        .issue(
            server_id,
            Duration::from_secs(3600),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.root_pem().as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(issued.private_key_pem.as_bytes()).unwrap();
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from(vec![b'x'; body_len]);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn mtls_client_presents_its_certificate_and_checks_the_server_spiffe_id() {
    let now = OffsetDateTime::now_utc();
    let ca = MeshCa::generate("t", "m", now).unwrap();
    let server_id = mesh::spiffe_id("t", "m", "server");
    let t = target(mtls_backend(&ca, &server_id, 1024).await, 1024);
    let client = ca
        .issue(
            &mesh::spiffe_id("t", "m", "client"),
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
    let cert = sds::WorkloadCertificate {
        chain_pem: client.chain_pem,
        key_pem: client.private_key_pem.to_string(),
        roots_pem: ca.root_pem().to_owned(),
    };
    let tls = |id: &str| handshake::Tls {
        config: tls::client_config(&cert, id).unwrap(),
        server_name: ServerName::try_from("server").unwrap().to_owned(),
    };
    // The expected identity: a full handshake and a good answer, on new connections.
    let ok = tls(&server_id);
    assert_eq!(handshake::one_request(&t, Some(&ok)).await, Ok(()));
    assert_eq!(handshake::one_request(&t, Some(&ok)).await, Ok(()));
    // Another service's identity, or no TLS at all: refused.
    let wrong = tls(&mesh::spiffe_id("t", "m", "other"));
    assert_eq!(
        handshake::one_request(&t, Some(&wrong)).await,
        Err(Failure::Connect)
    );
    assert!(handshake::one_request(&t, None).await.is_err());
    // A certificate of another CA is refused by the server.
    let other_ca = MeshCa::generate("t", "m", now).unwrap();
    let stranger = other_ca
        .issue(
            &mesh::spiffe_id("t", "m", "client"),
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
    let stranger = sds::WorkloadCertificate {
        chain_pem: stranger.chain_pem,
        key_pem: stranger.private_key_pem.to_string(),
        roots_pem: ca.root_pem().to_owned(),
    };
    let refused = handshake::Tls {
        config: tls::client_config(&stranger, &server_id).unwrap(),
        server_name: ServerName::try_from("server").unwrap().to_owned(),
    };
    assert!(handshake::one_request(&t, Some(&refused)).await.is_err());
}
