//! Client certificates on the xDS port of the built `switchboard serve` (TLS on both ports, a
//! server certificate made here by rcgen), and credential expiry ending streams:
//! - a workload certificate issued by the mesh CA (taken from a sidecar's SDS `default`
//!   secret, written to files) authenticates, without a token: a tonic ADS client gets its
//!   configuration and its own `default` secret; the `switchboard-proxy` binary, with the
//!   bootstrap `switchboard bootstrap proxy --xds-client-cert-file …` prints, gets ready
//!   (which needs its secrets); grpcio with A65 `tls` channel credentials naming
//!   `certificate_file`/`private_key_file` calls through the mesh;
//! - a certificate of another tenant's CA, an expired one, and no credentials at all are
//!   UNAUTHENTICATED; a node claiming another service than its certificate's is
//!   PERMISSION_DENIED, naming both; with a token and a certificate, the token decides;
//! - during a CA rotation's overlap a certificate of the old root keeps its stream; once the
//!   rotation completes, that stream ends with UNAUTHENTICATED;
//! - a stream admitted by a JWT ends with UNAUTHENTICATED at the JWT's `exp`.
//!
//! The grpcio part needs `SWITCHBOARD_TEST_PYTHON` (scripts/lib/peers.sh) and skips without
//! it unless `SWITCHBOARD_REQUIRE_PEERS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use switchboard_xds_proto::pb::envoy::config::core::v3::data_source::Specifier;
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use switchboard_xds_proto::{type_url, unpack};
use switchboard_xds_server::testing::{AdsClient, node, with_metadata};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use common::tail;
use common::tls::{Https, certificates};

const ADMIN: &str = "xds-client-cert-test-admin-token";

impl Https {
    /// A proxy token of `tenant` (`format`: opaque or jwt): its secret and id.
    async fn token(&self, tenant: &str, body: Value) -> (String, String) {
        let (status, r) = self
            .call("POST", &format!("/v1/tenants/{tenant}/proxy-tokens"), body)
            .await;
        assert_eq!(status, 201, "{r}");
        (
            r["secret"].as_str().unwrap().to_owned(),
            r["id"].as_str().unwrap().to_owned(),
        )
    }
}

/// A running control plane with TLS, tenants `acme` and `globex` each with mesh `prod`
/// (service `pay`, and for gRPC `v1` behind route `payments:8080`).
struct Env {
    dir: tempfile::TempDir,
    server: common::Server,
    log: PathBuf,
    api: Https,
    ca: PathBuf,
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ca, cert, key) = certificates(d);
        let log = d.join("switchboard.log");
        let data = d.join("data");
        let server = common::start(
            d,
            &[
                "--admin-token",
                ADMIN,
                "--data-dir",
                data.to_str().unwrap(),
                "--tls-cert-file",
                cert.to_str().unwrap(),
                "--tls-key-file",
                key.to_str().unwrap(),
                "--log-format",
                "json",
                "--log-level",
                "debug,h2=info,hyper=info,sqlx=warn,rustls=info,tower=info",
            ],
            Some(&log),
        )
        .await;
        let api = Https::new(&server.rest, &ca, ADMIN);
        for tenant in ["acme", "globex"] {
            let (status, r) = api
                .call("POST", "/v1/tenants", json!({"name": tenant}))
                .await;
            assert_eq!(status, 201, "{r}");
            let m = format!("/v1/tenants/{tenant}/meshes/prod");
            api.put(&m, json!({"spec": {}})).await;
            api.put(
                &format!("{m}/services/pay"),
                json!({"spec": {"protocol": "http", "port": 8080}}),
            )
            .await;
        }
        Env {
            dir,
            server,
            log,
            api,
            ca,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A TLS channel to the xDS port, presenting `identity` if given.
    async fn channel(&self, identity: Option<&Workload>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&self.ca).unwrap()))
            .domain_name("localhost");
        if let Some(w) = identity {
            tls = tls.identity(Identity::from_pem(&w.chain, &w.key));
        }
        Endpoint::from_shared(format!("https://{}", self.server.xds_addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// An ADS stream of a sidecar of `service` named `name` in `tenant`'s mesh `prod`.
    async fn sidecar(
        &self,
        tenant: &str,
        name: &str,
        service: &str,
        identity: Option<&Workload>,
        token: Option<&str>,
    ) -> Result<AdsClient, tonic::Status> {
        let node = with_metadata(
            node(tenant, "prod", name),
            &[
                ("role", "sidecar"),
                ("service", service),
                ("app_port", "8080"),
            ],
        );
        AdsClient::over(self.channel(identity).await, node, token).await
    }

    /// The `default` certificate the mesh CA issues to a sidecar of `pay` in `tenant`'s mesh,
    /// over SDS with a proxy token.
    async fn workload(&self, tenant: &str) -> Workload {
        let (token, _) = self.api.token(tenant, json!({"mesh": "prod"})).await;
        let mut ads = self
            .sidecar(
                tenant,
                &format!("issuer-{tenant}"),
                "pay",
                None,
                Some(&token),
            )
            .await
            .unwrap();
        ads.subscribe(type_url::SECRET, &["default"]).await.unwrap();
        default_secret(&mut ads).await
    }
}

/// A workload certificate chain and key, as PEM.
#[derive(Clone)]
struct Workload {
    chain: String,
    key: String,
}

impl Workload {
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert, &self.chain).unwrap();
        std::fs::write(&key, &self.key).unwrap();
        (cert, key)
    }
}

fn text(source: Option<switchboard_xds_proto::pb::envoy::config::core::v3::DataSource>) -> String {
    match source.and_then(|s| s.specifier) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b).unwrap(),
        Some(Specifier::InlineString(s)) => s,
        other => panic!("not inline: {other:?}"),
    }
}

/// Waits for the `default` secret on `ads` (ACKing what comes) and returns it.
async fn default_secret(ads: &mut AdsClient) -> Workload {
    loop {
        let response = ads.recv().await.unwrap();
        ads.ack(&response, &["default"]).await.unwrap();
        if response.type_url != type_url::SECRET {
            continue;
        }
        for any in &response.resources {
            let s: Secret = unpack(any).unwrap();
            if s.name != "default" {
                continue;
            }
            let Some(secret::Type::TlsCertificate(tls)) = s.r#type else {
                panic!("default is not a TLS certificate");
            };
            return Workload {
                chain: text(tls.certificate_chain),
                key: text(tls.private_key),
            };
        }
    }
}

/// A certificate of the right shape for acme/prod/pay that expired an hour ago (a CA made
/// here: the expiry is checked, and reported, before the chain).
fn expired() -> Workload {
    let two_hours_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    let ca = switchboard_pki::MeshCa::generate("acme", "prod", two_hours_ago).unwrap();
    let id = "spiffe://acme.switchboard.local/mesh/prod/service/pay";
    let issued = ca
        .issue(id, Duration::from_secs(3600), two_hours_ago)
        .unwrap();
    Workload {
        chain: issued.chain_pem,
        key: issued.private_key_pem.to_string(),
    }
}

/// The stream's first answer: Ok once a response arrives, or the status that refused it.
async fn first_response(ads: Result<AdsClient, tonic::Status>) -> Result<(), tonic::Status> {
    let mut ads = ads?;
    ads.subscribe(type_url::CLUSTER, &[]).await?;
    ads.recv().await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_certificate_authenticates_on_the_xds_port() {
    let env = Env::start().await;
    let pay = env.workload("acme").await;
    assert!(pay.chain.contains("BEGIN CERTIFICATE") && pay.key.contains("PRIVATE KEY"));

    // The certificate alone: configuration, and the sidecar's own `default` secret.
    let mut ads = env
        .sidecar("acme", "pay-cert", "pay", Some(&pay), None)
        .await
        .unwrap();
    ads.subscribe(type_url::CLUSTER, &[]).await.unwrap();
    let clusters = ads.recv().await.unwrap();
    assert_eq!(clusters.type_url, type_url::CLUSTER);
    ads.subscribe(type_url::SECRET, &["default"]).await.unwrap();
    let own = default_secret(&mut ads).await;
    assert!(own.chain.contains("BEGIN CERTIFICATE"));

    // Refused: another tenant's CA, an expired certificate, nothing at all.
    let globex = env.workload("globex").await;
    let status = first_response(
        env.sidecar("acme", "foreign", "pay", Some(&globex), None)
            .await,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("not issued by the CA of mesh"),
        "{status:?}"
    );
    let status = first_response(
        env.sidecar("acme", "old", "pay", Some(&expired()), None)
            .await,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    let status = first_response(env.sidecar("acme", "nobody", "pay", None, None).await)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // A node claiming another service than its certificate's.
    let status = first_response(
        env.sidecar("acme", "liar", "billing", Some(&pay), None)
            .await,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("\"pay\"") && status.message().contains("\"billing\""),
        "{status:?}"
    );

    // A token and a certificate: the token decides (here, despite a foreign certificate).
    let (token, _) = env.api.token("acme", json!({"mesh": "prod"})).await;
    first_response(
        env.sidecar("acme", "both", "pay", Some(&globex), Some(&token))
            .await,
    )
    .await
    .unwrap();

    // The switchboard-proxy binary with the certificate and no token: ready means its
    // listeners, clusters and secrets arrived.
    let (cert_file, key_file) = pay.write(env.dir.path(), "pay");
    let admin = common::free_port();
    let bootstrap = env.path("proxy.yaml");
    let out = std::process::Command::new(common::BIN)
        .args(["bootstrap", "proxy", "--tenant", "acme", "--mesh", "prod"])
        .args([
            "--node",
            "pay-proxy",
            "--role",
            "sidecar",
            "--service",
            "pay",
        ])
        .args(["--app-port", "8080"])
        .args(["--inbound-port", &common::free_port().to_string()])
        .args(["--outbound-port", &common::free_port().to_string()])
        .args(["--xds-address", &format!("https://{}", env.server.xds_addr)])
        .args(["--xds-ca-file", env.ca.to_str().unwrap()])
        .args(["--xds-client-cert-file", cert_file.to_str().unwrap()])
        .args(["--xds-client-key-file", key_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&bootstrap, &out.stdout).unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("token_file"));
    let proxy_log = env.path("proxy.log");
    let mut proxy = Command::new(proxy_binary())
        .args(["--bootstrap", bootstrap.to_str().unwrap()])
        .args(["--admin-address", &format!("127.0.0.1:{admin}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&proxy_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{admin}/ready"))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not get ready with its client certificate\n{}\n{}",
            tail(&proxy_log, 4000),
            tail(&env.log, 4000)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dump: Value = http
        .get(format!("http://127.0.0.1:{admin}/config_dump"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dump = dump.to_string();
    assert!(
        dump.contains("dynamic_active_secrets") && dump.contains("\"default\""),
        "{dump}"
    );
    // The control plane shows the certificate it sent the proxy (the status table follows
    // the streams within a sync or two).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, shown) = env
            .api
            .call(
                "GET",
                "/v1/tenants/acme/meshes/prod/proxies/pay-proxy",
                Value::Null,
            )
            .await;
        // 404 until the status table has caught up with the new stream.
        assert!(status == 200 || status == 404, "{status} {shown}");
        if status == 200
            && shown
                .to_string()
                .contains("spiffe://acme.switchboard.local/mesh/prod/service/pay")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate shown: {status} {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.kill().await.unwrap();

    // No workload key reached the control plane's logs.
    drop(env.server);
    let logged = std::fs::read_to_string(&env.log).unwrap();
    for w in [&pay, &own, &globex] {
        let body = w.key.lines().nth(1).unwrap();
        assert!(!logged.contains(body), "a workload key was logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_rotation_ends_the_streams_of_the_old_roots_certificates() {
    let env = Env::start().await;
    let old = env.workload("acme").await;
    let mut ads = env
        .sidecar("acme", "pay-rot", "pay", Some(&old), None)
        .await
        .unwrap();
    ads.subscribe(type_url::SECRET, &["ROOTCA"]).await.unwrap();
    let first = ads.recv_and_ack(&["ROOTCA"]).await.unwrap();
    assert_eq!(first.type_url, type_url::SECRET);

    // During the overlap both roots are trusted: the stream stays and gets the new bundle.
    let rotation = "/v1/tenants/acme/meshes/prod/ca/rotation";
    let (status, r) = env
        .api
        .call("POST", rotation, json!({"overlap": "1h"}))
        .await;
    assert!(status == 200 || status == 201, "{status} {r}");
    let next = ads.recv_and_ack(&["ROOTCA"]).await.unwrap();
    assert_eq!(next.type_url, type_url::SECRET);
    assert_ne!(next.version_info, first.version_info);

    // Completed, the old root goes: the stream of its certificate ends.
    let (status, r) = env
        .api
        .call(
            "POST",
            &format!("{rotation}/complete?force=true"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let ended = ads.ended().await;
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert!(
        ended.message().contains("not issued by the CA of mesh"),
        "{ended:?}"
    );
    // A certificate of the new CA authenticates.
    let new = env.workload("acme").await;
    first_response(
        env.sidecar("acme", "pay-new", "pay", Some(&new), None)
            .await,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_stream_ends_at_its_exp() {
    let env = Env::start().await;
    // A JWT the control plane would issue, but with a 3 s lifetime (the API's minimum is a
    // minute): the same key, credential and claims, signed here.
    let (jwt, id) = env
        .api
        .token(
            "acme",
            json!({"mesh": "prod", "format": "jwt", "expiresIn": "1h"}),
        )
        .await;
    let key = std::fs::read(env.path("data/proxy-jwt-key")).unwrap();
    let key =
        switchboard_store::jwt::ProxyJwtKey::new(String::from_utf8_lossy(&key).trim().as_bytes())
            .unwrap();
    assert!(key.verify(&jwt).is_ok(), "the key the server signs with");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let short = key
        .sign(&switchboard_store::jwt::ProxyClaims {
            iss: switchboard_store::jwt::ISSUER.to_owned(),
            sub: id,
            iat: now,
            exp: now + 3,
            tenant: "acme".to_owned(),
            mesh: Some("prod".to_owned()),
        })
        .unwrap();
    let mut ads = env
        .sidecar("acme", "short", "pay", None, Some(&short))
        .await
        .unwrap();
    ads.subscribe(type_url::CLUSTER, &[]).await.unwrap();
    ads.recv().await.unwrap();
    let started = Instant::now();
    let status = ads.ended().await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("token expired, reconnect with a fresh token"),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "ended at exp");
    // Reconnecting with the expired JWT is refused.
    let again = first_response(
        env.sidecar("acme", "short", "pay", None, Some(&short))
            .await,
    )
    .await
    .unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unauthenticated, "{again:?}");
}

/// `switchboard-proxy`, built beside this package's binary by `cargo test --workspace`;
/// built here when this package's tests run alone.
fn proxy_binary() -> PathBuf {
    let bin = Path::new(common::BIN)
        .parent()
        .unwrap()
        .join("switchboard-proxy");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "switchboard-proxy",
                "--bin",
                "switchboard-proxy",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "building switchboard-proxy failed");
    }
    bin
}

fn python() -> Option<PathBuf> {
    let required = std::env::var("SWITCHBOARD_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    let python = std::env::var_os("SWITCHBOARD_TEST_PYTHON").filter(|v| !v.is_empty());
    if python.is_none() {
        let msg = "SWITCHBOARD_TEST_PYTHON unset: skipping the grpcio client-certificate test (scripts/test installs the peers)";
        assert!(!required, "SWITCHBOARD_REQUIRE_PEERS=1 but {msg}");
        eprintln!("{msg}");
    }
    python.map(PathBuf::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_authenticates_with_a_client_certificate() {
    let Some(python) = python() else { return };
    let env = Env::start().await;
    let d = env.dir.path();
    let mut backend = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/backend.py"))
        .arg("v1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("backend.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(backend.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(Duration::from_secs(30), out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let m = "/v1/tenants/acme/meshes/prod";
    env.api
        .put(
            &format!("{m}/services/v1"),
            json!({"spec": {"protocol": "grpc", "port": 8080}}),
        )
        .await;
    env.api
        .put(
            &format!("{m}/endpoints/v1"),
            json!({"spec": {"service": "v1", "address": "127.0.0.1", "port": port}}),
        )
        .await;
    env.api
        .put(
            &format!("{m}/routes/payments"),
            json!({"spec": {"hostnames": ["payments:8080"], "rules": [{"backends": [{"service": "v1"}]}]}}),
        )
        .await;

    // A65 `tls` channel credentials with the workload certificate, and no token, on a mesh
    // that admits no anonymous client.
    let (cert, key) = env.workload("acme").await.write(d, "client");
    let bootstrap = d.join("bootstrap.json");
    let out = std::process::Command::new(common::BIN)
        .args(["bootstrap", "grpc", "--tenant", "acme", "--mesh", "prod"])
        .args(["--node", "py-cert", "--xds-address", &env.server.xds_addr])
        .args(["--xds-ca-file", env.ca.to_str().unwrap()])
        .args(["--xds-client-cert-file", cert.to_str().unwrap()])
        .args(["--xds-client-key-file", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&bootstrap, out.stdout).unwrap();
    let client_log = d.join("client.log");
    let mut client = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/client.py"))
        .arg("xds:///payments:8080")
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&client_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"call 5\n").await.unwrap();
    stdin.flush().await.unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
    let answer: Value = match line {
        Ok(Ok(Some(l))) => serde_json::from_str(&l).unwrap(),
        other => panic!(
            "the client did not answer: {other:?}\n{}\n{}",
            tail(&client_log, 6000),
            tail(&env.log, 6000)
        ),
    };
    assert_eq!(
        answer["counts"]["v1"],
        5,
        "{answer}\n{}\n{}",
        tail(&client_log, 6000),
        tail(&env.log, 6000)
    );
}
