//! Tests of the built `switchboard` binary over real sockets: the README walkthrough on the
//! embedded default, configuration errors, and two replicas sharing one PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{BIN, call, free_port};

async fn start(dir: &std::path::Path, extra: &[&str]) -> common::Server {
    common::start(dir, extra, None).await
}

#[tokio::test]
async fn readme_walkthrough_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]).await;
    // The generated admin token: printed once, and kept in ./data/admin-token with mode 0600.
    let token_file = dir.path().join("data/admin-token");
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(dir.path().join("data/switchboard.db").exists());
    let c = reqwest::Client::new();
    let v1 = format!("{}/v1", server.rest);
    use reqwest::Method as M;
    let (s, _) = call(
        &c,
        M::POST,
        &format!("{v1}/tenants"),
        &admin,
        Some(json!({"name": "acme"})),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let (s, key) = call(
        &c,
        M::POST,
        &format!("{v1}/tenants/acme/api-keys"),
        &admin,
        Some(json!({"description": "walkthrough"})),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let key = key["secret"].as_str().unwrap().to_string();
    let m = format!("{v1}/tenants/acme/meshes/prod");
    assert_eq!(
        call(&c, M::PUT, &m, &key, Some(json!({"spec": {}})), None)
            .await
            .0,
        200
    );
    let (s, _) = call(
        &c,
        M::PUT,
        &format!("{m}/services/payments"),
        &key,
        Some(json!({"spec": {"protocol": "grpc", "port": 8080}})),
        None,
    )
    .await;
    assert_eq!(s, 200);
    for (n, addr) in [("payments-1", "10.0.0.1"), ("payments-2", "10.0.0.2")] {
        let body = json!({"spec": {"service": "payments", "address": addr, "port": 8080}});
        assert_eq!(
            call(
                &c,
                M::PUT,
                &format!("{m}/endpoints/{n}"),
                &key,
                Some(body),
                None
            )
            .await
            .0,
            200
        );
    }
    let route = json!({"spec": {"hostnames": ["payments:8080"], "rules": [{"backends": [{"service": "payments"}], "timeout": "2s"}]}});
    assert_eq!(
        call(
            &c,
            M::PUT,
            &format!("{m}/routes/payments"),
            &key,
            Some(route),
            None
        )
        .await
        .0,
        200
    );
    let (s, eps) = call(&c, M::GET, &format!("{m}/endpoints"), &key, None, None).await;
    assert_eq!(s, 200);
    assert_eq!(eps["items"].as_array().unwrap().len(), 2);
    let (_, r) = call(
        &c,
        M::GET,
        &format!("{m}/routes/payments"),
        &key,
        None,
        None,
    )
    .await;
    let etag = r["etag"].as_str().unwrap().to_string();
    let mut spec = r["spec"].clone();
    spec["rules"][0]["timeout"] = json!("5s");
    let (s, updated) = call(
        &c,
        M::PUT,
        &format!("{m}/routes/payments"),
        &key,
        Some(json!({"spec": spec})),
        Some(&etag),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(updated["spec"]["rules"][0]["timeout"], "5s");
    let (s, _) = call(
        &c,
        M::PUT,
        &format!("{m}/routes/payments"),
        &key,
        Some(json!({"spec": spec})),
        Some(&etag),
    )
    .await;
    assert_eq!(s, 412, "the old etag is stale");
    // Observability.
    let metrics = common::metrics(&c, &server).await;
    assert!(
        metrics.contains("switchboard_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_store_seconds"), "{metrics}");
    assert_eq!(
        c.get(format!("{}/healthz", server.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Restarted, it keeps its data and its token (and doesn't print a new one).
    drop(server);
    server = start(dir.path(), &[]).await;
    let (s, r) = call(
        &c,
        M::GET,
        &format!(
            "{}/v1/tenants/acme/meshes/prod/routes/payments",
            server.rest
        ),
        &key,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(r["spec"]["rules"][0]["timeout"], "5s");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), admin);
}

#[test]
fn bad_configuration_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env, setting) in [
        (vec!["serve", "--rest-addr", "nope"], vec![], "rest_addr"),
        (
            vec!["serve"],
            vec![("SWITCHBOARD_LOG_FORMAT", "xml")],
            "log_format",
        ),
        (
            vec!["serve", "--database-url", "mysql://x"],
            vec![],
            "database_url",
        ),
        (
            vec!["serve", "--admin-token", "short"],
            vec![],
            "admin_token",
        ),
        (
            vec!["serve", "--tls-cert-file", "cert.pem"],
            vec![],
            "tls_key_file",
        ),
        // Certificate files that do not load stop the start, naming the file.
        (
            vec![
                "serve",
                "--tls-cert-file",
                "missing-cert.pem",
                "--tls-key-file",
                "missing-key.pem",
                "--rest-addr",
                "127.0.0.1:0",
                "--xds-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
            ],
            vec![],
            "cannot read tls_cert_file missing-cert.pem",
        ),
    ] {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args(&args)
            .envs(env)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(setting), "{args:?}: {err}");
        let leaks = switchboard_runtime::leaks::find_leaks(&err);
        assert!(
            leaks.is_empty(),
            "{args:?}: a secret in the error: {leaks:?}"
        );
    }
    std::fs::write(
        dir.path().join("switchboard.toml"),
        "rest_adr = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rest_adr"));
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for s in [
        "rest_addr",
        "xds_addr",
        "admin_addr",
        "database_url",
        "data_dir",
        "admin_token",
        "log_format",
        "log_level",
        "--config",
    ] {
        assert!(help.contains(s), "serve --help does not document {s}");
    }
}

#[tokio::test]
async fn two_replicas_share_one_postgres() {
    let Some(db) = switchboard_store::testing::fresh(switchboard_store::Backend::Postgres).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = "replica-test-admin-token";
    // Replicas sharing a database share the CA key-encryption key.
    let key = "42".repeat(32);
    let flags = [
        "--database-url",
        db.url.as_str(),
        "--admin-token",
        token,
        "--ca-key",
        &key,
    ];
    let a = start(dir.path(), &flags).await;
    let b = start(dir.path(), &flags).await;
    let c = reqwest::Client::new();
    use reqwest::Method as M;
    assert_eq!(
        call(
            &c,
            M::POST,
            &format!("{}/v1/tenants", a.rest),
            token,
            Some(json!({"name": "acme"})),
            None
        )
        .await
        .0,
        201
    );
    assert_eq!(
        call(
            &c,
            M::PUT,
            &format!("{}/v1/tenants/acme/meshes/prod", a.rest),
            token,
            Some(json!({"spec": {}})),
            None
        )
        .await
        .0,
        200
    );
    for i in 0..3 {
        let (_, t) = call(
            &c,
            M::GET,
            &format!("{}/v1/tenants/acme", b.rest),
            token,
            None,
            None,
        )
        .await;
        let since = t["revision"].as_i64().unwrap();
        // B long-polls for the next change; A writes; B must hear of it within 1 s.
        let watch = {
            let (c, url) = (
                c.clone(),
                format!("{}/v1/tenants/acme/changes?since={since}&wait=10s", b.rest),
            );
            tokio::spawn(async move {
                let resp = c.get(url).bearer_auth(token).send().await.unwrap();
                (Instant::now(), resp.json::<Value>().await.unwrap())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let name = format!("svc-{i}");
        let written = Instant::now();
        let (s, _) = call(
            &c,
            M::PUT,
            &format!("{}/v1/tenants/acme/meshes/prod/services/{name}", a.rest),
            token,
            Some(json!({"spec": {"port": 80}})),
            None,
        )
        .await;
        assert_eq!(s, 200);
        let (heard, changes) = watch.await.unwrap();
        let lag = heard.saturating_duration_since(written);
        assert!(
            lag < Duration::from_secs(1),
            "replica B heard of the write after {lag:?}"
        );
        assert_eq!(changes["changes"][0]["name"], json!(name), "{changes}");
        let (s, got) = call(
            &c,
            M::GET,
            &format!("{}/v1/tenants/acme/meshes/prod/services/{name}", b.rest),
            token,
            None,
            None,
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(got["spec"]["port"], 80);
    }
}

/// Polls `GET …/proxies` on `rest` until `pred` holds for the node's streams (status is
/// written every 250 ms), or fails after 5 s.
async fn wait_proxy(
    c: &reqwest::Client,
    rest: &str,
    token: &str,
    node: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, body) = call(
            c,
            reqwest::Method::GET,
            &format!("{rest}/v1/tenants/acme/meshes/prod/proxies/{node}"),
            token,
            None,
            None,
        )
        .await;
        if s == 200 && pred(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "proxy status never matched: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cds_type(body: &Value) -> Option<&Value> {
    body["streams"][0]["types"]
        .as_array()?
        .iter()
        .find(|t| t["type"] == "CDS")
}

#[tokio::test]
async fn xds_clients_of_one_replica_follow_writes_through_another() {
    use switchboard_xds_proto::type_url::CLUSTER;
    use switchboard_xds_server::testing::{AdsClient, node};
    let Some(db) = switchboard_store::testing::fresh(switchboard_store::Backend::Postgres).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = "replica-test-admin-token";
    // Replicas sharing a database share the CA key-encryption key.
    let key = "42".repeat(32);
    let flags = [
        "--database-url",
        db.url.as_str(),
        "--admin-token",
        token,
        "--ca-key",
        &key,
    ];
    let a = start(dir.path(), &flags).await;
    let b = start(dir.path(), &flags).await;
    let c = reqwest::Client::new();
    use reqwest::Method as M;
    let m = format!("{}/v1/tenants/acme/meshes/prod", a.rest);
    assert_eq!(
        call(
            &c,
            M::POST,
            &format!("{}/v1/tenants", a.rest),
            token,
            Some(json!({"name": "acme"})),
            None
        )
        .await
        .0,
        201
    );
    assert_eq!(
        call(&c, M::PUT, &m, token, Some(json!({"spec": {}})), None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(
            &c,
            M::PUT,
            &format!("{m}/services/pay"),
            token,
            Some(json!({"spec": {"port": 8080, "protocol": "grpc"}})),
            None
        )
        .await
        .0,
        200
    );
    let (s, pt) = call(
        &c,
        M::POST,
        &format!("{}/v1/tenants/acme/proxy-tokens", a.rest),
        token,
        Some(json!({"mesh": "prod"})),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let proxy_token = pt["secret"].as_str().unwrap().to_string();

    // A client on replica B, subscribed to every cluster.
    let mut client =
        AdsClient::connect(&b.xds_url(), node("acme", "prod", "n1"), Some(&proxy_token))
            .await
            .unwrap();
    client.subscribe(CLUSTER, &[]).await.unwrap();
    let first = client.recv_and_ack(&[]).await.unwrap();
    assert_eq!(first.resources.len(), 1);

    for i in 0..5 {
        let name = format!("svc-{i}");
        let written = Instant::now();
        let (s, w) = call(
            &c,
            M::PUT,
            &format!("{m}/services/{name}"),
            token,
            Some(json!({"spec": {"port": 8080}})),
            None,
        )
        .await;
        assert_eq!(s, 200);
        let revision = w["revision"].as_i64().unwrap();
        let resp = client.recv().await.unwrap();
        client.ack(&resp, &[]).await.unwrap();
        let lag = written.elapsed();
        assert_eq!(
            resp.resources.len(),
            2 + i,
            "the full CDS state, with the new cluster"
        );
        assert!(
            lag < Duration::from_secs(1),
            "replica B's client ACKed revision {revision} {lag:?} after the write through A"
        );
        // Both replicas report the ACK of that revision.
        for rest in [&a.rest, &b.rest] {
            wait_proxy(&c, rest, token, "n1", |body| {
                cds_type(body).is_some_and(|t| t["acked"]["revision"].as_i64() >= Some(revision))
            })
            .await;
        }
    }

    // What the proxy is being sent, from the replica that holds its stream and from the other.
    for rest in [&a.rest, &b.rest] {
        let (s, cfg) = call(
            &c,
            M::GET,
            &format!("{rest}/v1/tenants/acme/meshes/prod/proxies/n1/config"),
            token,
            None,
            None,
        )
        .await;
        assert_eq!(s, 200, "{cfg}");
        let cds = cfg["types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "CDS")
            .unwrap();
        let names: Vec<&str> = cds["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"pay") && names.contains(&"svc-4"),
            "{names:?}"
        );
        assert_eq!(cds["resources"][0]["@type"], CLUSTER);
    }

    // A NACK is visible through the REST API of either replica.
    call(
        &c,
        M::PUT,
        &format!("{m}/services/rejected"),
        token,
        Some(json!({"spec": {"port": 8080}})),
        None,
    )
    .await;
    let resp = client.recv().await.unwrap();
    client
        .nack(&resp, &[], &first.version_info, "cluster rejected: test")
        .await
        .unwrap();
    for rest in [&a.rest, &b.rest] {
        let body = wait_proxy(&c, rest, token, "n1", |body| {
            cds_type(body).is_some_and(|t| t["state"] == "NACKED")
        })
        .await;
        assert_eq!(
            cds_type(&body).unwrap()["nack"]["error"],
            "cluster rejected: test"
        );
    }
    // Replica B measured the stream, its pushes, the NACK and convergence.
    let metrics = common::metrics(&c, &b).await;
    for m in [
        "switchboard_xds_streams{",
        "switchboard_xds_pushes_total{",
        "switchboard_xds_nacks_total{",
        "switchboard_xds_push_bytes_bucket{",
        "switchboard_xds_convergence_seconds_bucket{",
    ] {
        assert!(metrics.contains(m), "replica B's /metrics has no {m}");
    }
    // Gone when the stream ends.
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, _) = call(
            &c,
            M::GET,
            &format!("{}/v1/tenants/acme/meshes/prod/proxies/n1", a.rest),
            token,
            None,
            None,
        )
        .await;
        if s == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ended stream is still listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Revoking the token through replica A ends its stream on replica B.
    let mut client =
        AdsClient::connect(&b.xds_url(), node("acme", "prod", "n2"), Some(&proxy_token))
            .await
            .unwrap();
    client.subscribe(CLUSTER, &[]).await.unwrap();
    client.recv_and_ack(&[]).await.unwrap();
    let id = pt["id"].as_str().unwrap();
    let (s, body) = call(
        &c,
        M::DELETE,
        &format!("{}/v1/tenants/acme/proxy-tokens/{id}", a.rest),
        token,
        None,
        None,
    )
    .await;
    assert_eq!(s, 204, "{body}");
    let status = client.ended().await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
}

#[tokio::test]
async fn json_logs_carry_the_request_span() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("log.json")).unwrap();
    let (rest, xds, admin) = (free_port(), free_port(), free_port());
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "serve",
            "--log-format",
            "json",
            "--admin-token",
            "json-logs-admin-token",
            "--log-level",
            common::LOG_LEVEL,
        ])
        .args([
            "--rest-addr",
            &format!("127.0.0.1:{rest}"),
            "--xds-addr",
            &format!("127.0.0.1:{xds}"),
        ])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let c = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(r) = c
            .get(format!("http://127.0.0.1:{rest}/v1/tenants/acme"))
            .bearer_auth("json-logs-admin-token")
            .header("x-request-id", "req-42")
            .send()
            .await
        {
            break r.status();
        }
        assert!(Instant::now() < deadline, "switchboard did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 404);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(dir.path().join("log.json")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let request = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "req-42" && l.get("status").is_some())
        .unwrap_or_else(|| panic!("no response log line in the request's span: {text}"));
    assert_eq!(request["span"]["tenant"], "acme");
    assert_eq!(request["status"], 404);
    assert!(
        !text.contains("json-logs-admin-token"),
        "a secret was logged"
    );
    common::remember_generated(&dir.path().join("data"));
    switchboard_runtime::leaks::assert_no_leaks(&dir.path().join("log.json"));
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    for _ in 0..2 {
        // Twice: migrating an up-to-date database is a no-op.
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args(["migrate", "--database-url", &url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The schema is there without migrating again: connect (not open) and use every table.
    let store = switchboard_store::Store::connect(&url).await.unwrap();
    store.ping().await.unwrap();
    store
        .create_tenant("acme", &json!({}), false)
        .await
        .unwrap();
    assert!(
        store
            .list_proxies("acme", "prod", None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.changes_since("acme", 0, 10).await.unwrap().is_empty());
}
