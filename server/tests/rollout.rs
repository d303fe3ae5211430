//! `GET …/meshes/{m}/rollout?revision=N` against a real xDS server and real ADS clients on
//! 127.0.0.1, on both backends: all proxies ACKed; then one NACKs (with its error), one is
//! still on the older revision (the push unanswered), one disconnected; and a bad
//! `revision` is a problem naming the parameter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use switchboard_api::{AdminToken, AppState, NodeConfigFuture, NodeConfigs, router};
use switchboard_store::testing::store;
use switchboard_store::{Backend, CredentialKind, both_backends};
use switchboard_xds_proto::type_url::CLUSTER;
use switchboard_xds_server::testing::{AdsClient, node, secret, start};
use tower::ServiceExt;

const ADMIN: &str = "rollout-test-admin-token-0123";

/// No node's configuration is asked for here.
struct NoConfigs;

impl NodeConfigs for NoConfigs {
    fn node_config<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> NodeConfigFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}

struct Api(axum::Router);

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json");
        let req = match body {
            Some(b) => req.body(Body::from(b.to_string())).unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        let resp = self.0.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        if status.is_client_error() {
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
        }
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn put(&self, path: &str, spec: Value) -> i64 {
        let (status, body) = self
            .call(Method::PUT, path, Some(json!({ "spec": spec })))
            .await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body["revision"].as_i64().unwrap()
    }

    async fn rollout(&self, query: &str) -> (StatusCode, Value) {
        self.call(
            Method::GET,
            &format!("/v1/tenants/acme/meshes/prod/rollout{query}"),
            None,
        )
        .await
    }

    /// Polls the rollout at `query` until `ok` holds for it.
    async fn rollout_until(&self, query: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        switchboard_runtime::eventually(what, || async {
            let (status, body) = self.rollout(query).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            ok(&body).then_some(body)
        })
        .await
    }
}

fn pending<'a>(rollout: &'a Value, node: &str) -> Option<&'a Value> {
    rollout["pending"]
        .as_array()?
        .iter()
        .find(|p| p["node"] == node)
}

async fn rollout_says_who_has_a_revision_and_why_not(b: Backend) {
    let Some((store, _db)) = store(b).await else {
        return;
    };
    let api = Api(router(AppState {
        store: store.clone(),
        admin: AdminToken::new(ADMIN),
        node_configs: Arc::new(NoConfigs),
        kek: Arc::new(switchboard_pki::Kek::parse(&"11".repeat(32)).unwrap()),
    }));
    let (status, _) = api
        .call(Method::POST, "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let prod = "/v1/tenants/acme/meshes/prod";
    api.put(prod, json!({})).await;
    api.put("/v1/tenants/acme/meshes/dev", json!({})).await;
    api.put(
        &format!("{prod}/services/pay"),
        json!({"port": 8080, "protocol": "grpc"}),
    )
    .await;
    let token = secret(&store, "acme", CredentialKind::ProxyToken, None)
        .await
        .unwrap();
    let server = start(store.clone()).await.unwrap();
    let mut clients = Vec::new();
    for name in ["good", "nacker", "stale", "gone"] {
        let mut c = AdsClient::connect(&server.url(), node("acme", "prod", name), Some(&token))
            .await
            .unwrap();
        c.subscribe(CLUSTER, &[]).await.unwrap();
        let first = c.recv_and_ack(&[]).await.unwrap();
        clients.push((c, first));
    }

    // Every proxy has everything: complete.
    let all = api
        .rollout_until("", "all four proxies current", |r| {
            r["acked"] == 4 && r["complete"] == true
        })
        .await;
    assert_eq!(all["proxies"], 4);
    assert_eq!(all["notAcked"], 0);
    let before = all["revision"].as_i64().unwrap();
    assert!(all["meshRevision"].as_i64().unwrap() <= before);

    // One leaves.
    let (gone, _) = clients.pop().unwrap();
    drop(gone);
    api.rollout_until("", "the disconnected proxy", |r| {
        pending(r, "gone").is_some_and(|p| p["reason"] == "disconnected")
    })
    .await;

    // A change: one proxy ACKs it, one NACKs it, one does not answer.
    let changed = api
        .put(
            &format!("{prod}/services/pay2"),
            json!({"port": 9090, "protocol": "grpc"}),
        )
        .await;
    for (i, (c, first)) in clients.iter_mut().enumerate() {
        let update = c.recv().await.unwrap();
        assert_eq!(update.type_url, CLUSTER);
        match i {
            0 => c.ack(&update, &[]).await.unwrap(),
            1 => c
                .nack(
                    &update,
                    &[],
                    &first.version_info,
                    "port 9090 is not allowed here",
                )
                .await
                .unwrap(),
            _ => {}
        }
    }
    // A later write to another mesh changes nothing for this one's proxies.
    let later = api
        .put(
            "/v1/tenants/acme/meshes/dev/services/other",
            json!({"port": 80}),
        )
        .await;
    assert!(later > changed);
    let query = format!("?revision={later}");
    let r = api
        .rollout_until(&query, "the NACK and the unanswered push", |r| {
            pending(r, "nacker").is_some_and(|p| p["reason"] == "nacked")
                && pending(r, "stale").is_some_and(|p| p["reason"] == "pushing")
        })
        .await;
    assert_eq!(r["revision"], later);
    assert_eq!(r["meshRevision"], changed, "{r}");
    assert_eq!(r["proxies"], 4);
    assert_eq!(r["acked"], 1);
    assert_eq!(r["notAcked"], 3);
    assert_eq!(r["complete"], false);
    assert!(pending(&r, "good").is_none(), "{r}");
    let nacker = pending(&r, "nacker").unwrap();
    assert_eq!(nacker["nack"]["type"], "CDS");
    assert_eq!(nacker["nack"]["error"], "port 9090 is not allowed here");
    assert_eq!(nacker["nack"]["revision"], changed);
    assert_eq!(nacker["nack"]["resources"], json!(["pay", "pay2"]));
    let stale = pending(&r, "stale").unwrap();
    assert_eq!(stale["pushing"]["type"], "CDS");
    assert_eq!(stale["pushing"]["revision"], changed);
    assert!(stale["ackedRevision"].as_i64().unwrap() < changed, "{r}");
    let gone = pending(&r, "gone").unwrap();
    assert_eq!(gone["reason"], "disconnected");
    assert!(gone["disconnectedSince"].as_str().unwrap().ends_with('Z'));

    // The revision before the change: only the disconnected proxy lacks it.
    let (status, old) = api.rollout(&format!("?revision={before}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(old["acked"], 3, "{old}");
    assert_eq!(old["pending"].as_array().unwrap().len(), 1);
    assert_eq!(old["pending"][0]["node"], "gone");

    // The proxies' status shows the revision each has everything for.
    let (status, good) = api
        .call(Method::GET, &format!("{prod}/proxies/good"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(good["streams"][0]["ackedRevision"].as_i64().unwrap() >= changed);

    // A bad revision names the parameter.
    for bad in [
        "abc".to_owned(),
        "0".to_owned(),
        "-2".to_owned(),
        "1.5".to_owned(),
        (later + 1).to_string(),
    ] {
        let (status, body) = api.rollout(&format!("?revision={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["errors"][0]["field"], "revision", "{bad}: {body}");
    }
    // An unknown mesh is not found.
    let (status, _) = api
        .call(Method::GET, "/v1/tenants/acme/meshes/nope/rollout", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop(clients);
}

both_backends!(
    rollout_says_who_has_a_revision_and_why_not,
    rollout_says_who_has_a_revision_and_why_not
);
