#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Mesh mTLS over real sockets on 127.0.0.1, with a CA and SPIFFE certificates made by rcgen
//! and delivered as SDS secrets (`default`, `ROOTCA`) in the ConfigStore: a strict inbound
//! listener refuses plaintext, another CA and a SAN that does not match; rotating `default`
//! keeps an open connection and new handshakes get the new certificate; permissive mode
//! serves TLS and plaintext on one port; a listener is warm only with its secrets; a
//! proxy's outbound cluster speaks mTLS to another's inbound, verifying its SPIFFE ID.

mod listener_support;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use switchboard_proxy_xds::config::Secret;
use switchboard_proxy_xds::config::action::Action;
use switchboard_proxy_xds::config::cluster::{Cluster, TransportSocketMatch, UpstreamProtocol};
use switchboard_proxy_xds::config::endpoint::LoadAssignment;
use switchboard_proxy_xds::config::listener::{
    ClientValidation, DataSource, DownstreamTls, HttpConnectionManager, HttpLimits, Listener,
    ListenerKind, PlaintextChain, RouteSource,
};
use switchboard_proxy_xds::config::matcher::PathMatch;
use switchboard_proxy_xds::config::tls::{
    SanMatch, SanMatcher, SanType, ServerValidation, UpstreamTls,
};
use switchboard_proxy_xds::{ConfigStore, Handler};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use listener_support::{route_all_to_a, set_http_listener, start};
use support::{
    Ca, backend, ca, get, h1_client, proxy, route, set_cluster, set_listener, set_routes, to, vhost,
};

const MESH: &str = "spiffe://t.sb/mesh/m/service/";

fn set_secrets(store: &mut ConfigStore, ca: &Ca, identity: &str, serial: u64) {
    let (chain, key) = ca.leaf(&format!("{MESH}{identity}"), serial);
    let secrets = vec![
        (
            "default".to_owned(),
            Secret::TlsCertificate {
                certificate_chain: DataSource::Inline(chain.into_bytes()),
                private_key: DataSource::Inline(key.into_bytes()),
            },
        ),
        (
            "ROOTCA".to_owned(),
            Secret::ValidationContext {
                trusted_ca: DataSource::Inline(ca.pem().into_bytes()),
            },
        ),
    ];
    Handler::<Secret>::apply(store, secrets, vec![]).unwrap();
}

fn mesh_tls() -> DownstreamTls {
    DownstreamTls {
        certificate_chain: DataSource::Sds("default".into()),
        private_key: DataSource::Sds("default".into()),
        alpn_protocols: vec!["h2".into(), "http/1.1".into()],
        client_validation: Some(ClientValidation {
            trusted_ca: DataSource::Sds("ROOTCA".into()),
            required: true,
            san_matchers: vec![SanMatcher {
                san_type: SanType::Uri,
                matcher: SanMatch::Prefix(MESH.into()),
            }],
        }),
        handshake_timeout: Duration::from_secs(5),
        sni_certificates: Vec::new(),
    }
}

/// The inbound side: listener `inbound` (mTLS from SDS) routing to backend `a`.
async fn inbound(ca: &Ca) -> (ConfigStore, SocketAddr) {
    let a = backend("a").await;
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "a", UpstreamProtocol::Http1, &[a]);
    route_all_to_a(&mut store);
    set_secrets(&mut store, ca, "b", 1);
    set_http_listener(
        &mut store,
        "inbound",
        HttpLimits::default(),
        Some(mesh_tls()),
    );
    let running = start(&store, "inbound", Duration::from_secs(1)).await;
    (store, running.addr)
}

fn client_config(server_ca: &Ca, client: Option<(String, String)>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.pem().as_bytes()).unwrap())
        .unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    match client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(chain.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(addr: SocketAddr, config: ClientConfig) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// An HTTP/1.1 connection over `io`, kept alive for several requests.
async fn h1<S>(io: S) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn get_on(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
) -> hyper::Result<(StatusCode, String)> {
    let req = Request::get("/x")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Whether a client with `config` gets an answer from `addr` (a refused handshake may show
/// only at the first read under TLS 1.3).
async fn served(addr: SocketAddr, config: ClientConfig) -> bool {
    let attempt = async {
        let Ok(tls) = connect(addr, config).await else {
            return false;
        };
        let mut send = h1(tls).await;
        get_on(&mut send)
            .await
            .is_ok_and(|(s, _)| s == StatusCode::OK)
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap()
}

fn serial_of(tls: &Tls) -> Vec<u8> {
    let der = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.raw_serial().to_vec()
}

#[tokio::test]
async fn strict_inbound_refuses_plaintext_other_ca_and_other_identities() {
    let ca = ca();
    let (_store, addr) = inbound(&ca).await;

    // The mesh: served.
    assert!(
        served(
            addr,
            client_config(&ca, Some(ca.leaf(&format!("{MESH}a"), 7)))
        )
        .await
    );
    // No certificate; a certificate of another CA; a SAN outside the mesh: refused.
    assert!(!served(addr, client_config(&ca, None)).await);
    let other = self::ca();
    assert!(
        !served(
            addr,
            client_config(&ca, Some(other.leaf(&format!("{MESH}a"), 8)))
        )
        .await
    );
    let outsider = ca.leaf("spiffe://t.sb/mesh/other/service/a", 9);
    assert!(!served(addr, client_config(&ca, Some(outsider))).await);
    // Plaintext HTTP: no response.
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut send = h1(tcp).await;
        get_on(&mut send).await
    })
    .await
    .unwrap();
    assert!(plain.is_err(), "plaintext was served: {plain:?}");
}

#[tokio::test]
async fn rotating_default_keeps_open_connections_and_new_handshakes_use_the_new_certificate() {
    let ca = ca();
    let (mut store, addr) = inbound(&ca).await;
    let client = || client_config(&ca, Some(ca.leaf(&format!("{MESH}a"), 3)));
    let first = connect(addr, client()).await.unwrap();
    assert_eq!(serial_of(&first), [1]);
    let mut open = h1(first).await;
    assert_eq!(get_on(&mut open).await.unwrap().0, StatusCode::OK);

    set_secrets(&mut store, &ca, "b", 2);

    // The open keep-alive connection goes on.
    assert_eq!(get_on(&mut open).await.unwrap().0, StatusCode::OK);
    // A new handshake presents the new certificate.
    let second = connect(addr, client()).await.unwrap();
    assert_eq!(serial_of(&second), [2]);
    let mut send = h1(second).await;
    assert_eq!(get_on(&mut send).await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn permissive_listener_serves_tls_and_plaintext_on_one_port() {
    let ca = ca();
    let a = backend("a").await;
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "a", UpstreamProtocol::Http1, &[a]);
    route_all_to_a(&mut store);
    set_secrets(&mut store, &ca, "b", 1);
    let http = ListenerKind::Http(HttpConnectionManager {
        routes: RouteSource::Rds("main".into()),
        fault: None,
        allow_absolute_url: false,
        limits: HttpLimits::default(),
        rbac: Vec::new(),
        xfcc: Default::default(),
    });
    let listener = Listener {
        name: "permissive".into(),
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        kind: http.clone(),
        tls: Some(mesh_tls()),
        plaintext: Some(PlaintextChain {
            kind: http,
            network_rbac: Vec::new(),
        }),
        network_rbac: Vec::new(),
    };
    Handler::<Listener>::apply(&mut store, vec![("permissive".into(), listener)], vec![]).unwrap();
    let running = start(&store, "permissive", Duration::from_secs(1)).await;

    assert!(
        served(
            running.addr,
            client_config(&ca, Some(ca.leaf(&format!("{MESH}a"), 4)))
        )
        .await
    );
    let tcp = TcpStream::connect(running.addr).await.unwrap();
    let mut send = h1(tcp).await;
    assert_eq!(
        get_on(&mut send).await.unwrap(),
        (StatusCode::OK, "a".to_owned())
    );
    // TLS is still verified on the TLS chain.
    assert!(!served(running.addr, client_config(&ca, None)).await);
}

#[tokio::test]
async fn a_listener_is_warm_only_once_its_secrets_have_arrived() {
    let ca = ca();
    let mut store = ConfigStore::new();
    set_http_listener(
        &mut store,
        "inbound",
        HttpLimits::default(),
        Some(mesh_tls()),
    );
    assert!(!switchboard_proxy_data::listener::is_warm(
        &store.snapshot(),
        "inbound"
    ));
    let waiting = {
        let store = store.clone();
        tokio::spawn(
            async move { switchboard_proxy_data::listener::warmed(&store, "inbound").await },
        )
    };
    // ROOTCA alone is not enough.
    let roots = Secret::ValidationContext {
        trusted_ca: DataSource::Inline(ca.pem().into_bytes()),
    };
    Handler::<Secret>::apply(&mut store, vec![("ROOTCA".into(), roots)], vec![]).unwrap();
    assert!(!switchboard_proxy_data::listener::is_warm(
        &store.snapshot(),
        "inbound"
    ));
    assert!(!waiting.is_finished());
    set_secrets(&mut store, &ca, "b", 1);
    assert!(switchboard_proxy_data::listener::is_warm(
        &store.snapshot(),
        "inbound"
    ));
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("warmed did not return")
        .unwrap();
}

fn mesh_upstream(service: &str) -> UpstreamTls {
    UpstreamTls {
        client_certificate: Some((
            DataSource::Sds("default".into()),
            DataSource::Sds("default".into()),
        )),
        validation: ServerValidation {
            trusted_ca: switchboard_proxy_xds::config::tls::TrustedCa::Source(DataSource::Sds(
                "ROOTCA".into(),
            )),
            san_matchers: vec![SanMatcher {
                san_type: SanType::Uri,
                matcher: SanMatch::Exact(format!("{MESH}{service}")),
            }],
        },
        sni: None,
        alpn_protocols: vec![],
    }
}

/// Cluster `b` of `store` towards `addr`, with `tls` as its own transport socket or behind
/// a `{"mtls": "true"}` transport socket match that the endpoint's labels select.
fn set_mesh_cluster(store: &mut ConfigStore, addr: SocketAddr, tls: UpstreamTls, by_match: bool) {
    set_cluster(store, "b", UpstreamProtocol::Http1, &[addr]);
    let snapshot = store.snapshot();
    let mut cluster = Cluster::clone(&snapshot.clusters["b"]);
    let mut la = LoadAssignment::clone(&snapshot.endpoints["b"]);
    if by_match {
        let labels = BTreeMap::from([("mtls".to_owned(), "true".to_owned())]);
        cluster.tls_matches = vec![TransportSocketMatch {
            name: "mtls".into(),
            labels: labels.clone(),
            tls: Some(tls),
        }];
        la.localities[0].endpoints[0].transport_labels = labels;
    } else {
        cluster.tls = Some(tls);
    }
    Handler::<Cluster>::apply(store, vec![("b".into(), cluster)], vec![]).unwrap();
    Handler::<LoadAssignment>::apply(store, vec![("b".into(), la)], vec![]).unwrap();
}

#[tokio::test]
async fn outbound_cluster_speaks_mtls_to_an_inbound_listener_and_checks_its_spiffe_id() {
    let ca = ca();
    let (_b, inbound_addr) = inbound(&ca).await;
    for by_match in [false, true] {
        let mut a = ConfigStore::new();
        set_secrets(&mut a, &ca, "a", 10);
        set_routes(
            &mut a,
            vec![vhost(
                "all",
                &["*"],
                vec![route(
                    "all",
                    PathMatch::Prefix("/".into()),
                    Action::Forward(to("b")),
                )],
            )],
        );
        set_listener(&mut a);
        set_mesh_cluster(&mut a, inbound_addr, mesh_upstream("b"), by_match);
        let outbound = proxy(&a).await;
        let got = get(&h1_client(), outbound, "b", "/x", &[]).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (StatusCode::OK, "a"),
            "by_match {by_match}"
        );

        // Expecting another identity: the handshake is refused, nothing reaches b.
        set_mesh_cluster(&mut a, inbound_addr, mesh_upstream("c"), by_match);
        let got = get(&h1_client(), outbound, "b", "/x", &[]).await;
        assert_eq!(
            got.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "by_match {by_match}"
        );
    }
}
