//! TLS on real sockets: the REST API over HTTP/1.1 and HTTP/2, xDS with a tonic client,
//! certificate reload (new connections only), bad files, handshake timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::json;
use switchboard_api::{AdminToken, AppState};
use switchboard_store::testing::{TestDb, store};
use switchboard_store::{Backend, CredentialKind, Store};
use switchboard_xds_server::testing::{AdsClient, node, secret};
use switchboard_xds_server::{XdsConfig, XdsServer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;

use super::*;

/// A CA and the leaf certificates it signs for `localhost`.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and key, as PEM, and the certificate's DER (what a client sees).
struct Leaf {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "switchboard test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { ca }
    }

    fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}

/// Certificate files in a temporary directory.
struct Files {
    _dir: tempfile::TempDir,
    files: TlsFiles,
}

impl Files {
    fn new(leaf: &Leaf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        let this = Self { _dir: dir, files };
        this.write(&leaf.cert, &leaf.key);
        this
    }

    fn write(&self, cert: &str, key: &str) {
        std::fs::write(&self.files.cert, cert).unwrap();
        std::fs::write(&self.files.key, key).unwrap();
    }
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(addr: SocketAddr, ca_pem: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(client_config(ca_pem, alpn))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// The leaf certificate the server presented on `conn`.
fn presented(conn: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    conn.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// An HTTP/1.1 connection to the REST port, and the certificate it saw.
async fn http1(
    addr: SocketAddr,
    ca_pem: &str,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    CertificateDer<'static>,
) {
    let tls = connect(addr, ca_pem, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let cert = presented(&tls);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (send, cert)
}

/// GETs the OpenAPI document on an HTTP/1.1 connection, reading the whole body so that
/// the connection can take the next request.
async fn get(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
) -> hyper::StatusCode {
    send.ready().await.unwrap();
    let req = hyper::Request::get("/v1/openapi.json")
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

/// The REST and xDS ports served over TLS as `serve` does, on 127.0.0.1.
struct Ports {
    rest: SocketAddr,
    xds: SocketAddr,
    store: Store,
    stop: CancellationToken,
    rest_task: tokio::task::JoinHandle<Result<(), rustls::Error>>,
    _db: TestDb,
}

async fn start(cert: Arc<ReloadingCert>) -> Ports {
    let (store, db) = store(Backend::Sqlite).await.unwrap();
    let running = XdsServer::start(
        store.clone(),
        XdsConfig {
            register_sidecars: false,
            ..Default::default()
        },
    );
    let app = switchboard_api::router(AppState {
        store: store.clone(),
        admin: AdminToken::new("test-admin-token-0123456789"),
        node_configs: Arc::new(crate::node_configs::XdsNodeConfigs::new(
            running.server().clone(),
        )),
        kek: Arc::new(switchboard_pki::Kek::generate().unwrap().0),
    });
    let rest = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (rest_addr, xds_addr) = (rest.local_addr().unwrap(), xds.local_addr().unwrap());
    let stop = CancellationToken::new();
    let rest_task = tokio::spawn(serve_rest(
        rest,
        cert.clone(),
        app,
        stop.clone().cancelled_owned(),
    ));
    tokio::spawn(serve_xds(
        xds,
        cert,
        running,
        stop.clone().cancelled_owned(),
    ));
    Ports {
        rest: rest_addr,
        xds: xds_addr,
        store,
        stop,
        rest_task,
        _db: db,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_over_tls_speaks_http1_and_h2_and_shuts_down_gracefully() {
    let pki = Pki::new();
    let leaf = pki.leaf();
    let files = Files::new(&leaf);
    let ports = start(ReloadingCert::load(files.files.clone()).unwrap()).await;

    let (mut h1, cert) = http1(ports.rest, &pki.ca_pem()).await;
    assert_eq!(cert, leaf.der);
    assert_eq!(get(&mut h1).await, 200);

    let tls = connect(ports.rest, &pki.ca_pem(), &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("https://localhost/v1/openapi.json")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);

    // Plaintext HTTP on the TLS port gets no answer, only a closed connection.
    let mut plain = TcpStream::connect(ports.rest).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut plain,
        b"GET /v1/openapi.json HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // Shutdown closes the idle connections and returns.
    ports.stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), ports.rest_task)
        .await
        .expect("the REST port shut down")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_over_tls_with_a_tonic_client() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let pki = Pki::new();
    let files = Files::new(&pki.leaf());
    let ports = start(ReloadingCert::load(files.files.clone()).unwrap()).await;
    ports
        .store
        .create_tenant("acme", &json!({}), false)
        .await
        .unwrap();
    let mesh = switchboard_model::Spec::parse(switchboard_model::Kind::Mesh, json!({})).unwrap();
    ports
        .store
        .put_spec(
            "acme",
            "",
            "prod",
            &mesh,
            &switchboard_store::WriteOptions::default(),
        )
        .await
        .unwrap();
    let token = secret(&ports.store, "acme", CredentialKind::ProxyToken, None)
        .await
        .unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", ports.xds))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AdsClient::over(channel, node("acme", "prod", "tls-1"), Some(&token))
        .await
        .unwrap();
    client
        .subscribe(switchboard_xds_proto::type_url::CLUSTER, &[])
        .await
        .unwrap();
    let response = client.recv().await.unwrap();
    assert_eq!(response.type_url, switchboard_xds_proto::type_url::CLUSTER);

    // A client that does not trust the CA is refused at the handshake.
    let other = Pki::new();
    let refused = Endpoint::from_shared(format!("https://{}", ports.xds))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(other.ca_pem()))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err());
}

/// Tenant `acme` with mesh `prod` holding service `pay`; returns a proxy token of it.
async fn acme(store: &Store) -> String {
    store
        .create_tenant("acme", &json!({}), false)
        .await
        .unwrap();
    let opts = switchboard_store::WriteOptions::default();
    for (kind, mesh, name, spec) in [
        (switchboard_model::Kind::Mesh, "", "prod", json!({})),
        (
            switchboard_model::Kind::Service,
            "prod",
            "pay",
            json!({"port": 8080}),
        ),
    ] {
        let spec = switchboard_model::Spec::parse(kind, spec).unwrap();
        store
            .put_spec("acme", mesh, name, &spec, &opts)
            .await
            .unwrap();
    }
    secret(store, "acme", CredentialKind::ProxyToken, None)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_xds_client_connects_over_tls() {
    use switchboard_proxy_xds::{Bootstrap, ClientOptions, ConfigStore, XdsClient};
    let pki = Pki::new();
    let files = Files::new(&pki.leaf());
    let ports = start(ReloadingCert::load(files.files.clone()).unwrap()).await;
    let token = acme(&ports.store).await;
    let dir = tempfile::tempdir().unwrap();
    let (token_file, ca_file) = (dir.path().join("token"), dir.path().join("ca.pem"));
    std::fs::write(&token_file, &token).unwrap();
    std::fs::write(&ca_file, pki.ca_pem()).unwrap();
    let bootstrap = Bootstrap {
        xds_address: format!("https://{}", ports.xds),
        node_id: "tenants/acme/meshes/prod/nodes/pay-1".to_owned(),
        metadata: [
            ("role", "sidecar"),
            ("service", "pay"),
            ("app_port", "8080"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
        token_file: Some(token_file),
        xds_ca_file: Some(ca_file),
        xds_client_cert_file: None,
        xds_client_key_file: None,
        ads_config: Default::default(),
    };
    bootstrap.check_tls().unwrap();
    let config = ConfigStore::new();
    let mut client = XdsClient::new(bootstrap, &config, ClientOptions::default()).spawn();
    tokio::time::timeout(Duration::from_secs(60), client.ready())
        .await
        .expect("the proxy's xDS client got its configuration over TLS");
    assert!(config.snapshot().clusters.contains_key("pay"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_serves_new_connections_and_a_bad_one_is_ignored() {
    let pki = Pki::new();
    let (first, second) = (pki.leaf(), pki.leaf());
    let files = Files::new(&first);
    let cert = ReloadingCert::load(files.files.clone()).unwrap();
    let mut status = cert.status();
    let _watch = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        cert.clone().watch(Duration::from_millis(50)),
    ));
    let ports = start(cert).await;
    let (mut open, seen) = http1(ports.rest, &pki.ca_pem()).await;
    assert_eq!(seen, first.der);
    assert_eq!(get(&mut open).await, 200);

    // The two files are written one after the other, so the poll may see a mixed pair first
    // (refused, and retried when the second file lands): wait for the good load.
    files.write(&second.cert, &second.key);
    status
        .wait_for(|s| s.changes >= 1 && s.error.is_none())
        .await
        .unwrap();
    let (mut fresh, seen) = http1(ports.rest, &pki.ca_pem()).await;
    assert_eq!(
        seen, second.der,
        "a new connection gets the new certificate"
    );
    assert_eq!(get(&mut fresh).await, 200);
    // The connection opened before keeps working.
    assert_eq!(get(&mut open).await, 200);

    // A key that is not a key, then a key of another certificate: each logged, neither used.
    let third = pki.leaf();
    let bad = [
        (
            second.cert.clone(),
            "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n".to_owned(),
            "cannot be used",
        ),
        (third.cert.clone(), second.key.clone(), "does not match"),
    ];
    for (cert_pem, key_pem, says) in bad {
        let before = status.borrow().changes;
        files.write(&cert_pem, &key_pem);
        let s = status
            .wait_for(|s| {
                s.changes > before && s.error.as_deref().is_some_and(|e| e.contains(says))
            })
            .await
            .unwrap()
            .clone();
        let error = s.error.unwrap_or_default();
        assert!(
            !error.contains("PRIVATE KEY") && !error.contains(&key_pem),
            "{error}"
        );
        let (_, seen) = http1(ports.rest, &pki.ca_pem()).await;
        assert_eq!(seen, second.der, "the last good certificate still serves");
    }
}

#[test]
fn bad_files_are_refused_at_start_without_key_material() {
    let pki = Pki::new();
    let (leaf, other) = (pki.leaf(), pki.leaf());
    let files = Files::new(&leaf);
    assert!(ReloadingCert::load(files.files.clone()).is_ok());
    let cases = [
        (
            "nothing".to_owned(),
            leaf.key.clone(),
            "holds no PEM certificate",
        ),
        (
            leaf.cert.clone(),
            "garbage".to_owned(),
            "holds no PEM private key",
        ),
        (leaf.cert.clone(), other.key.clone(), "does not match"),
    ];
    for (cert, key, says) in cases {
        files.write(&cert, &key);
        let e = ReloadingCert::load(files.files.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
    }
    let missing = TlsFiles {
        cert: files.files.cert.with_file_name("missing.pem"),
        key: files.files.key.clone(),
    };
    let e = ReloadingCert::load(missing).unwrap_err().to_string();
    assert!(
        e.contains("tls_cert_file") && e.contains("missing.pem"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_times_out_without_delaying_others() {
    use futures::StreamExt;
    let pki = Pki::new();
    let files = Files::new(&pki.leaf());
    let config = server_config(
        ReloadingCert::load(files.files.clone()).unwrap(),
        REST_ALPN,
        ClientAuth::None,
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut accepted = serve::incoming(listener, config, Duration::from_millis(300));
    // Connects and says nothing.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    let ok = tokio::spawn({
        let ca = pki.ca_pem();
        async move { connect(addr, &ca, &[b"h2"]).await }
    });
    let _server_side = accepted.next().await.unwrap().unwrap();
    ok.await.unwrap();
    // The server gives up on the silent one and closes it.
    let mut buf = [0u8; 1];
    assert_eq!(stalled.read(&mut buf).await.unwrap_or(0), 0);
}

#[test]
fn plaintext_beyond_loopback_is_flagged() {
    let exposed = |addr: &str, tls| plaintext_is_exposed(addr.parse().unwrap(), tls);
    assert!(!exposed("127.0.0.1:8080", false));
    assert!(!exposed("[::1]:8080", false));
    assert!(exposed("0.0.0.0:8080", false));
    assert!(exposed("[::]:18000", false));
    assert!(exposed("10.1.2.3:8080", false));
    assert!(!exposed("0.0.0.0:8080", true));
}

/// A client presenting `chain` and signing the handshake with `key` (of that chain, or not).
fn client_with_cert(ca_pem: &str, chain: &str, key: &str) -> Arc<ClientConfig> {
    use tokio_rustls::rustls::client::ResolvesClientCert;
    use tokio_rustls::rustls::pki_types::PrivateKeyDer;
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);
    impl ResolvesClientCert for Fixed {
        fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
        .unwrap();
    // `new`, unlike `from_der`, does not check that the key is the certificate's.
    let certified = CertifiedKey::new(chain, key);
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    Arc::new(config)
}

/// Serves one handshake on `config` per connection; reports the client's chain or the error.
async fn one_handshake(
    config: Arc<rustls::ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<Option<Vec<CertificateDer<'static>>>, std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
        Ok(tls.get_ref().1.peer_certificates().map(|c| c.to_vec()))
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    // The client may finish before the server has checked its certificate (TLS 1.3).
    let _client = TlsConnector::from(client)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    server.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_xds_port_takes_an_optional_client_certificate_whose_key_signs() {
    let pki = Pki::new();
    let files = Files::new(&pki.leaf());
    let cert = || ReloadingCert::load(files.files.clone()).unwrap();
    let xds = server_config(cert(), XDS_ALPN, ClientAuth::Deferred).unwrap();
    // Any CA's certificate passes the handshake (its chain is the xDS server's to judge).
    let (client_pki, other) = (Pki::new(), Pki::new());
    let (mine, someone_else) = (client_pki.leaf(), other.leaf());

    let none = one_handshake(xds.clone(), client_config(&pki.ca_pem(), &[b"h2"])).await;
    assert_eq!(none.unwrap(), None, "no certificate is required");
    let presented = one_handshake(
        xds.clone(),
        client_with_cert(&pki.ca_pem(), &mine.cert, &mine.key),
    )
    .await
    .unwrap();
    assert_eq!(presented, Some(vec![mine.der.clone()]));
    // A certificate whose key the client does not hold: the handshake fails.
    let stolen = one_handshake(
        xds.clone(),
        client_with_cert(&pki.ca_pem(), &mine.cert, &someone_else.key),
    )
    .await;
    assert!(stolen.is_err(), "{stolen:?}");

    // The REST port does not ask.
    let rest = server_config(cert(), REST_ALPN, ClientAuth::None).unwrap();
    let unasked = one_handshake(rest, client_with_cert(&pki.ca_pem(), &mine.cert, &mine.key)).await;
    assert_eq!(unasked.unwrap(), None);
}
