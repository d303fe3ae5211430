#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `listener::run` over real sockets on 127.0.0.1: the TCP proxy (echo round trip, connect
//! failover, idle timeout), TLS with ALPN (HTTP/1.1 and h2 from one listener, mTLS), and
//! draining (in-flight requests finish, the port is freed, TCP is cut at the deadline).

mod listener_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchboard_proxy_data::ClusterManager;
use switchboard_proxy_data::listener::ConnectionLimit;
use switchboard_proxy_xds::ConfigStore;
use switchboard_proxy_xds::config::cluster::{OutlierDetection, UpstreamProtocol};
use switchboard_proxy_xds::config::listener::{ClientValidation, DataSource, HttpLimits};
use switchboard_proxy_xds::config::route::Clusters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use listener_support::*;
use support::{backend, set_cluster, set_cluster_with};

/// Writes `msg` and reads back as many bytes.
async fn echo(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .unwrap();
    back
}

/// Waits (bounded) for the peer to close: `read` returns 0 or an error.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn tcp_proxy_echo_round_trip() {
    metrics();
    let store = tcp_echo_store("tcp-echo", None).await;
    let running = start(&store, "tcp-echo", Duration::from_secs(5)).await;

    let mut s = TcpStream::connect(running.addr).await.unwrap();
    assert_eq!(echo(&mut s, b"hello").await, b"hello");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo(&mut s, &big).await, big);
    // Half-close: our FIN reaches the backend, whose FIN comes back.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the relay did not close")
        .unwrap();
    assert!(rest.is_empty());

    let sent = (5 + big.len()) as f64;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rx = metric(
            "switchboard_proxy_tcp_bytes_total",
            &[("listener", "tcp-echo"), ("direction", "rx")],
        );
        let tx = metric(
            "switchboard_proxy_tcp_bytes_total",
            &[("listener", "tcp-echo"), ("direction", "tx")],
        );
        let open = metric(
            "switchboard_proxy_listener_active_connections",
            &[("listener", "tcp-echo")],
        );
        if (rx, tx, open) == (Some(sent), Some(sent), Some(0.0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics: rx {rx:?} tx {tx:?} open {open:?}, want {sent} {sent} 0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(
            "switchboard_proxy_listener_connections_total",
            &[("listener", "tcp-echo")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn tcp_connect_failure_fails_over_to_another_endpoint() {
    metrics();
    let dead = closed_port().await;
    let live = echo_backend().await;
    let mut store = ConfigStore::new();
    set_cluster(
        &mut store,
        "flaky-db",
        UpstreamProtocol::Http1,
        &[dead, live],
    );
    set_tcp_listener(
        &mut store,
        "tcp-failover",
        Clusters::One("flaky-db".into()),
        2,
        None,
    );
    let running = start(&store, "tcp-failover", Duration::from_secs(5)).await;
    // Round robin puts the dead endpoint first for about half of the connections; each of
    // them must still reach the live one.
    for i in 0..6u8 {
        let mut s = TcpStream::connect(running.addr).await.unwrap();
        assert_eq!(echo(&mut s, &[i; 16]).await, [i; 16], "connection {i}");
    }
    let failures = metric(
        "switchboard_proxy_upstream_requests_total",
        &[("cluster", "flaky-db"), ("outcome", "connect_failure")],
    );
    assert!(
        failures.is_some_and(|n| n >= 1.0),
        "connect failures counted: {failures:?}"
    );
}

#[tokio::test]
async fn tcp_connect_failure_without_another_endpoint_closes_the_client() {
    let dead = closed_port().await;
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "gone", UpstreamProtocol::Http1, &[dead]);
    set_tcp_listener(
        &mut store,
        "tcp-gone",
        Clusters::One("gone".into()),
        3,
        None,
    );
    let running = start(&store, "tcp-gone", Duration::from_secs(5)).await;
    let mut s = TcpStream::connect(running.addr).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn tcp_connect_failures_eject_the_endpoint() {
    metrics();
    let dead = closed_port().await;
    let live = echo_backend().await;
    let mut store = ConfigStore::new();
    set_cluster_with(&mut store, "ejecting-db", &[dead, live], |c| {
        c.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: 1,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(60),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
            enforcing_consecutive_5xx: 100,
            always_eject_one_host: false,
        });
    });
    // One connect attempt per connection: a failed attempt closes the client.
    set_tcp_listener(
        &mut store,
        "tcp-eject",
        Clusters::One("ejecting-db".into()),
        1,
        None,
    );
    let running = start(&store, "tcp-eject", Duration::from_secs(5)).await;
    let mut echoed = 0;
    for i in 0..10u8 {
        let mut s = TcpStream::connect(running.addr).await.unwrap();
        if s.write_all(&[i; 8]).await.is_err() {
            continue;
        }
        let mut back = [0u8; 8];
        if tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            echoed += 1;
        }
    }
    // Round robin reaches the dead endpoint at most once before it is ejected.
    assert!(echoed >= 9, "{echoed}/10 connections echoed");
    assert_eq!(
        metric(
            "switchboard_proxy_outlier_ejections_total",
            &[("cluster", "ejecting-db")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn tcp_max_connections_closes_the_overflowing_client() {
    metrics();
    let echo_addr = echo_backend().await;
    let mut store = ConfigStore::new();
    set_cluster_with(&mut store, "capped-db", &[echo_addr], |c| {
        c.circuit_breakers.max_connections = 1;
    });
    set_tcp_listener(
        &mut store,
        "tcp-capped",
        Clusters::One("capped-db".into()),
        1,
        None,
    );
    let running = start(&store, "tcp-capped", Duration::from_secs(5)).await;
    let mut first = TcpStream::connect(running.addr).await.unwrap();
    assert_eq!(echo(&mut first, b"one").await, b"one");
    // The cluster's one connection is taken: the next client is closed.
    let mut second = TcpStream::connect(running.addr).await.unwrap();
    assert!(closed_within(&mut second, Duration::from_secs(10)).await);
    assert_eq!(
        metric(
            "switchboard_proxy_circuit_breaker_overflows_total",
            &[("cluster", "capped-db"), ("threshold", "max_connections")]
        ),
        Some(1.0)
    );
    // Once the first closes, its slot is free again.
    drop(first);
    let mut third = None;
    for _ in 0..50 {
        let mut s = TcpStream::connect(running.addr).await.unwrap();
        if s.write_all(b"three").await.is_ok() {
            let mut back = [0u8; 5];
            if tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut back))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                third = Some(back);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(third.as_ref().map(|b| &b[..]), Some(&b"three"[..]));
}

#[tokio::test]
async fn connections_over_the_process_limit_are_closed_and_counted() {
    metrics();
    let store = tcp_echo_store("tcp-limited", None).await;
    let limit = ConnectionLimit::new(2);
    let running = start_limited(
        &store,
        "tcp-limited",
        Duration::from_secs(5),
        Arc::new(ClusterManager::new()),
        limit.clone(),
    )
    .await;
    let mut first = TcpStream::connect(running.addr).await.unwrap();
    let mut second = TcpStream::connect(running.addr).await.unwrap();
    assert_eq!(echo(&mut first, b"one").await, b"one");
    assert_eq!(echo(&mut second, b"two").await, b"two");
    assert_eq!(limit.open(), 2);
    // At the cap: the third is accepted and closed at once, and counted.
    let mut third = TcpStream::connect(running.addr).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(10)).await);
    assert_eq!(
        metric(
            "switchboard_proxy_listener_connections_overflow_total",
            &[("listener", "tcp-limited")]
        ),
        Some(1.0)
    );
    // The two admitted connections go on.
    assert_eq!(echo(&mut first, b"still").await, b"still");
    // Once one closes, its place is free again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while limit.open() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(limit.open(), 1);
    let mut fourth = TcpStream::connect(running.addr).await.unwrap();
    assert_eq!(echo(&mut fourth, b"four").await, b"four");
    assert_eq!(
        metric(
            "switchboard_proxy_listener_connections_overflow_total",
            &[("listener", "tcp-limited")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn tcp_idle_timeout_closes_both_sides() {
    let store = tcp_echo_store("tcp-idle", Some(Duration::from_millis(300))).await;
    let running = start(&store, "tcp-idle", Duration::from_secs(5)).await;
    let mut s = TcpStream::connect(running.addr).await.unwrap();
    // Traffic keeps it open past the timeout...
    for _ in 0..5 {
        assert_eq!(echo(&mut s, b"ping").await, b"ping");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...silence closes it.
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// One GET over an established TLS stream, on the protocol ALPN chose.
async fn get_over(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
) -> hyper::Result<(StatusCode, Version, String)> {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let req = Request::get("https://localhost/tls")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        parts.status,
        parts.version,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

#[tokio::test]
async fn tls_listener_serves_http1_and_h2_by_alpn() {
    let a = backend("a").await;
    let (cert, key) = self_signed();
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "a", UpstreamProtocol::Http1, &[a]);
    route_all_to_a(&mut store);
    set_http_listener(
        &mut store,
        "https",
        HttpLimits::default(),
        Some(tls(&cert, &key, &["h2", "http/1.1"])),
    );
    let running = start(&store, "https", Duration::from_secs(5)).await;

    let h2 = tls_connect(running.addr, client_config(&cert, &[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let got = tokio::time::timeout(Duration::from_secs(10), get_over(h2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, (StatusCode::OK, Version::HTTP_2, "a".to_owned()));

    let h1 = tls_connect(running.addr, client_config(&cert, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let got = tokio::time::timeout(Duration::from_secs(10), get_over(h1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, (StatusCode::OK, Version::HTTP_11, "a".to_owned()));

    // No ALPN at all: HTTP/1.1 (or h2 prior knowledge, told apart by the preface).
    let none = tls_connect(running.addr, client_config(&cert, &[]))
        .await
        .unwrap();
    assert_eq!(none.get_ref().1.alpn_protocol(), None);
    let got = tokio::time::timeout(Duration::from_secs(10), get_over(none))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.0, StatusCode::OK);

    // Plaintext on the TLS port is a failed handshake: that connection closes, the
    // listener goes on.
    let reply = exchange(
        running.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        false,
        Duration::from_secs(10),
    )
    .await;
    assert!(reply.is_some(), "the plaintext connection was not closed");
    let again = tls_connect(running.addr, client_config(&cert, &[b"h2"]))
        .await
        .unwrap();
    let got = get_over(again).await.unwrap();
    assert_eq!(got.0, StatusCode::OK);
}

#[tokio::test]
async fn tls_listener_with_unusable_key_refuses_connections_without_panicking() {
    let (cert, _) = self_signed();
    let mut store = ConfigStore::new();
    route_all_to_a(&mut store);
    let mut bad = tls(&cert, "-----BEGIN PRIVATE KEY-----\nAAAA\n", &["h2"]);
    bad.private_key = DataSource::Inline(b"not a key".to_vec());
    set_http_listener(&mut store, "bad-tls", HttpLimits::default(), Some(bad));
    let running = start(&store, "bad-tls", Duration::from_secs(5)).await;
    assert!(
        tls_connect(running.addr, client_config(&cert, &[b"h2"]))
            .await
            .is_err()
    );
    // Fixing the configuration applies to the next connection.
    let (cert, key) = self_signed();
    set_http_listener(
        &mut store,
        "bad-tls",
        HttpLimits::default(),
        Some(tls(&cert, &key, &["h2"])),
    );
    let a = backend("a").await;
    set_cluster(&mut store, "a", UpstreamProtocol::Http1, &[a]);
    let ok = tls_connect(running.addr, client_config(&cert, &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(get_over(ok).await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_trusted_ca() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["client".to_owned()]).unwrap();
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

    let a = backend("a").await;
    let (cert, key) = self_signed();
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "a", UpstreamProtocol::Http1, &[a]);
    route_all_to_a(&mut store);
    let mut server_tls = tls(&cert, &key, &["h2"]);
    server_tls.client_validation = Some(ClientValidation {
        trusted_ca: DataSource::Inline(ca.pem().into_bytes()),
        required: true,
        san_matchers: Vec::new(),
    });
    set_http_listener(&mut store, "mtls", HttpLimits::default(), Some(server_tls));
    let running = start(&store, "mtls", Duration::from_secs(5)).await;

    // Without a certificate: refused (TLS 1.3 may report it at the first read).
    let anonymous = match tls_connect(running.addr, client_config(&cert, &[b"h2"])).await {
        Err(_) => true,
        Ok(s) => tokio::time::timeout(Duration::from_secs(10), get_over(s))
            .await
            .unwrap()
            .is_err(),
    };
    assert!(anonymous, "a client without a certificate was served");

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
        .unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![client_cert.der().clone()],
                PrivateKeyDer::from_pem_slice(client_key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let s = tls_connect(running.addr, config).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), get_over(s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, (StatusCode::OK, Version::HTTP_2, "a".to_owned()));
}

/// Sends GET `path` on a fresh HTTP/1.1 or h2c connection; returns the status and body.
async fn plain_get(addr: std::net::SocketAddr, path: &str, h2: bool) -> (StatusCode, String) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", "x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_frees_the_port_and_returns() {
    let a = backend("a").await;
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "a", UpstreamProtocol::Http1, &[a]);
    route_all_to_a(&mut store);
    set_http_listener(&mut store, "drained", HttpLimits::default(), None);
    let running = start(&store, "drained", Duration::from_secs(20)).await;
    let addr = running.addr;
    assert_eq!(plain_get(addr, "/", false).await.0, StatusCode::OK);

    // The backend holds `/slow` for 2 s: one request per protocol is in flight at the drain.
    let h1 = tokio::spawn(async move { plain_get(addr, "/slow", false).await });
    let h2 = tokio::spawn(async move { plain_get(addr, "/slow", true).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drain_started = Instant::now();
    running.drain.cancel();

    // The port stops accepting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the port still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // In-flight requests finish normally.
    let h1 = tokio::time::timeout(Duration::from_secs(15), h1)
        .await
        .unwrap()
        .unwrap();
    let h2 = tokio::time::timeout(Duration::from_secs(15), h2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h1, (StatusCode::OK, "a".to_owned()));
    assert_eq!(h2, (StatusCode::OK, "a".to_owned()));
    // `run` returns once they are gone, well before the 20 s drain timeout.
    tokio::time::timeout(Duration::from_secs(15), running.done)
        .await
        .expect("run did not return after its connections closed")
        .unwrap();
    assert!(drain_started.elapsed() < Duration::from_secs(15));
    // The port can be bound again.
    tokio::net::TcpListener::bind(addr).await.unwrap();
}

#[tokio::test]
async fn drain_sends_goaway_and_closes_idle_connections() {
    let a = backend("a").await;
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "a", UpstreamProtocol::Http1, &[a]);
    route_all_to_a(&mut store);
    set_http_listener(&mut store, "idle-drain", HttpLimits::default(), None);
    let running = start(&store, "idle-drain", Duration::from_secs(20)).await;

    // An idle h2 connection and an idle HTTP/1.1 keep-alive connection.
    let io = TokioIo::new(TcpStream::connect(running.addr).await.unwrap());
    let (mut h2, h2_conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let h2_conn = tokio::spawn(h2_conn);
    let req = || {
        Request::get("/")
            .header("host", "x")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    assert_eq!(
        h2.send_request(req()).await.unwrap().status(),
        StatusCode::OK
    );
    let mut h1 = TcpStream::connect(running.addr).await.unwrap();
    h1.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = h1.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    running.drain.cancel();
    // Both close promptly (GOAWAY for h2), and `run` returns long before its deadline.
    tokio::time::timeout(Duration::from_secs(10), h2_conn)
        .await
        .expect("the h2 connection was not closed")
        .unwrap()
        .unwrap();
    assert!(closed_within(&mut h1, Duration::from_secs(10)).await);
    tokio::time::timeout(Duration::from_secs(10), running.done)
        .await
        .expect("run did not return")
        .unwrap();
}

#[tokio::test]
async fn drain_lets_tcp_run_until_the_deadline_then_closes_it() {
    let store = tcp_echo_store("tcp-drain", None).await;
    let running = start(&store, "tcp-drain", Duration::from_millis(800)).await;
    let mut s = TcpStream::connect(running.addr).await.unwrap();
    assert_eq!(echo(&mut s, b"before").await, b"before");
    running.drain.cancel();
    // Still relaying during the drain...
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(echo(&mut s, b"during").await, b"during");
    // ...then cut at the deadline, and `run` returns.
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    tokio::time::timeout(Duration::from_secs(10), running.done)
        .await
        .expect("run did not return after the drain deadline")
        .unwrap();
}

#[tokio::test]
async fn serve_still_serves_tcp_and_http_listeners() {
    // `proxy::serve` (no drain) dispatches by listener kind too.
    let store = tcp_echo_store("tcp-serve", None).await;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let task = tokio::spawn(switchboard_proxy_data::serve(
        tcp,
        "tcp-serve",
        store.clone(),
        Default::default(),
    ));
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo(&mut s, b"via serve").await, b"via serve");
    task.abort();
    // Aborting `serve` closes its connections.
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
}
