//! Mesh mTLS end to end, through the real binaries: a mesh in `strict` mode, a client sidecar
//! and a server sidecar (`switchboard-proxy`) with certificates from the mesh CA over SDS, and
//! a real app behind the server sidecar, all on 127.0.0.1.
//!
//! ```text
//! test (app) ──► client sidecar :outbound ══mTLS══► web-server sidecar :inbound ──► web app
//!     probes ──────────────────────────────────────► web-server sidecar :inbound (refused)
//! ```
//!
//! - strict mode refuses plaintext, a client without a certificate and a client whose
//!   certificate (with a SPIFFE ID of this very mesh) comes from another CA;
//! - with a 60 s certificate lifetime, 3 minutes of load lose no request while the server
//!   sidecar's certificate is renewed again and again;
//! - a CA rotation with a 20 s overlap, under load, loses no request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Backend, ControlPlane, Protocol, Proxy, backend, free_port, tail};
use switchboard_runtime::leaks;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use tokio_rustls::rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

const MESH: &str = "/v1/tenants/acme/meshes/prod";
const WEB_ID: &str = "spiffe://acme.switchboard.local/mesh/prod/service/web";
const CLIENT_ID: &str = "spiffe://acme.switchboard.local/mesh/prod/service/client";

struct Mesh {
    cp: ControlPlane,
    client: Proxy,
    server: Proxy,
    /// The client sidecar's outbound port (the app's HTTP proxy) and inbound port.
    outbound: u16,
    client_inbound: u16,
    /// The server sidecar's inbound port, where mesh mTLS is terminated.
    inbound: u16,
    app: Backend,
    token: PathBuf,
    dir: tempfile::TempDir,
}

impl Mesh {
    /// An HTTP client that uses the client sidecar as its HTTP proxy (`HTTP_PROXY`).
    fn app_client(&self) -> reqwest::Client {
        app_client(self.outbound)
    }

    fn logs(&self) -> String {
        [&self.cp.log, &self.client.log, &self.server.log]
            .iter()
            .map(|p| tail(p, 3000))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts another client sidecar (its own node, service `client`); its outbound port.
    async fn extra_client(&self, name: &str) -> (Proxy, u16) {
        let outbound = free_port();
        let meta = sidecar("client", free_port(), free_port(), outbound);
        let proxy = Proxy::start(&self.cp, self.dir.path(), &self.token, name, &meta).await;
        (proxy, outbound)
    }

    /// The CA view (`GET …/ca`).
    async fn ca(&self) -> Value {
        let (s, ca) = self
            .cp
            .call(reqwest::Method::GET, &format!("{MESH}/ca"), None)
            .await;
        assert_eq!(s, 200, "{ca}");
        ca
    }

    /// The serial of the certificate the proxies endpoint shows for `node`, if any.
    async fn serial(&self, node: &str) -> Option<String> {
        let path = format!("{MESH}/proxies/{node}");
        let (s, status) = self.cp.call(reqwest::Method::GET, &path, None).await;
        if s != 200 {
            return None;
        }
        certificate(&status)?["serial"].as_str().map(str::to_owned)
    }
}

/// The workload certificate a proxy's status shows (that of its first stream holding one).
fn certificate(status: &Value) -> Option<&Value> {
    status["streams"]
        .as_array()?
        .iter()
        .find_map(|s| s.get("certificate"))
}

fn app_client(outbound: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://127.0.0.1:{outbound}")).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn sidecar(service: &str, app: u16, inbound: u16, outbound: u16) -> Vec<(&'static str, String)> {
    vec![
        ("role", "sidecar".to_owned()),
        ("service", service.to_owned()),
        ("app_port", app.to_string()),
        ("inbound_port", inbound.to_string()),
        ("outbound_port", outbound.to_string()),
    ]
}

/// A mesh in strict mode with certificates valid `lifetime`, its two sidecars and the app.
/// The client sidecar authenticates with a JWT proxy token, the server's with an opaque one,
/// so that both kinds go through the log scan.
async fn strict_mesh(lifetime: &str) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let token = cp.tenant(dir.path()).await;
    let (s, b) = cp
        .call(
            reqwest::Method::PUT,
            MESH,
            Some(json!({"spec": {"mtls": {"mode": "strict", "certificateLifetime": lifetime}}})),
        )
        .await;
    assert_eq!(s, 200, "strict mode: {b}");

    let app = backend("web-app", Protocol::Http1).await;
    cp.put("services", "web", json!({"protocol": "http", "port": 80}))
        .await;
    cp.put(
        "services",
        "client",
        json!({"protocol": "http", "port": 80}),
    )
    .await;
    cp.put(
        "routes",
        "web",
        json!({"hostnames": ["web"], "rules": [{"backends": [{"service": "web"}]}]}),
    )
    .await;

    let inbound = free_port();
    let server = Proxy::start(
        &cp,
        dir.path(),
        &token,
        "web-server",
        &sidecar("web", app.port(), inbound, free_port()),
    )
    .await;
    // Registered as an endpoint of `web`, holding a certificate of the mesh CA.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, _) = cp
            .call(
                reqwest::Method::GET,
                &format!("{MESH}/endpoints/sidecar-web-server"),
                None,
            )
            .await;
        let (_, status) = cp
            .call(
                reqwest::Method::GET,
                &format!("{MESH}/proxies/web-server"),
                None,
            )
            .await;
        if s == 200 && certificate(&status).is_some_and(|c| c["spiffeId"] == WEB_ID) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web-server did not register with a certificate: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outbound = free_port();
    let client_inbound = free_port();
    let jwt = cp.proxy_token(dir.path(), "jwt-token", "jwt").await;
    let client = Proxy::start(
        &cp,
        dir.path(),
        &jwt,
        "client",
        &sidecar("client", free_port(), client_inbound, outbound),
    )
    .await;
    Mesh {
        cp,
        client,
        server,
        outbound,
        client_inbound,
        inbound,
        app,
        token,
        dir,
    }
}

/// One request through the client sidecar: `Ok` when the app answered 200, else the kind
/// of failure and an example.
async fn request(app: &reqwest::Client) -> Result<(), (String, String)> {
    match app.get("http://web/").send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await;
            match (status, body) {
                (200, Ok(b)) if b == "web-app" => Ok(()),
                (200, Ok(b)) => Err(("wrong body".into(), b)),
                (200, Err(e)) => Err(("body".into(), e.to_string())),
                (s, b) => Err((format!("status {s}"), b.unwrap_or_default())),
            }
        }
        Err(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "request"
            };
            Err((kind.into(), format!("{e:?}")))
        }
    }
}

/// Continuous load: `rps` requests a second, each on its own task, until stopped (or
/// `limit`, a bound for a test that fails before stopping it).
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Outcome>,
}

#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    /// Failures by kind: (count, one example).
    errors: BTreeMap<String, (usize, String)>,
}

impl Outcome {
    fn failed(&self) -> usize {
        self.errors.values().map(|(n, _)| n).sum()
    }
}

impl Load {
    fn start(app: reqwest::Client, rps: u32, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rps);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut requests = tokio::task::JoinSet::new();
            while !stopped.load(Ordering::Relaxed) && started.elapsed() < limit {
                tick.tick().await;
                let app = app.clone();
                requests.spawn(async move { request(&app).await });
            }
            let mut outcome = Outcome::default();
            while let Some(r) = requests.join_next().await {
                match r.unwrap() {
                    Ok(()) => outcome.ok += 1,
                    Err((kind, example)) => {
                        let e = outcome.errors.entry(kind).or_insert((0, example));
                        e.0 += 1;
                    }
                }
            }
            outcome
        });
        Load { stop, task }
    }

    async fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Accepts any server certificate, keeping it for the test to inspect: the probes below are
/// about what the server accepts, and the certificate it shows is checked afterwards.
#[derive(Debug)]
struct KeepServerCert {
    seen: Mutex<Option<CertificateDer<'static>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for KeepServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a TLS client got from a port: the server's certificate, and what came back for an
/// HTTP request (or why nothing did).
struct Probe {
    server_cert: Option<CertificateDer<'static>>,
    reply: Result<Vec<u8>, String>,
}

/// A TLS client at `127.0.0.1:port` presenting `identity` (chain and key) or no certificate,
/// sending one HTTP/1.1 request.
async fn tls_probe(
    port: u16,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Probe {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let keep = Arc::new(KeepServerCert {
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(keep.clone());
    let config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("web").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer and no close within 10 s".into()));
    let server_cert = keep.seen.lock().unwrap().take();
    Probe { server_cert, reply }
}

/// Plain HTTP at `127.0.0.1:port`: what came back before the connection closed.
async fn plaintext_probe(port: u16) -> Result<Vec<u8>, String> {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut reply = Vec::new();
        tcp.read_to_end(&mut reply)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(reply)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer and no close within 10 s".into()))
}

/// Whether `cert` chains to one of `roots_pem`.
fn chains_to(cert: &CertificateDer<'_>, roots_pem: &[&str]) -> bool {
    let mut roots = RootCertStore::empty();
    for pem in roots_pem {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let parsed = rustls::server::ParsedCertificate::try_from(cert).unwrap();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &[],
        UnixTime::now(),
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
    )
    .is_ok()
}

/// The URI SANs of `cert`.
fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

/// A CA that is not the mesh's, and a client certificate from it claiming the SPIFFE ID of
/// the mesh's `client` service.
fn foreign_identity() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "mesh prod CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::URI(CLIENT_ID.try_into().unwrap())];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (
        vec![cert.der().clone(), ca_cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_mode_refuses_plaintext_and_certificates_of_other_cas() {
    let m = strict_mesh("24h").await;
    let app = m.app_client();

    // Through the sidecars, over mTLS, to the app.
    for _ in 0..20 {
        assert_eq!(request(&app).await, Ok(()), "{}", m.logs());
    }
    let served = m.app.hits.load(Ordering::Relaxed);
    assert_eq!(served, 20);

    // The inbound port speaks TLS with the server's mesh certificate.
    let root = m.ca().await["active"]["rootPem"]
        .as_str()
        .unwrap()
        .to_owned();
    let no_cert = tls_probe(m.inbound, None).await;
    let shown = no_cert
        .server_cert
        .as_ref()
        .expect("the server's certificate");
    assert_eq!(uri_sans(shown), [WEB_ID]);
    assert!(chains_to(shown, &[&root]), "not issued by the mesh CA");

    // Refused: a client without a certificate (TLS 1.3: the alert follows the handshake) ...
    assert!(
        matches!(&no_cert.reply, Err(e) if e.contains("alert")),
        "a client without a certificate got an answer: {:?}",
        no_cert.reply
    );
    // ... one whose certificate names a service of this mesh but comes from another CA ...
    let foreign = tls_probe(m.inbound, Some(foreign_identity())).await;
    assert!(
        matches!(&foreign.reply, Err(e) if e.contains("alert")),
        "a certificate of another CA got an answer: {:?}",
        foreign.reply
    );
    // ... and plaintext HTTP (answered with a TLS alert record at most).
    let plain = plaintext_probe(m.inbound).await;
    assert!(
        !matches!(&plain, Ok(b) if b.starts_with(b"HTTP/")),
        "plaintext got an HTTP answer: {plain:?}"
    );
    assert_eq!(
        m.app.hits.load(Ordering::Relaxed),
        served,
        "a refused client reached the app"
    );
    eprintln!(
        "refused: no certificate ({:?}), another CA ({:?}), plaintext ({:?})",
        no_cert
            .reply
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        foreign
            .reply
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        plain.map(|b| String::from_utf8_lossy(&b).into_owned())
    );

    // The sidecars still serve after the refusals.
    assert_eq!(request(&app).await, Ok(()));
    assert_eq!(m.app.hits.load(Ordering::Relaxed), served + 1);

    refused_credentials_are_not_logged(&m).await;
}

/// Sidecars with a revoked opaque token and with a forged JWT are refused on the xDS port;
/// both ends log the refusal, and the scan of every log when the processes stop checks that
/// neither logged the credential itself.
async fn refused_credentials_are_not_logged(m: &Mesh) {
    let (s, b) =
        m.cp.call(
            reqwest::Method::POST,
            "/v1/tenants/acme/proxy-tokens",
            Some(json!({"description": "revoked", "mesh": "prod"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let revoked = b["secret"].as_str().unwrap().to_owned();
    leaks::remember("revoked proxy token", &revoked);
    let path = format!(
        "/v1/tenants/acme/proxy-tokens/{}",
        b["id"].as_str().unwrap()
    );
    let (s, b) = m.cp.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(s, 204, "{b}");
    let revoked_file = m.dir.path().join("revoked-token");
    std::fs::write(&revoked_file, &revoked).unwrap();

    // A JWT of this control plane with one character of its signature changed.
    let jwt = std::fs::read_to_string(m.dir.path().join("jwt-token")).unwrap();
    let mut forged = jwt.trim().to_owned().into_bytes();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    leaks::remember("forged JWT", &forged);
    let forged_file = m.dir.path().join("forged-token");
    std::fs::write(&forged_file, &forged).unwrap();

    let mut refused = Vec::new();
    for (name, token) in [("revoked", &revoked_file), ("forged", &forged_file)] {
        let meta = sidecar("client", free_port(), free_port(), free_port());
        refused.push(Proxy::spawn(&m.cp, m.dir.path(), token, name, &meta));
    }
    for proxy in &refused {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
            if log.contains("xDS stream failed") && log.contains("valid authentication credentials")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no refusal in the proxy's log; its xDS stream lines:\n{}",
                log.lines()
                    .filter(|l| l.contains("xDS stream"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_ne!(
            reqwest::get(format!("{}/ready", proxy.admin))
                .await
                .map(|r| r.status().as_u16())
                .ok(),
            Some(200)
        );
    }
}

/// Three minutes at 20 requests a second with 60 s certificates: the server sidecar's
/// certificate is renewed at least twice, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewal_under_load_loses_no_request() {
    const LOAD: Duration = Duration::from_secs(180);
    let m = strict_mesh("60s").await;
    let app = m.app_client();
    assert_eq!(request(&app).await, Ok(()), "{}", m.logs());

    let load = Load::start(app, 20, LOAD + Duration::from_secs(30));
    let started = Instant::now();
    let mut serials = BTreeSet::new();
    while started.elapsed() < LOAD {
        if let Some(s) = m.serial("web-server").await {
            serials.insert(s);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let outcome = load.finish().await;
    assert_eq!(
        outcome.failed(),
        0,
        "{} of {} requests failed: {:?}\n{}",
        outcome.failed(),
        outcome.ok + outcome.failed(),
        outcome.errors,
        m.logs()
    );
    assert!(outcome.ok > 0);
    assert!(
        serials.len() >= 3,
        "the server's certificate changed {} times in {LOAD:?}: {serials:?}",
        serials.len().saturating_sub(1)
    );

    // A new client sidecar handshakes with the renewed certificates.
    let (_fresh, outbound) = m.extra_client("client-2").await;
    assert_eq!(request(&app_client(outbound)).await, Ok(()));
    eprintln!(
        "renewal: {} requests, none failed; {} server certificates in {LOAD:?}",
        outcome.ok,
        serials.len()
    );
}

/// A CA rotation with a 20 s overlap under load: both sidecars move to certificates of the
/// new CA, the rotation completes, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ca_rotation_under_load_loses_no_request() {
    let m = strict_mesh("24h").await;
    let app = m.app_client();
    assert_eq!(request(&app).await, Ok(()), "{}", m.logs());
    let old_root = m.ca().await["active"]["rootPem"]
        .as_str()
        .unwrap()
        .to_owned();

    let load = Load::start(app, 20, Duration::from_secs(180));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (s, ca) =
        m.cp.call(
            reqwest::Method::POST,
            &format!("{MESH}/ca/rotation"),
            Some(json!({"overlap": "20s"})),
        )
        .await;
    assert_eq!(s, 200, "{ca}");
    assert_eq!(ca["rotation"]["phase"], "overlap", "{ca}");
    let new_root = ca["active"]["rootPem"].as_str().unwrap().to_owned();
    assert_ne!(new_root, old_root);
    assert_eq!(ca["trustBundle"]["rootsPem"].as_array().unwrap().len(), 2);

    // Both sidecars present certificates of the new CA (the renewal follows the signer).
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, port) in [("web-server", m.inbound), ("client", m.client_inbound)] {
        loop {
            let shown = tls_probe(port, None).await.server_cert;
            if shown.as_ref().is_some_and(|c| chains_to(c, &[&new_root])) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still shows a certificate of the old CA\n{}",
                m.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // Complete once the overlap is over.
    let deadline = Instant::now() + Duration::from_secs(40);
    while m.ca().await["rotation"]["phase"] != "ready-to-complete" {
        assert!(Instant::now() < deadline, "the overlap never ended");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (s, ca) =
        m.cp.call(
            reqwest::Method::POST,
            &format!("{MESH}/ca/rotation/complete"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{ca}");
    assert!(ca.get("rotation").is_none(), "{ca}");
    assert_eq!(ca["trustBundle"]["rootsPem"], json!([new_root]));

    tokio::time::sleep(Duration::from_secs(10)).await;
    let outcome = load.finish().await;
    assert_eq!(
        outcome.failed(),
        0,
        "{} of {} requests failed: {:?}\n{}",
        outcome.failed(),
        outcome.ok + outcome.failed(),
        outcome.errors,
        m.logs()
    );
    assert!(outcome.ok > 0);

    // After the rotation: the server's certificate is of the new CA only, and a new client
    // sidecar (trusting only the new root) gets through.
    let shown = tls_probe(m.inbound, None).await.server_cert.unwrap();
    assert!(chains_to(&shown, &[&new_root]) && !chains_to(&shown, &[&old_root]));
    let (_fresh, outbound) = m.extra_client("client-2").await;
    assert_eq!(request(&app_client(outbound)).await, Ok(()), "{}", m.logs());
    eprintln!("rotation: {} requests, none failed", outcome.ok);
}
