//! Quotas through the REST API; every test runs on SQLite and on PostgreSQL. Requests go
//! through the full router with `oneshot`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use switchboard_api::{AdminToken, AppState, NodeConfigFuture, NodeConfigs, router};
use switchboard_store::testing::{TestDb, store};
use switchboard_store::{Backend, Store, both_backends};
use tower::ServiceExt;

const ADMIN: &str = "test-admin-token-0123456789";
const Q: &str = "/v1/tenants/acme/quotas";
const M: &str = "/v1/tenants/acme/meshes/prod";

struct NoNodes;

impl NodeConfigs for NoNodes {
    fn node_config<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> NodeConfigFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}

struct Api {
    app: Router,
    store: Store,
    _db: TestDb,
}

struct Resp {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

impl Api {
    async fn new(b: Backend) -> Option<Api> {
        let (store, db) = store(b).await?;
        let app = router(AppState {
            store: store.clone(),
            admin: AdminToken::new(ADMIN),
            node_configs: Arc::new(NoNodes),
            kek: Arc::new(switchboard_pki::Kek::parse(&"11".repeat(32)).unwrap()),
        });
        Some(Api {
            app,
            store,
            _db: db,
        })
    }

    async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Resp {
        let b = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_client_error() {
            assert_eq!(
                headers["content-type"], "application/problem+json",
                "{body}"
            );
        }
        Resp {
            status,
            retry_after: headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            body,
        }
    }

    /// Creates tenant `name` with mesh `prod`; returns an API key of it.
    async fn tenant(&self, name: &str) -> String {
        let r = self
            .call(
                Method::POST,
                "/v1/tenants",
                ADMIN,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let path = format!("/v1/tenants/{name}/api-keys");
        let k = self
            .call(
                Method::POST,
                &path,
                ADMIN,
                Some(json!({"description": "t"})),
            )
            .await;
        assert_eq!(k.status, StatusCode::CREATED, "{}", k.body);
        let key = k.body["secret"].as_str().unwrap().to_owned();
        let path = format!("/v1/tenants/{name}/meshes");
        let m = self
            .call(Method::POST, &path, ADMIN, Some(json!({"name": "prod"})))
            .await;
        assert_eq!(m.status, StatusCode::CREATED, "{}", m.body);
        key
    }

    async fn set(&self, spec: Value) -> Resp {
        self.call(Method::PUT, Q, ADMIN, Some(json!({ "spec": spec })))
            .await
    }

    async fn service(&self, key: &str, name: &str, dry_run: bool) -> Resp {
        let q = if dry_run { "?dryRun=true" } else { "" };
        let body = json!({"name": name, "spec": {"port": 80}});
        self.call(Method::POST, &format!("{M}/services{q}"), key, Some(body))
            .await
    }

    async fn services(&self) -> usize {
        let page = self
            .store
            .list("acme", "prod", switchboard_model::Kind::Service, None, 1000)
            .await
            .unwrap();
        page.items.len()
    }
}

async fn admin_sets_tenant_reads(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    let other = api.tenant("globex").await;

    // Defaults until set.
    let r = api.call(Method::GET, Q, &key, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"tenant": "acme", "spec": {}, "effective": {
            "streams": 50000, "resourcesPerMesh": 10000, "writesPerSecond": 100, "writeBurst": 200
        }})
    );

    let r = api.set(json!({"streams": 5, "writeBurst": 10})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["spec"], json!({"streams": 5, "writeBurst": 10}));
    assert_eq!(r.body["effective"]["streams"], 5);
    assert_eq!(r.body["effective"]["writesPerSecond"], 100);
    assert!(r.body["updateTime"].is_string());
    // GET, edit, PUT: the read-only fields are accepted.
    let mut view = api.call(Method::GET, Q, &key, None).await.body;
    view["spec"]["resourcesPerMesh"] = json!(7);
    let r = api.call(Method::PUT, Q, ADMIN, Some(view)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["effective"]["resourcesPerMesh"], 7);

    // The tenant's key reads but does not set; another tenant's key sees nothing.
    let r = api
        .call(
            Method::PUT,
            Q,
            &key,
            Some(json!({"spec": {"streams": 1000000}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("platform admin")
    );
    for method in [Method::GET, Method::PUT] {
        let body = (method == Method::PUT).then(|| json!({"spec": {}}));
        let r = api.call(method, Q, &other, body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
        assert_eq!(r.body["detail"], "tenant \"acme\" not found");
    }
    assert_eq!(
        api.store.tenant_quotas("acme").await.unwrap().set.streams,
        Some(5)
    );
    let r = api
        .call(Method::GET, "/v1/tenants/nope/quotas", ADMIN, None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Bad values: 422 naming the field, nothing changed.
    for (spec, field, says) in [
        (json!({"streams": -1}), "spec.streams", "invalid value"),
        (
            json!({"resourcesPerMesh": "ten"}),
            "spec.resourcesPerMesh",
            "invalid type",
        ),
        (
            json!({"writesPerSecond": 0}),
            "spec.writesPerSecond",
            "must be at least 1",
        ),
        (
            json!({"writeBurst": 0}),
            "spec.writeBurst",
            "must be at least 1",
        ),
        (
            json!({"streams": 1_000_000_001u64}),
            "spec.streams",
            "must be at most 1000000000",
        ),
        (
            json!({"stream": 1}),
            "spec.stream",
            "unknown field `stream`",
        ),
    ] {
        let r = api.set(spec.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{spec}: {}",
            r.body
        );
        assert_eq!(r.body["errors"][0]["field"], field, "{spec}: {}", r.body);
        let message = r.body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(says), "{spec}: {message}");
    }
    let r = api
        .call(Method::PUT, Q, ADMIN, Some(json!({"streams": 1})))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(
        api.store.tenant_quotas("acme").await.unwrap().set.streams,
        Some(5)
    );

    // Omitted quotas return to the defaults.
    let r = api.set(json!({})).await;
    assert_eq!(r.body["spec"], json!({}));
    assert_eq!(r.body["effective"]["streams"], 50000);
}
both_backends!(admin_sets_tenant_reads_, admin_sets_tenant_reads);

async fn resources_per_mesh(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    assert_eq!(
        api.set(json!({"resourcesPerMesh": 2})).await.status,
        StatusCode::OK
    );
    for name in ["a", "b"] {
        assert_eq!(
            api.service(&key, name, false).await.status,
            StatusCode::CREATED
        );
    }
    let revision = api.store.revision("acme").await.unwrap();
    for dry_run in [false, true] {
        let r = api.service(&key, "c", dry_run).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert_eq!(r.retry_after.as_deref(), Some("60"));
        assert_eq!(r.body["type"], "urn:switchboard:problem:quota-exceeded");
        assert_eq!(r.body["status"], 429);
        assert_eq!(r.body["quota"], "resourcesPerMesh");
        assert_eq!(r.body["limit"], 2);
        assert_eq!(r.body["current"], 2);
        assert_eq!(
            r.body["detail"],
            "tenant \"acme\" has reached its quota of 2 resources in mesh \"prod\" (quota \
             resourcesPerMesh; the mesh holds 2): delete resources or ask the platform admin to \
             raise it"
        );
    }
    // Nothing written.
    assert_eq!(api.services().await, 2);
    assert_eq!(api.store.revision("acme").await.unwrap(), revision);
    // Replacing one is not a new resource.
    let r = api
        .call(
            Method::PUT,
            &format!("{M}/services/a"),
            &key,
            Some(json!({"spec": {"port": 81}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Raised by the admin: room again.
    assert_eq!(
        api.set(json!({"resourcesPerMesh": 3})).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.service(&key, "c", false).await.status,
        StatusCode::CREATED
    );
}
both_backends!(resources_per_mesh_, resources_per_mesh);

async fn writes_per_second(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    let other = api.tenant("globex").await;
    // One write a second with a burst of 3: a fourth write in a row is refused. (A test that
    // took more than a second between writes would see a token come back, so the loop
    // allows one more and checks that the limit shows up within a few writes.)
    let r = api
        .set(json!({"writesPerSecond": 1, "writeBurst": 3}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mut created = 0;
    let refused = loop {
        let r = api.service(&key, &format!("s{created}"), false).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            break r;
        }
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        created += 1;
        assert!(created <= 10, "no write was refused");
    };
    assert!(created >= 3, "the burst allows 3 writes, got {created}");
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
    assert_eq!(refused.body["quota"], "writesPerSecond");
    assert_eq!(refused.body["limit"], 1);
    assert_eq!(
        refused.body["detail"],
        "tenant \"acme\" has reached its quota of 1 REST writes per second, burst 3 (quota \
         writesPerSecond): retry after 1 s, write less often, or ask the platform admin to raise \
         it"
    );
    // Nothing written by the refused request.
    assert_eq!(api.services().await, created);
    // Reads are not writes; the admin is not limited, nor is another tenant.
    assert_eq!(
        api.call(Method::GET, M, &key, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.service(ADMIN, "by-admin", false).await.status,
        StatusCode::CREATED
    );
    let body = json!({"name": "x", "spec": {"port": 80}});
    let path = "/v1/tenants/globex/meshes/prod/services";
    let r = api
        .call(Method::POST, path, &other, Some(body.clone()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // Another tenant's key writing to acme's path gets acme's 404 and spends nothing.
    let r = api.service(&other, "x", false).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // Every kind of tenant write spends the same bucket (API keys here): within a few
    // writes, one is refused.
    let mut refused = false;
    for _ in 0..10 {
        let body = json!({"description": "k"});
        let r = api
            .call(Method::POST, "/v1/tenants/acme/api-keys", &key, Some(body))
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.body["quota"], "writesPerSecond");
            refused = true;
            break;
        }
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    assert!(refused, "API key creation is not limited");
    // A raised quota applies at once on this replica.
    let r = api
        .set(json!({"writesPerSecond": 1000, "writeBurst": 1000}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let r = api.service(&key, "after", false).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}
both_backends!(writes_per_second_, writes_per_second);
