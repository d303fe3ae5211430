//! The CLI's verbs (`login`, `config`, `apply [--prune]`, `diff`, `get`, `delete`, `status`,
//! `rollout`, `completion`, `man`) as a CI job runs them: the real `switchboard` binary
//! against a real `switchboard serve` on 127.0.0.1, on SQLite and on PostgreSQL, with real
//! ADS clients for `status`; and over HTTPS with a CA file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Output;
use switchboard_store::{Backend, both_backends};
use switchboard_xds_proto::type_url::CLUSTER;
use switchboard_xds_server::testing::{AdsClient, node};

const ADMIN: &str = "cli-test-admin-token-0123456";

/// The CLI with `args`, its config file `config`, `stdin` fed in.
fn cli(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    common::cli(Some(config), args, stdin)
}

use common::{code, err, out};

/// A failure as CI sees it: exit 1 and one line on stderr.
fn one_line_failure(o: &Output) -> String {
    code(o, 1);
    let e = err(o);
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

struct Rest {
    http: reqwest::Client,
    base: String,
}

impl Rest {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        common::call(
            &self.http,
            method,
            &format!("{}{path}", self.base),
            ADMIN,
            body,
            None,
        )
        .await
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(method, path, body).await;
        assert!((200..300).contains(&status), "{path}: {status} {body}");
        body
    }

    async fn revision(&self) -> i64 {
        self.ok(Method::GET, "/v1/tenants/acme", None).await["revision"]
            .as_i64()
            .unwrap()
    }

    async fn exists(&self, path: &str) -> bool {
        self.call(
            Method::GET,
            &format!("/v1/tenants/acme/meshes/{path}"),
            None,
        )
        .await
        .0 == 200
    }
}

/// The repository a platform team keeps: two meshes over three files (YAML with several
/// documents, JSON, and a certificate with its PEM key).
fn write_repo(dir: &Path, port: u16) -> PathBuf {
    let repo = dir.join("mesh");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("10-prod.yaml"),
        format!(
            "# prod\n---\napiVersion: switchboard/v1\nkind: mesh\nname: prod\nspec: {{}}\n---\n\
             kind: service\nmesh: prod\nname: payments\nspec:\n  protocol: http\n  port: {port}\n\
             ---\nkind: endpoint\nmesh: prod\nname: payments-1\nspec:\n  service: payments\n  \
             address: 10.0.0.1\n  port: {port}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        repo.join("20-routes.json"),
        json!({"kind": "route", "mesh": "prod", "name": "pay",
            "spec": {"hostnames": ["pay.example.com"],
                     "rules": [{"backends": [{"service": "payments"}]}]}})
        .to_string(),
    )
    .unwrap();
    let (chain, key) = common::tls::server_certificate("pay.example.com");
    let cert = json!({"kind": "certificate", "mesh": "prod", "name": "shop",
        "spec": {"certificateChain": chain, "privateKey": key}});
    let staging = json!({"kind": "mesh", "name": "staging"});
    let svc = json!({"kind": "service", "mesh": "staging", "name": "web",
        "spec": {"port": 80}});
    std::fs::write(
        repo.join("30-more.yml"),
        [cert, staging, svc]
            .iter()
            .map(|d| serde_yaml_ng::to_string(d).unwrap())
            .collect::<Vec<_>>()
            .join("---\n"),
    )
    .unwrap();
    // Not a document file: left alone.
    std::fs::write(repo.join("README.md"), "# not a document\n").unwrap();
    repo
}

async fn the_verbs_as_ci_runs_them(b: Backend) {
    let Some(db) = switchboard_store::testing::fresh(b).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_key = "55".repeat(32);
    let mut extra = vec!["--admin-token", ADMIN, "--ca-key", &ca_key];
    if b == Backend::Postgres {
        extra.extend(["--database-url", &db.url]);
    }
    let server = common::start(d, &extra, None).await;
    let rest = Rest {
        http: reqwest::Client::new(),
        base: server.rest.clone(),
    };
    rest.ok(Method::POST, "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    let key = rest
        .ok(Method::POST, "/v1/tenants/acme/api-keys", Some(json!({})))
        .await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    switchboard_runtime::leaks::remember("the API key", &key);
    let key_file = d.join("acme.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let key_file = key_file.display().to_string();
    let bad_key = d.join("bad.key");
    std::fs::write(&bad_key, "sbk_not-a-key-of-anyone\n").unwrap();
    let bad_key = bad_key.display().to_string();
    // In a directory that does not exist yet.
    let config = d.join("home").join("switchboard").join("config");
    let run = |args: &[&str]| cli(&config, args, None);

    // login: a bad key is refused (one line, exit 1) and nothing is written.
    let o = run(&[
        "login",
        "--api-url",
        &server.rest,
        "--token-file",
        &bad_key,
        "--tenant",
        "acme",
    ]);
    assert!(one_line_failure(&o).starts_with("switchboard login: "));
    assert!(!config.exists());
    let o = run(&[
        "login",
        "--context",
        "ci",
        "--api-url",
        &server.rest,
        "--token-file",
        &key_file,
        "--tenant",
        "acme",
        "--mesh",
        "prod",
    ]);
    code(&o, 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&config), 0o600);
        assert_eq!(mode(config.parent().unwrap()), 0o700);
    }
    let o = run(&["config", "get-contexts"]);
    code(&o, 0);
    assert!(
        out(&o)
            .lines()
            .any(|l| l.starts_with('*') && l.contains(" ci ")),
        "{}",
        out(&o)
    );

    // apply: every kind, two meshes, a directory of three files.
    let repo = write_repo(d, 8080);
    let repo_s = repo.display().to_string();
    let before = rest.revision().await;
    let o = run(&["apply", "-f", &repo_s]);
    code(&o, 0);
    for line in [
        "mesh prod created",
        "service prod/payments created",
        "endpoint prod/payments-1 created",
        "route prod/pay created",
        "certificate prod/shop created",
        "mesh staging created",
        "service staging/web created",
    ] {
        assert!(out(&o).lines().any(|l| l == line), "{line}\n{}", out(&o));
    }
    let applied = rest.revision().await;
    assert!(applied > before);
    assert!(rest.exists("prod/certificates/shop").await);

    // The same files again: nothing changes, no new revision.
    let o = run(&["apply", "-f", &repo_s]);
    code(&o, 0);
    assert!(
        err(&o).contains("0 created, 0 updated, 7 unchanged; nothing changed"),
        "{}",
        err(&o)
    );
    assert_eq!(rest.revision().await, applied);

    // diff: nothing to change, exit 0; a changed port, exit 3 and the lines that change;
    // nothing written either way.
    let o = run(&["diff", "-f", &repo_s]);
    code(&o, 0);
    assert_eq!(out(&o), "");
    let changed = write_repo(&d.join("changed"), 9090);
    let o = run(&[
        "diff",
        "-f",
        &changed.join("10-prod.yaml").display().to_string(),
    ]);
    code(&o, 3);
    let diff = out(&o);
    assert!(diff.contains("--- live/service/prod/payments"), "{diff}");
    assert!(diff.contains("+++ file/service/prod/payments"), "{diff}");
    assert!(
        diff.lines().any(|l| l == "-  port: 8080") && diff.lines().any(|l| l == "+  port: 9090"),
        "{diff}"
    );
    assert!(
        !diff.contains("mesh/prod"),
        "an unchanged mesh is not in the diff: {diff}"
    );
    assert_eq!(rest.revision().await, applied);

    // get: a table, YAML and JSON documents, which apply back to no change.
    let o = run(&["get", "services"]);
    code(&o, 0);
    let table = out(&o);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("payments ")), "{table}");
    let o = run(&["get", "service", "payments", "-o", "yaml"]);
    code(&o, 0);
    let doc: Value = serde_yaml_ng::from_str(out(&o).trim_start_matches("---\n")).unwrap();
    assert_eq!(
        doc,
        json!({"apiVersion": "switchboard/v1", "kind": "service", "mesh": "prod",
            "name": "payments", "labels": {"switchboard.dev/managed-by": "apply"},
            "spec": doc["spec"].clone()})
    );
    assert_eq!(doc["spec"]["port"], 8080);
    let o = run(&["get", "meshes", "-o", "json"]);
    code(&o, 0);
    let list: Value = serde_json::from_str(&out(&o)).unwrap();
    let names: Vec<&str> = list["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["prod", "staging"]);
    let o = run(&[
        "get",
        "authorization-policies",
        "--mesh",
        "staging",
        "-o",
        "json",
    ]);
    code(&o, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out(&o)).unwrap()["documents"],
        json!([])
    );
    let o = run(&["get", "services", "--mesh", "staging", "-o", "yaml"]);
    code(&o, 0);
    let o = cli(&config, &["apply", "-f", "-"], Some(&out(&o)));
    code(&o, 0);
    assert!(
        err(&o).contains("1 unchanged; nothing changed"),
        "{}",
        err(&o)
    );
    assert_eq!(rest.revision().await, applied);

    // A bad document (the second of its file, in another mesh than the first): the error
    // names the file, the document and the field, and nothing of the file is applied.
    let bad = d.join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: service\nmesh: staging\nname: api\nspec: {port: 81}\n---\n\
         kind: service\nmesh: prod\nname: broken\nspec:\n  port: 80\n  colour: red\n",
    )
    .unwrap();
    let bad_s = bad.display().to_string();
    let line = one_line_failure(&run(&["apply", "-f", &bad_s]));
    assert!(
        line.starts_with(&format!("switchboard apply: {bad_s}: document 2: spec")),
        "{line}"
    );
    assert!(line.contains("colour"), "{line}");
    assert!(!rest.exists("staging/services/api").await);
    assert_eq!(rest.revision().await, applied);
    // A syntax error names its document too.
    std::fs::write(&bad, "kind: mesh\nname: a\n---\nkind: [\n").unwrap();
    let line = one_line_failure(&run(&["apply", "-f", &bad_s]));
    assert!(line.contains(&format!("{bad_s}: document 2:")), "{line}");

    // apply --prune: the route's file is gone from the repository. `diff --prune` shows the
    // route going, `apply --prune` deletes it and nothing written another way, then changes
    // nothing; files naming only staging leave prod alone.
    rest.ok(
        Method::PUT,
        "/v1/tenants/acme/meshes/prod/services/by-hand",
        Some(json!({"spec": {"port": 81}})),
    )
    .await;
    std::fs::remove_file(repo.join("20-routes.json")).unwrap();
    let o = run(&["diff", "--prune", "-f", &repo_s]);
    code(&o, 3);
    assert!(out(&o).contains("--- live/route/prod/pay"), "{}", out(&o));
    assert!(!out(&o).contains("by-hand"), "{}", out(&o));
    let o = run(&["apply", "--prune", "-f", &repo_s]);
    code(&o, 0);
    assert!(
        out(&o).lines().any(|l| l == "route prod/pay deleted"),
        "{}",
        out(&o)
    );
    assert!(err(&o).contains("1 deleted"), "{}", err(&o));
    assert!(!rest.exists("prod/routes/pay").await);
    assert!(rest.exists("prod/services/by-hand").await);
    let pruned = rest.revision().await;
    let o = run(&["apply", "--prune", "-f", &repo_s]);
    code(&o, 0);
    assert!(err(&o).contains("nothing changed"), "{}", err(&o));
    let staging = d.join("staging.yaml");
    std::fs::write(
        &staging,
        "kind: mesh\nname: staging\n---\nkind: service\nmesh: staging\nname: web\nspec: {port: 80}\n",
    )
    .unwrap();
    let o = run(&["apply", "--prune", "-f", &staging.display().to_string()]);
    code(&o, 0);
    assert!(err(&o).contains("nothing changed"), "{}", err(&o));
    assert!(rest.exists("prod/services/payments").await);
    assert_eq!(rest.revision().await, pruned);

    // delete, then the resource is gone (get: exit 1, one line).
    let o = run(&["delete", "service", "web", "--mesh", "staging"]);
    code(&o, 0);
    assert_eq!(out(&o), "service staging/web deleted\n");
    one_line_failure(&run(&["get", "service", "web", "--mesh", "staging"]));
    assert!(rest.revision().await > pruned);

    // status and rollout: one proxy ACKs, one NACKs.
    let pt = rest
        .ok(
            Method::POST,
            "/v1/tenants/acme/proxy-tokens",
            Some(json!({"mesh": "prod"})),
        )
        .await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut good = AdsClient::connect(&server.xds_url(), node("acme", "prod", "good"), Some(&pt))
        .await
        .unwrap();
    good.subscribe(CLUSTER, &[]).await.unwrap();
    good.recv_and_ack(&[]).await.unwrap();
    let mut nacker =
        AdsClient::connect(&server.xds_url(), node("acme", "prod", "nacker"), Some(&pt))
            .await
            .unwrap();
    nacker.subscribe(CLUSTER, &[]).await.unwrap();
    let first = nacker.recv().await.unwrap();
    nacker
        .nack(&first, &[], "", "cluster payments: no thanks")
        .await
        .unwrap();
    let status = switchboard_runtime::eventually("status shows the ACK and the NACK", || {
        let o = run(&["status"]);
        async move {
            code(&o, 0);
            let t = out(&o);
            (t.contains("good ") && t.contains("CDS:ACK") && t.contains("CDS:NACK")).then_some(t)
        }
    })
    .await;
    assert!(status.starts_with("NODE"), "{status}");
    assert!(
        status.contains("nacker NACKed CDS of revision") && status.contains("no thanks"),
        "{status}"
    );
    let o = run(&["status", "-o", "json"]);
    code(&o, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out(&o)).unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let o = run(&["rollout"]);
    code(&o, 0);
    let r = out(&o);
    assert!(r.contains("1/2 proxies have it"), "{r}");
    assert!(
        r.lines()
            .any(|l| l.starts_with("nacker") && l.contains("NACKED") && l.contains("no thanks")),
        "{r}"
    );
    drop((good, nacker));

    // Unreachable API and a bad key: one line, exit 1.
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let line = one_line_failure(&run(&["get", "meshes", "--api-url", &closed]));
    assert!(line.contains("cannot reach the API at"), "{line}");
    let line = one_line_failure(&run(&["get", "meshes", "--token-file", &bad_key]));
    assert!(line.starts_with("switchboard get: "), "{line}");
    assert!(!line.contains("sbk_not"), "{line}");

    // A second context becomes current; flags and the first context still reach acme.
    let o = run(&[
        "login",
        "--context",
        "other",
        "--api-url",
        &closed,
        "--token-file",
        &key_file,
        "--tenant",
        "acme",
        "--no-verify",
    ]);
    code(&o, 0);
    let o = run(&["config", "current-context"]);
    assert_eq!(out(&o), "other\n");
    one_line_failure(&run(&["get", "meshes"]));
    code(&run(&["get", "meshes", "--context", "ci"]), 0);
    code(&run(&["get", "meshes", "--api-url", &server.rest]), 0);
    code(&run(&["config", "use-context", "ci"]), 0);
    code(&run(&["get", "meshes"]), 0);
    let o = run(&["config", "use-context", "nope"]);
    code(&o, 2);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("currentContext: ci"), "{text}");

    // Bad usage: exit 2.
    code(&run(&["get", "pods"]), 2);
    code(&run(&["apply"]), 2);
    code(
        &run(&["apply", "-f", &d.join("missing.yaml").display().to_string()]),
        2,
    );
    drop(server);
}
both_backends!(the_verbs_as_ci_runs_them_, the_verbs_as_ci_runs_them);

/// An https:// API: trusted through the context's CA file, refused (one line) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, cert, key) = common::tls::certificates(d);
    let server = common::start(
        d,
        &[
            "--admin-token",
            ADMIN,
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ],
        None,
    )
    .await;
    let url = server.rest.replace("http://", "https://");
    let admin = d.join("admin.token");
    std::fs::write(&admin, ADMIN).unwrap();
    let admin = admin.display().to_string();
    let config = d.join("config");
    let o = cli(
        &config,
        &[
            "login",
            "--api-url",
            &url,
            "--token-file",
            &admin,
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        None,
    );
    code(&o, 0);
    // The admin token may create a tenant's mesh through apply.
    let https = common::tls::Https::new(&server.rest, &ca, ADMIN);
    let (status, _) = https
        .call("POST", "/v1/tenants", json!({"name": "acme"}))
        .await;
    assert_eq!(status, 201);
    let o = cli(
        &config,
        &["apply", "--tenant", "acme", "-f", "-"],
        Some("kind: mesh\nname: prod\n"),
    );
    code(&o, 0);
    let o = cli(&config, &["get", "meshes", "--tenant", "acme"], None);
    code(&o, 0);
    assert!(
        out(&o).lines().any(|l| l.starts_with("prod ")),
        "{}",
        out(&o)
    );
    // Without the CA: the platform's roots do not know it.
    let line = one_line_failure(&cli(
        &d.join("no-config"),
        &[
            "get",
            "meshes",
            "--tenant",
            "acme",
            "--api-url",
            &url,
            "--token-file",
            &admin,
        ],
        None,
    ));
    assert!(line.contains("cannot reach the API"), "{line}");
    drop(server);
}

#[test]
fn completions_and_man_pages() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    for shell in ["bash", "zsh", "fish"] {
        let o = cli(&config, &["completion", shell], None);
        code(&o, 0);
        assert!(
            out(&o).contains("switchboard") && out(&o).contains("apply"),
            "{shell}"
        );
    }
    code(&cli(&config, &["completion", "tcsh"], None), 2);
    let o = cli(&config, &["man"], None);
    code(&o, 0);
    assert!(
        out(&o).starts_with(".ie") || out(&o).contains(".TH switchboard"),
        "{}",
        out(&o)
    );
    let pages = dir.path().join("man");
    std::fs::create_dir(&pages).unwrap();
    code(
        &cli(&config, &["man", "--dir", pages.to_str().unwrap()], None),
        0,
    );
    for page in [
        "switchboard.1",
        "switchboard-apply.1",
        "switchboard-config-use-context.1",
    ] {
        assert!(pages.join(page).exists(), "{page}");
    }
}
