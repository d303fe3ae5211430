//! The built `switchboard serve` with TLS on its REST and xDS ports (a certificate made here by
//! rcgen), and grpcio's proxyless xDS client (tests/peers/client.py) reaching the xDS port over
//! TLS with the bootstrap `switchboard bootstrap grpc` prints:
//! - gRFC A65 `tls` channel credentials, anonymously, on a mesh that admits that;
//! - with gRFC A97 `jwt_token_file` call credentials (a JWT proxy token), on a mesh that
//!   requires a token; without the experiment's environment variable grpcio sends no token
//!   and is refused, so the calls that succeed are the JWT's doing.
//!
//! Needs `SWITCHBOARD_TEST_PYTHON` (scripts/lib/peers.sh); skips without it unless
//! `SWITCHBOARD_REQUIRE_PEERS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use common::tail;
use common::tls::{Https, certificates};

const ADMIN: &str = "xds-tls-test-admin-token";
/// The experiment switch of gRFC A97's bootstrap `call_creds` in gRPC C-core.
const CALL_CREDS_EXPERIMENT: &str = "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS";

fn python() -> Option<PathBuf> {
    let required = std::env::var("SWITCHBOARD_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    let python = std::env::var_os("SWITCHBOARD_TEST_PYTHON").filter(|v| !v.is_empty());
    if python.is_none() {
        let msg = "SWITCHBOARD_TEST_PYTHON unset: skipping the grpcio TLS test (scripts/test installs the peers)";
        assert!(!required, "SWITCHBOARD_REQUIRE_PEERS=1 but {msg}");
        eprintln!("{msg}");
    }
    python.map(PathBuf::from)
}

/// A grpcio proxyless client of `xds:///payments:8080` with `bootstrap`; returns its answer
/// to `call {n}`.
async fn calls(python: &Path, bootstrap: &Path, n: u32, experiment: bool, log: &Path) -> Value {
    let mut cmd = Command::new(python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/client.py"))
        .arg("xds:///payments:8080")
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .env_remove(CALL_CREDS_EXPERIMENT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true);
    if experiment {
        cmd.env(CALL_CREDS_EXPERIMENT, "true");
    }
    if std::env::var("SWITCHBOARD_TEST_PEER_TRACE").is_ok_and(|v| v == "1") {
        cmd.env("GRPC_TRACE", "xds_client,xds_resolver")
            .env("GRPC_VERBOSITY", "debug");
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("call {n}\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
    match line {
        Ok(Ok(Some(l))) => {
            let mut v: Value = serde_json::from_str(&l).unwrap();
            v["log"] = Value::String(tail(log, 4000));
            v
        }
        other => panic!("the client did not answer: {other:?}\n{}", tail(log, 8000)),
    }
}

/// `switchboard bootstrap grpc` with `args`, written to `path`.
fn bootstrap(path: &Path, args: &[&str]) {
    let out = std::process::Command::new(common::BIN)
        .args(["bootstrap", "grpc", "--tenant", "acme"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, out.stdout).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_reaches_the_xds_port_over_tls_with_a_jwt() {
    let Some(python) = python() else { return };
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
            common::LOG_LEVEL,
        ],
        Some(&log),
    )
    .await;
    let api = Https::new(&server.rest, &ca, ADMIN);

    // A backend, and the same route to it in two meshes: `open` admits anonymous clients,
    // `prod` wants a proxy token.
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
    let (status, r) = api
        .call("POST", "/v1/tenants", json!({"name": "acme"}))
        .await;
    assert_eq!(status, 201, "{r}");
    for (mesh, spec) in [
        ("open", json!({"allowUnauthenticatedXds": true})),
        ("prod", json!({})),
    ] {
        let m = format!("/v1/tenants/acme/meshes/{mesh}");
        api.put(&m, json!({"spec": spec})).await;
        api.put(
            &format!("{m}/services/v1"),
            json!({"spec": {"protocol": "grpc", "port": 8080}}),
        )
        .await;
        let ep = json!({"spec": {"service": "v1", "address": "127.0.0.1", "port": port}});
        api.put(&format!("{m}/endpoints/v1"), ep).await;
        let route = json!({"spec": {"hostnames": ["payments:8080"], "rules": [{"backends": [{"service": "v1"}]}]}});
        api.put(&format!("{m}/routes/payments"), route).await;
    }
    let (status, token) = api
        .call(
            "POST",
            "/v1/tenants/acme/proxy-tokens",
            json!({"mesh": "prod", "format": "jwt", "expiresIn": "1h"}),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    let jwt = token["secret"].as_str().unwrap().to_owned();
    let jwt_file = d.join("jwt");
    std::fs::write(&jwt_file, &jwt).unwrap();

    let xds = server.xds_addr.as_str();
    let ca_arg = ca.to_str().unwrap();
    // A65: TLS channel credentials, no token, on the open mesh.
    let anonymous = d.join("bootstrap-tls.json");
    bootstrap(
        &anonymous,
        &[
            "--mesh",
            "open",
            "--node",
            "py-tls",
            "--xds-address",
            xds,
            "--xds-ca-file",
            ca_arg,
        ],
    );
    let r = calls(&python, &anonymous, 5, false, &d.join("client-tls.log")).await;
    assert_eq!(
        r["counts"]["v1"],
        5,
        "A65 tls channel creds: {r}\n{}",
        tail(&log, 6000)
    );

    // A97: the JWT as call credentials, on the mesh that requires a token.
    let with_jwt = d.join("bootstrap-jwt.json");
    let jwt_arg = jwt_file.to_str().unwrap();
    bootstrap(
        &with_jwt,
        &[
            "--mesh",
            "prod",
            "--node",
            "py-jwt",
            "--xds-address",
            xds,
            "--xds-ca-file",
            ca_arg,
            "--jwt-token-file",
            jwt_arg,
        ],
    );
    let r = calls(&python, &with_jwt, 5, true, &d.join("client-jwt.log")).await;
    assert_eq!(
        r["counts"]["v1"],
        5,
        "A97 jwt_token_file call creds: {r}\n{}",
        tail(&log, 6000)
    );
    // Without the experiment grpcio ignores call_creds: no token, refused, no call succeeds.
    let r = calls(&python, &with_jwt, 1, false, &d.join("client-nojwt.log")).await;
    assert!(r["counts"].as_object().unwrap().is_empty(), "{r}");

    // The JWT, the admin token and the private key appear in no log line.
    drop(server);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("TLS handshake") || logged.contains("xds_stream"),
        "debug logs were written"
    );
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    for (what, secret) in [
        ("JWT", jwt.as_str()),
        ("admin token", ADMIN),
        ("TLS key", key_body),
    ] {
        assert!(!logged.contains(secret), "the {what} was logged");
    }
}
