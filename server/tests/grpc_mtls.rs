//! Proxyless gRPC security end to end (gRFC A29, with A36 xDS-enabled servers): a grpcio
//! client with xDS channel credentials calls a grpcio xDS-enabled server through mutual TLS
//! that the built `switchboard` binary configures, with certificates the mesh CA issued.
//!
//! The mesh is strict. Each workload's certificate and key, and the mesh's roots, come from
//! the control plane's own SDS (a unary `FetchSecrets` of `default` and `ROOTCA` as a node of
//! that service, with a proxy token) and are written to the files that
//! `switchboard bootstrap grpc --certificate-dir` points gRPC's file watcher at. Then:
//! - a client with xDS credentials and the `caller` certificate gets through, and the server
//!   sees the SPIFFE ID of `caller` (it answers with the peer identity of its auth context);
//! - a client with insecure credentials (and no certificate providers) is refused by the
//!   server's mTLS;
//! - an authorization policy denying `intruder` reaches the server as an RBAC filter: the
//!   `intruder` client, through before, gets PERMISSION_DENIED, while `caller` still gets
//!   through;
//! - the control plane records no NACK from any of them.
//!
//! Needs `SWITCHBOARD_TEST_PYTHON` (a venv with grpcio, scripts/lib/peers.sh); skips without
//! it unless `SWITCHBOARD_REQUIRE_PEERS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_xds_proto::pb::envoy::config::core::v3::{DataSource, data_source};
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use switchboard_xds_proto::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use switchboard_xds_proto::service::sds::SecretDiscoveryServiceClient;
use switchboard_xds_proto::{DiscoveryRequest, Node};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

mod common;

use common::{BIN, Server, tail};

const ADMIN: &str = "grpc-mtls-test-admin-token";
const TENANT: &str = "acme";
const MESH: &str = "prod";
const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// How long one client command may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

fn spiffe(service: &str) -> String {
    format!("spiffe://{TENANT}.switchboard.local/mesh/{MESH}/service/{service}")
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// The venv's python, or `None` (after saying why) when this test should skip.
fn python() -> Option<PathBuf> {
    let required = std::env::var("SWITCHBOARD_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    match std::env::var_os("SWITCHBOARD_TEST_PYTHON").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            let msg = "SWITCHBOARD_TEST_PYTHON unset: skipping the grpcio mTLS test \
                       (scripts/test installs the peers; see scripts/lib/peers.sh)";
            assert!(!required, "SWITCHBOARD_REQUIRE_PEERS=1 but {msg}");
            eprintln!("{msg}");
            None
        }
    }
}

async fn put(c: &reqwest::Client, url: &str, body: Value) {
    let (s, r) = common::call(c, reqwest::Method::PUT, url, ADMIN, Some(body), None).await;
    assert_eq!(s, 200, "PUT {url}: {r}");
}

fn text(source: Option<&DataSource>) -> String {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
        Some(data_source::Specifier::InlineString(s)) => s.clone(),
        other => panic!("not an inline secret: {other:?}"),
    }
}

/// Fetches `service`'s certificate, key and the mesh's roots from the control plane's SDS, as
/// a node of that service, and writes them where `bootstrap grpc --certificate-dir dir` says.
async fn fetch_certificates(server: &Server, token: &str, service: &str, dir: &Path) {
    let string = |s: &str| PbValue {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let node = Node {
        id: format!("tenants/{TENANT}/meshes/{MESH}/nodes/{service}-certificates"),
        metadata: Some(Struct {
            fields: [
                ("role".to_owned(), string("sidecar")),
                ("service".to_owned(), string(service)),
                ("app_port".to_owned(), string("8080")),
            ]
            .into(),
        }),
        ..Default::default()
    };
    let mut client = SecretDiscoveryServiceClient::connect(server.xds_url())
        .await
        .unwrap();
    let mut request = tonic::Request::new(DiscoveryRequest {
        node: Some(node),
        resource_names: vec!["default".into(), "ROOTCA".into()],
        type_url: SECRET_TYPE.into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let response = client.fetch_secrets(request).await.unwrap().into_inner();
    let mut files = BTreeMap::new();
    for any in &response.resources {
        let s: Secret = switchboard_xds_proto::unpack(any).unwrap();
        match s.r#type {
            Some(secret::Type::TlsCertificate(c)) => {
                files.insert("certificate.pem", text(c.certificate_chain.as_ref()));
                files.insert("private_key.pem", text(c.private_key.as_ref()));
            }
            Some(secret::Type::ValidationContext(v)) => {
                files.insert("ca_certificates.pem", text(v.trusted_ca.as_ref()));
            }
            other => panic!("unexpected secret {}: {other:?}", s.name),
        }
    }
    assert_eq!(files.len(), 3, "default and ROOTCA for {service}");
    std::fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
}

/// `switchboard bootstrap grpc` for node `name`, with `--certificate-dir` when given, written
/// to `dir/bootstrap-{name}.json`.
fn bootstrap(server: &Server, name: &str, certificates: Option<&Path>, dir: &Path) -> PathBuf {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "bootstrap",
        "grpc",
        "--tenant",
        TENANT,
        "--mesh",
        MESH,
        "--node",
        name,
    ])
    .args(["--xds-address", &server.xds_addr]);
    if let Some(certs) = certificates {
        cmd.arg("--certificate-dir").arg(certs);
        cmd.args(["--certificate-refresh-secs", "1"]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join(format!("bootstrap-{name}.json"));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

/// A grpcio peer (tests/peers), killed on drop, with its stderr in `log`.
struct Peer {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

fn spawn(python: &Path, args: &[&str], bootstrap: &Path, log: PathBuf) -> Peer {
    let mut cmd = Command::new(python);
    cmd.args(args).env("GRPC_XDS_BOOTSTRAP", bootstrap);
    if std::env::var("SWITCHBOARD_TEST_PEER_TRACE").is_ok_and(|v| v == "1") {
        cmd.env("GRPC_TRACE", "xds_client,xds_server_config_fetcher")
            .env("GRPC_VERBOSITY", "debug");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Peer {
        stdin: child.stdin.take().unwrap(),
        stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
        _child: child,
        log,
    }
}

impl Peer {
    async fn line(&mut self, what: &str) -> String {
        match tokio::time::timeout(COMMAND_TIMEOUT, self.stdout.next_line()).await {
            Ok(Ok(Some(l))) => l,
            other => panic!("no answer to {what}: {other:?}\n{}", tail(&self.log, 8000)),
        }
    }

    /// `n` calls: (replies by text, errors by message).
    async fn calls(&mut self, n: u32) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        self.stdin
            .write_all(format!("call {n}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        let line = self.line("call").await;
        let v: Value = serde_json::from_str(&line).unwrap();
        let map = |v: &Value| -> BTreeMap<String, u64> {
            v.as_object()
                .unwrap()
                .iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
                .collect()
        };
        (map(&v["counts"]), map(&v["errors"]))
    }
}

async fn client(python: &Path, bootstrap: &Path, xds_creds: bool, log: PathBuf) -> Peer {
    let script = peers_dir().join("client.py");
    let mut args = vec![script.to_str().unwrap().to_owned(), "xds:///greeter".into()];
    if xds_creds {
        args.push("--xds-creds".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(python, &args, bootstrap, log)
}

/// The server's `switchboard_xds_nacks_total` for the tenant, summed over types.
async fn nacks(c: &reqwest::Client, server: &Server) -> f64 {
    let text = common::metrics(c, server).await;
    let tenant = format!("tenant=\"{TENANT}\"");
    text.lines()
        .filter(|l| l.starts_with("switchboard_xds_nacks_total") && l.contains(&tenant))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_and_xds_server_speak_mesh_mtls() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let flags = [
        "--admin-token",
        ADMIN,
        "--data-dir",
        data.to_str().unwrap(),
        "--log-format",
        "json",
        "--log-level",
        "info,switchboard_xds_server=debug",
    ];
    let server = common::start(d, &flags, Some(&d.join("switchboard.log"))).await;
    let c = reqwest::Client::new();
    let v1 = format!("{}/v1", server.rest);
    let (s, r) = common::call(
        &c,
        reqwest::Method::POST,
        &format!("{v1}/tenants"),
        ADMIN,
        Some(json!({"name": TENANT})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let m = format!("{v1}/tenants/{TENANT}/meshes/{MESH}");
    let mesh = json!({"spec": {"allowUnauthenticatedXds": true, "mtls": {"mode": "strict"}}});
    put(&c, &m, mesh).await;
    let port = common::free_port();
    let greeter = json!({"spec": {"protocol": "grpc", "port": port}});
    put(&c, &format!("{m}/services/greeter"), greeter).await;
    for caller in ["caller", "intruder"] {
        let spec = json!({"spec": {"protocol": "grpc", "port": 8080}});
        put(&c, &format!("{m}/services/{caller}"), spec).await;
    }
    let endpoint = json!({"spec": {"service": "greeter", "address": "127.0.0.1", "mtls": true}});
    put(&c, &format!("{m}/endpoints/greeter-1"), endpoint).await;
    let (s, token) = common::call(
        &c,
        reqwest::Method::POST,
        &format!("{v1}/tenants/{TENANT}/proxy-tokens"),
        ADMIN,
        Some(json!({"mesh": MESH})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{token}");
    let token = token["secret"].as_str().unwrap().to_owned();
    for service in ["greeter", "caller", "intruder"] {
        fetch_certificates(&server, &token, service, &d.join(service)).await;
    }

    let server_bootstrap = bootstrap(&server, "greeter-1", Some(&d.join("greeter")), d);
    let script = peers_dir().join("xds_server.py");
    let port_arg = port.to_string();
    let mut xds_server = spawn(
        &python,
        &[script.to_str().unwrap(), &port_arg],
        &server_bootstrap,
        d.join("xds-server.log"),
    );
    assert_eq!(xds_server.line("start").await, "started");

    // mTLS, and the server sees who called.
    let caller_bootstrap = bootstrap(&server, "caller-1", Some(&d.join("caller")), d);
    let mut caller = client(&python, &caller_bootstrap, true, d.join("caller.log")).await;
    let (ok, errors) = caller.calls(5).await;
    let files = [
        caller.log.clone(),
        xds_server.log.clone(),
        d.join("switchboard.log"),
    ];
    let logs = move || {
        let tails: Vec<String> = files.iter().map(|f| tail(f, 6000)).collect();
        tails.join("\n")
    };
    eprintln!("caller with xDS credentials: {ok:?}, errors {errors:?}");
    assert_eq!(
        ok,
        BTreeMap::from([(spiffe("caller"), 5)]),
        "errors {errors:?}\n{}",
        logs()
    );

    // Plaintext is refused by the server's mTLS.
    let plain_bootstrap = bootstrap(&server, "plain-1", None, d);
    let mut plain = client(&python, &plain_bootstrap, false, d.join("plain.log")).await;
    let (ok, errors) = plain.calls(2).await;
    eprintln!("client with insecure credentials: {ok:?}, errors {errors:?}");
    assert!(ok.is_empty(), "a plaintext call got through: {ok:?}");
    assert_eq!(errors.values().sum::<u64>(), 2, "{errors:?}");

    // A deny policy reaches the server's listener as RBAC.
    let intruder_bootstrap = bootstrap(&server, "intruder-1", Some(&d.join("intruder")), d);
    let mut intruder = client(&python, &intruder_bootstrap, true, d.join("intruder.log")).await;
    let (ok, _) = intruder.calls(1).await;
    assert_eq!(
        ok,
        BTreeMap::from([(spiffe("intruder"), 1)]),
        "before the policy"
    );
    let policy = json!({"spec": {"service": "greeter", "action": "deny", "from": [{"services": ["intruder"]}]}});
    put(
        &c,
        &format!("{m}/authorization-policies/no-intruder"),
        policy,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, errors) = intruder.calls(1).await;
        if errors.keys().any(|e| e.starts_with("PERMISSION_DENIED")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "intruder not denied: {ok:?} {errors:?}\n{}",
            tail(&xds_server.log, 6000)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, errors) = caller.calls(3).await;
    assert_eq!(ok, BTreeMap::from([(spiffe("caller"), 3)]), "{errors:?}");

    assert_eq!(nacks(&c, &server).await, 0.0, "{}", logs());
}
