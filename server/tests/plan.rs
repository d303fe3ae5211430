//! `plan` against a real `switchboard serve` with real ADS clients, on SQLite and on
//! PostgreSQL: a weight change, a new service and a deleted route are planned (REST and
//! `switchboard plan`), then made, and what the connected clients are actually pushed is the
//! plan's resources, to the nodes it named; a plan writes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use reqwest::Method;
use serde_json::{Value, json};
use switchboard_store::{Backend, both_backends};
use switchboard_xds_proto::pb::envoy::config::cluster::v3::Cluster;
use switchboard_xds_proto::type_url::{CLUSTER, ROUTE_CONFIGURATION};
use switchboard_xds_proto::unpack;
use switchboard_xds_server::testing::{AdsClient, DeltaClient, node};

const ADMIN: &str = "plan-test-admin-token-0123456";

fn route(weights: (u32, u32)) -> Value {
    json!({"kind": "route", "mesh": "prod", "name": "pay", "spec": {
        "hostnames": ["pay:8080"],
        "rules": [{"backends": [
            {"service": "pay-v1", "weight": weights.0},
            {"service": "pay-v2", "weight": weights.1}]}]}})
}

fn mesh() -> Value {
    json!([
        {"kind": "mesh", "name": "prod", "spec": {}},
        {"kind": "service", "mesh": "prod", "name": "pay-v1", "spec": {"protocol": "grpc", "port": 8080}},
        {"kind": "service", "mesh": "prod", "name": "pay-v2", "spec": {"protocol": "grpc", "port": 8080}},
        {"kind": "endpoint", "mesh": "prod", "name": "pay-v1-a",
         "spec": {"service": "pay-v1", "address": "10.0.0.1", "port": 8080}},
        route((90, 10)),
    ])
}

fn reviews() -> Value {
    json!([
        {"kind": "service", "mesh": "prod", "name": "reviews", "spec": {"port": 9080}},
        {"kind": "endpoint", "mesh": "prod", "name": "reviews-a",
         "spec": {"service": "reviews", "address": "10.0.1.1", "port": 9080}},
    ])
}

struct Rest {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Rest {
    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, body) = common::call(
            &self.http,
            method,
            &format!("{}/v1/tenants/acme{path}", self.base),
            &self.key,
            body,
            None,
        )
        .await;
        assert!((200..300).contains(&status), "{path}: {status} {body}");
        body
    }

    async fn plan(&self, body: Value) -> Value {
        self.ok(Method::POST, "/meshes/prod/plan", Some(body)).await
    }

    async fn import(&self, documents: Value) {
        self.ok(
            Method::POST,
            "/import",
            Some(json!({ "documents": documents })),
        )
        .await;
    }

    async fn revision(&self) -> i64 {
        self.ok(Method::GET, "", None).await["revision"]
            .as_i64()
            .unwrap()
    }
}

/// `(action, kind, name, nodes)` of every planned resource.
fn summary(plan: &Value) -> Vec<(String, String, String, Vec<String>)> {
    let s = |v: &Value| v.as_str().unwrap().to_owned();
    plan["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                s(&r["action"]),
                s(&r["kind"]),
                s(&r["name"]),
                r["proxies"]["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(s)
                    .collect(),
            )
        })
        .collect()
}

/// The planned resources `nodes` receive, as `(action, kind, name)`.
fn received_by(plan: &Value, who: &str) -> Vec<(String, String, String)> {
    summary(plan)
        .into_iter()
        .filter(|(_, _, _, nodes)| nodes.iter().any(|n| n == who))
        .map(|(a, k, n, _)| (a, k, n))
        .collect()
}

fn t(a: &str, k: &str, n: &str) -> (String, String, String) {
    (a.to_owned(), k.to_owned(), n.to_owned())
}

use common::code;

async fn plans_what_the_proxies_then_receive(b: Backend) {
    let Some(db) = switchboard_store::testing::fresh(b).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_key = "77".repeat(32);
    let mut extra = vec!["--admin-token", ADMIN, "--ca-key", &ca_key];
    if b == Backend::Postgres {
        extra.extend(["--database-url", &db.url]);
    }
    let server = common::start(d, &extra, None).await;
    let http = reqwest::Client::new();
    let admin = |method, path: &str, body| {
        let url = format!("{}/v1{path}", server.rest);
        let http = http.clone();
        async move { common::call(&http, method, &url, ADMIN, Some(body), None).await }
    };
    let (s, _) = admin(Method::POST, "/tenants", json!({"name": "acme"})).await;
    assert_eq!(s, 201);
    let (_, k) = admin(Method::POST, "/tenants/acme/api-keys", json!({})).await;
    let key = k["secret"].as_str().unwrap().to_owned();
    switchboard_runtime::leaks::remember("the API key", &key);
    let rest = Rest {
        http: http.clone(),
        base: server.rest.clone(),
        key: key.clone(),
    };
    rest.import(mesh()).await;
    let pt = rest
        .ok(Method::POST, "/proxy-tokens", Some(json!({"mesh": "prod"})))
        .await["secret"]
        .as_str()
        .unwrap()
        .to_owned();

    // checkout-1: a proxyless client of `pay` (delta, so that removals are explicit);
    // watcher-1: every cluster (state of the world, wildcard).
    let mut checkout = DeltaClient::connect(
        &server.xds_url(),
        node("acme", "prod", "checkout-1"),
        Some(&pt),
    )
    .await
    .unwrap();
    checkout
        .subscribe(ROUTE_CONFIGURATION, &["pay"], &[])
        .await
        .unwrap();
    let first = checkout.recv_and_ack().await.unwrap();
    assert_eq!(first.resources[0].name, "pay");
    let mut watcher = AdsClient::connect(
        &server.xds_url(),
        node("acme", "prod", "watcher-1"),
        Some(&pt),
    )
    .await
    .unwrap();
    watcher.subscribe(CLUSTER, &[]).await.unwrap();
    watcher.recv_and_ack(&[]).await.unwrap();

    // Both streams recorded (every replica's status rows): the plan counts them.
    let weight = json!({"documents": [route((50, 50))]});
    let planned = switchboard_runtime::eventually("the plan sees both proxies", || {
        let p = rest.plan(weight.clone());
        async move {
            let p = p.await;
            (p["connectedProxies"] == 2 && !received_by(&p, "checkout-1").is_empty()).then_some(p)
        }
    })
    .await;
    let before = rest.revision().await;
    assert_eq!(
        received_by(&planned, "checkout-1"),
        [t("change", "RouteConfiguration", "pay")]
    );
    assert!(received_by(&planned, "watcher-1").is_empty(), "{planned:#}");
    assert_eq!(rest.revision().await, before, "a plan writes nothing");

    // The CLI says the same, and exits 3 for a change.
    let file = d.join("weight.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&route((50, 50))).unwrap()).unwrap();
    let key_file = d.join("key");
    std::fs::write(&key_file, &key).unwrap();
    let (f, kf) = (file.display().to_string(), key_file.display().to_string());
    let cli = |args: &[&str]| {
        let mut all = vec![
            "--api-url",
            &server.rest,
            "--token-file",
            &kf,
            "--tenant",
            "acme",
        ];
        all.extend_from_slice(args);
        common::cli(None, &[&["plan"], &all[..]].concat(), None)
    };
    let o = cli(&["-f", &f]);
    code(&o, 3);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("~ RouteConfiguration pay\n"), "{text}");
    assert!(
        text.contains("~ RouteConfiguration sidecar/outbound\n"),
        "{text}"
    );
    assert!(text.contains("→ 1 proxy: checkout-1\n"), "{text}");
    assert!(text.contains("→ 50\n"), "the weights in the diff: {text}");
    assert!(
        text.contains("Plan: 0 to add, 2 to change, 0 to remove."),
        "{text}"
    );
    let o = cli(&["-f", &f, "-o", "json"]);
    code(&o, 3);
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json[0]["mesh"], "prod");
    assert_eq!(summary(&json[0]), summary(&planned));

    // Made: checkout-1 is sent the new route configuration.
    rest.import(json!([route((50, 50))])).await;
    let pushed = checkout.recv_and_ack().await.unwrap();
    assert_eq!(pushed.type_url, ROUTE_CONFIGURATION);
    let names: Vec<&str> = pushed.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["pay"]);
    // Now nothing is left to plan: exit 0.
    let o = cli(&["-f", &f]);
    code(&o, 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("No changes"));

    // A new service: its cluster to watcher-1 (wildcard CDS), nothing to checkout-1.
    let planned = rest.plan(json!({ "documents": reviews() })).await;
    assert_eq!(
        received_by(&planned, "watcher-1"),
        [t("add", "Cluster", "reviews")]
    );
    assert!(
        received_by(&planned, "checkout-1").is_empty(),
        "{planned:#}"
    );
    rest.import(reviews()).await;
    let pushed = watcher.recv_and_ack(&[]).await.unwrap();
    let names: Vec<String> = pushed
        .resources
        .iter()
        .map(|r| unpack::<Cluster>(r).unwrap().name)
        .collect();
    assert!(names.contains(&"reviews".to_owned()), "{names:?}");

    // A deleted route: checkout-1 is told its route configuration is gone.
    let planned = rest
        .plan(json!({"deletions": [{"kind": "route", "name": "pay"}]}))
        .await;
    assert_eq!(
        received_by(&planned, "checkout-1"),
        [t("remove", "RouteConfiguration", "pay")]
    );
    let o = cli(&["--delete", "route/pay", "--mesh", "prod", "-o", "json"]);
    code(&o, 3);
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary(&json[0]), summary(&planned));
    rest.ok(Method::DELETE, "/meshes/prod/routes/pay", None)
        .await;
    let pushed = checkout.recv_and_ack().await.unwrap();
    assert_eq!(pushed.removed_resources, ["pay"]);

    // Bad input: one line naming the file, the document and the field; exit 1.
    let bad = d.join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: service\nmesh: prod\nname: x\nspec:\n  port: 80\n---\nkind: route\nmesh: prod\nname: y\nspec:\n  hostnames: [y]\n  rules: [{backends: [{service: missing}]}]\n",
    )
    .unwrap();
    let b_s = bad.display().to_string();
    let o = cli(&["-f", &b_s]);
    code(&o, 1);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with(&format!(
            "switchboard plan: {b_s}: document 2: spec.rules[0].backends[0].service"
        )),
        "{e}"
    );
    let o = cli(&["--delete", "route"]);
    code(&o, 2);
    drop((checkout, watcher));
}

both_backends!(
    plans_what_the_proxies_then_receive,
    plans_what_the_proxies_then_receive
);
