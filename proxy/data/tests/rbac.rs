//! RBAC end to end: a hand-driven ADS server configures the real xDS client with an inbound
//! listener that terminates TLS and verifies client certificates (a CA and SPIFFE client
//! certificates made by rcgen here), and real clients call through it over 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unused_imports)] // the fixtures this file does not use
mod listener_support;
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use switchboard_proxy_data::ClusterManager;
use switchboard_proxy_data::telemetry::{self, ACCESS_LOG_TARGET, AccessLog, RBAC_DENIED_TOTAL};
use switchboard_proxy_xds::testing::rbac::*;
use switchboard_proxy_xds::testing::resources::{eds_cluster, load_assignment};
use switchboard_proxy_xds::testing::{AdsServer, response};
use switchboard_proxy_xds::{
    AdsConfig, ApiType, Bootstrap, ClientOptions, ConfigStore, XdsClient, XdsClientHandle,
};
use switchboard_xds_proto::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source, transport_socket,
};
use switchboard_xds_proto::pb::envoy::config::listener::v3::Listener as PbListener;
use switchboard_xds_proto::pb::envoy::config::rbac::v3::rbac::Action;
use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    common_tls_context,
};
use switchboard_xds_proto::pb::google::protobuf::BoolValue;
use switchboard_xds_proto::{pack, type_url};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

const A: &str = "spiffe://switchboard.local/ns/prod/sa/a";
const C: &str = "spiffe://switchboard.local/ns/prod/sa/c";

/// Access log lines of this binary: test id, status, `%RESPONSE_CODE_DETAILS%`.
fn access_log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        telemetry::set_access_log(
            AccessLog::parse("%REQ(X-TEST-ID)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%").unwrap(),
        );
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let layer = tracing_subscriber::fmt::layer()
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .with_writer(move || Buffer(sink.clone()))
            .with_filter(Targets::new().with_target(ACCESS_LOG_TARGET, tracing::Level::INFO));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .unwrap();
        listener_support::metrics();
        logs
    })
}

struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The access log line of the request sent with `x-test-id: id`, waiting for it (it is
/// written when the response body ends).
async fn log_line(id: &str) -> String {
    let prefix = format!("{id} ");
    switchboard_runtime::eventually(&format!("the access log line of {id}"), || {
        let line = String::from_utf8_lossy(&access_log().lock().unwrap())
            .lines()
            .find(|l| l.starts_with(&prefix))
            .map(str::to_owned);
        async move { line }
    })
    .await
}

/// A CA, the proxy's server certificate (localhost) and client certificates by SPIFFE ID.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    server_cert: String,
    server_key: String,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Self {
            server_cert: cert.pem(),
            server_key: key.serialize_pem(),
            ca,
        }
    }

    /// A client configuration presenting a certificate whose URI SAN is `spiffe_id`
    /// (`None`: no client certificate).
    fn client(&self, spiffe_id: Option<&str>) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca.pem().as_bytes()).unwrap())
            .unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let Some(id) = spiffe_id else {
            return builder.with_no_client_auth();
        };
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        builder
            .with_client_auth_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap()
    }

    /// The listener's TLS: this CA's server certificate, client certificates verified
    /// against the CA and required.
    fn transport_socket(&self) -> TransportSocket {
        let inline = |s: &str| {
            Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(s.to_owned())),
                ..Default::default()
            })
        };
        let ctx = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: inline(&self.server_cert),
                    private_key: inline(&self.server_key),
                    ..Default::default()
                }],
                validation_context_type: Some(
                    common_tls_context::ValidationContextType::ValidationContext(
                        CertificateValidationContext {
                            trusted_ca: inline(&self.ca.pem()),
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }),
            require_client_certificate: Some(BoolValue { value: true }),
            ..Default::default()
        };
        TransportSocket {
            name: "envoy.transport_sockets.tls".to_owned(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&ctx))),
        }
    }
}

/// The proxy, configured over ADS, serving listener `in` on 127.0.0.1:0.
struct Proxy {
    ads: AdsServer,
    client: XdsClientHandle,
    addr: SocketAddr,
    lds_version: u32,
}

impl Proxy {
    /// Pushes cluster `app` (a backend answering `app`) and `listener`, then serves it.
    async fn start(listener: PbListener) -> Self {
        access_log();
        let app = support::backend("app").await;
        let mut ads = AdsServer::start().await.unwrap();
        let bootstrap = Bootstrap {
            xds_address: ads.url(),
            node_id: "tenants/acme/meshes/prod/nodes/b-1".to_owned(),
            metadata: [("role".to_owned(), "sidecar".to_owned())].into(),
            token_file: None,
            xds_ca_file: None,
            xds_client_cert_file: None,
            xds_client_key_file: None,
            ads_config: AdsConfig {
                api_type: Some(ApiType::Grpc),
            },
        };
        let store = ConfigStore::new();
        let client = XdsClient::new(bootstrap, &store, ClientOptions::default()).spawn();
        ads.next_of(type_url::CLUSTER).await.unwrap();
        assert!(ads.respond(response(
            type_url::CLUSTER,
            "c1",
            "n1",
            vec![pack(&eds_cluster("app"))]
        )));
        ads.next_of(type_url::CLUSTER_LOAD_ASSIGNMENT)
            .await
            .unwrap();
        assert!(ads.respond(response(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            "e1",
            "n2",
            vec![pack(&load_assignment("app", &[app]))]
        )));
        let mut proxy = Self {
            ads,
            client,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lds_version: 0,
        };
        proxy.push(listener).await;
        tokio::time::timeout(Duration::from_secs(10), proxy.client.ready())
            .await
            .expect("the client became ready");
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        proxy.addr = tcp.local_addr().unwrap();
        tokio::spawn(switchboard_proxy_data::serve(
            tcp,
            "in",
            store,
            Arc::new(ClusterManager::new()),
        ));
        proxy
    }

    /// Pushes a new version of the listener and waits for its ACK.
    async fn push(&mut self, listener: PbListener) {
        self.lds_version += 1;
        let version = format!("l{}", self.lds_version);
        assert!(self.ads.respond(response(
            type_url::LISTENER,
            &version,
            &format!("ln{}", self.lds_version),
            vec![pack(&listener)]
        )));
        loop {
            let req = self.ads.next_of(type_url::LISTENER).await.unwrap().request;
            assert!(req.error_detail.is_none(), "NACK: {:?}", req.error_detail);
            if req.version_info == version {
                return;
            }
        }
    }
}

/// An HTTP/1.1 connection to the proxy, over TLS with `config` or plaintext.
async fn connect(addr: SocketAddr, config: Option<ClientConfig>) -> SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let Some(config) = config else {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        return send;
    };
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// Sends `method path` with `x-test-id: id`; returns the status and body.
async fn call(
    send: &mut SendRequest<Empty<Bytes>>,
    method: &str,
    path: &str,
    id: &str,
) -> (StatusCode, String) {
    send.ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app")
        .header("x-test-id", id)
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn denied_count(policy: &str) -> f64 {
    listener_support::metric(
        RBAC_DENIED_TOTAL,
        &[("listener", "in"), ("filter", "http"), ("policy", policy)],
    )
    .unwrap_or(0.0)
}

fn allow(name: &str, id: &str) -> switchboard_xds_proto::pb::envoy::config::rbac::v3::Rbac {
    rules(
        Action::Allow,
        vec![(
            name,
            policy(vec![any_permission()], vec![authenticated(exact(id))]),
        )],
    )
}

fn tls_http(pki: &Pki, filters: Vec<HttpFilter>) -> PbListener {
    inbound_http_listener("in", 15006, "app", filters, Some(pki.transport_socket()))
}

#[tokio::test]
async fn allow_policy_admits_its_identity_and_denies_others_with_the_policy_named() {
    let pki = Pki::new();
    let proxy = Proxy::start(tls_http(&pki, vec![http_rbac_filter(allow("a-only", A))])).await;
    let mut a = connect(proxy.addr, Some(pki.client(Some(A)))).await;
    assert_eq!(
        call(&mut a, "GET", "/", "allow-a").await,
        (StatusCode::OK, "app".into())
    );

    let before = denied_count("none");
    let mut c = connect(proxy.addr, Some(pki.client(Some(C)))).await;
    assert_eq!(
        call(&mut c, "GET", "/", "allow-c").await,
        (StatusCode::FORBIDDEN, "RBAC: access denied".into())
    );
    assert_eq!(
        log_line("allow-c").await,
        "allow-c 403 rbac_access_denied_matched_policy[none]"
    );
    assert_eq!(log_line("allow-a").await, "allow-a 200 via_upstream");
    assert!(denied_count("none") >= before + 1.0);
}

#[tokio::test]
async fn deny_policy_names_itself_and_lets_others_through() {
    let pki = Pki::new();
    let deny = rules(
        Action::Deny,
        vec![(
            "deny-a",
            policy(vec![any_permission()], vec![authenticated(exact(A))]),
        )],
    );
    let proxy = Proxy::start(tls_http(&pki, vec![http_rbac_filter(deny)])).await;
    let mut a = connect(proxy.addr, Some(pki.client(Some(A)))).await;
    assert_eq!(
        call(&mut a, "GET", "/", "deny-a").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        log_line("deny-a").await,
        "deny-a 403 rbac_access_denied_matched_policy[deny-a]"
    );
    assert!(denied_count("deny-a") >= 1.0);
    let mut c = connect(proxy.addr, Some(pki.client(Some(C)))).await;
    assert_eq!(call(&mut c, "GET", "/", "deny-c").await.0, StatusCode::OK);
}

#[tokio::test]
async fn path_and_method_narrow_an_allow_policy_and_deny_runs_first() {
    let pki = Pki::new();
    let reads = rules(
        Action::Allow,
        vec![(
            "a-reads-api",
            policy(
                vec![and_rules(vec![url_path(prefix("/api/")), method("GET")])],
                vec![authenticated(prefix("spiffe://switchboard.local/ns/prod/"))],
            ),
        )],
    );
    let deny_c_admin = rules(
        Action::Deny,
        vec![(
            "no-c-admin",
            policy(
                vec![url_path(prefix("/api/admin"))],
                vec![authenticated(exact(C))],
            ),
        )],
    );
    let proxy = Proxy::start(tls_http(
        &pki,
        vec![http_rbac_filter(deny_c_admin), http_rbac_filter(reads)],
    ))
    .await;
    let mut a = connect(proxy.addr, Some(pki.client(Some(A)))).await;
    assert_eq!(
        call(&mut a, "GET", "/api/x", "narrow-1").await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&mut a, "POST", "/api/x", "narrow-2").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&mut a, "GET", "/other", "narrow-3").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&mut a, "GET", "/api/admin", "narrow-4").await.0,
        StatusCode::OK
    );
    let mut c = connect(proxy.addr, Some(pki.client(Some(C)))).await;
    assert_eq!(
        call(&mut c, "GET", "/api/admin", "narrow-5").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        log_line("narrow-5").await,
        "narrow-5 403 rbac_access_denied_matched_policy[no-c-admin]"
    );
    assert_eq!(
        call(&mut c, "GET", "/api/x", "narrow-6").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn allow_without_policies_denies_everything() {
    let pki = Pki::new();
    let nothing = rules(Action::Allow, vec![]);
    let proxy = Proxy::start(tls_http(&pki, vec![http_rbac_filter(nothing)])).await;
    let mut a = connect(proxy.addr, Some(pki.client(Some(A)))).await;
    assert_eq!(
        call(&mut a, "GET", "/", "default-deny").await,
        (StatusCode::FORBIDDEN, "RBAC: access denied".into())
    );
}

#[tokio::test]
async fn a_plaintext_caller_is_not_authenticated() {
    let proxy = Proxy::start(inbound_http_listener(
        "in",
        15006,
        "app",
        vec![http_rbac_filter(allow("a-only", A))],
        None,
    ))
    .await;
    let mut plain = connect(proxy.addr, None).await;
    assert_eq!(
        call(&mut plain, "GET", "/", "plain").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        log_line("plain").await,
        "plain 403 rbac_access_denied_matched_policy[none]"
    );
}

#[tokio::test]
async fn a_pushed_policy_applies_to_the_next_request_on_an_open_connection() {
    let pki = Pki::new();
    let mut proxy = Proxy::start(tls_http(&pki, vec![http_rbac_filter(allow("a-only", A))])).await;
    let mut c = connect(proxy.addr, Some(pki.client(Some(C)))).await;
    assert_eq!(
        call(&mut c, "GET", "/", "push-1").await.0,
        StatusCode::FORBIDDEN
    );
    proxy
        .push(tls_http(&pki, vec![http_rbac_filter(allow("c-too", C))]))
        .await;
    // The same connection (and TLS session): the next request sees the new policy.
    assert_eq!(call(&mut c, "GET", "/", "push-2").await.0, StatusCode::OK);
    proxy.push(tls_http(&pki, vec![])).await;
    assert_eq!(call(&mut c, "GET", "/", "push-3").await.0, StatusCode::OK);
}

#[tokio::test]
async fn network_rbac_closes_denied_tcp_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let echo = listener_support::echo_backend().await;
    let listener = inbound_tcp_listener(
        "in",
        15006,
        "app",
        vec![network_rbac_filter(allow("a-only", A))],
        Some(pki.transport_socket()),
    );
    let proxy = Proxy::start(listener).await;
    // The cluster now points at an echo server instead of the HTTP backend.
    assert!(proxy.ads.respond(response(
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        "e2",
        "n9",
        vec![pack(&load_assignment("app", &[echo]))]
    )));
    let before = listener_support::metric(
        RBAC_DENIED_TOTAL,
        &[
            ("listener", "in"),
            ("filter", "network"),
            ("policy", "none"),
        ],
    )
    .unwrap_or(0.0);

    let connector = |id| TlsConnector::from(Arc::new(pki.client(Some(id))));
    let mut c = connector(C)
        .connect(
            ServerName::try_from("localhost").unwrap(),
            TcpStream::connect(proxy.addr).await.unwrap(),
        )
        .await
        .unwrap();
    let _ = c.write_all(b"ping").await;
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("the denied connection was closed");
    assert!(matches!(read, Ok(0) | Err(_)), "C got data: {read:?}");
    let after = listener_support::metric(
        RBAC_DENIED_TOTAL,
        &[
            ("listener", "in"),
            ("filter", "network"),
            ("policy", "none"),
        ],
    )
    .unwrap();
    assert!(after >= before + 1.0);

    // A is let through; the relay may still be connecting to the new endpoint.
    let (a_connector, addr) = (connector(A), proxy.addr);
    let got = switchboard_runtime::eventually("A's bytes echoed", || {
        let a_connector = a_connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await.ok()?;
            let mut a = a_connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .ok()?;
            a.write_all(b"ping").await.ok()?;
            let mut buf = [0u8; 4];
            a.read_exact(&mut buf).await.ok()?;
            Some(buf)
        }
    })
    .await;
    assert_eq!(&got, b"ping");
}
