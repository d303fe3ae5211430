//! The REST API suite; every test runs on SQLite and on PostgreSQL. Requests go through the
//! full router (auth, body parsing, problem+json) with `oneshot`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use switchboard_api::{AdminToken, AppState, NodeConfigFuture, NodeConfigs, router};
use switchboard_store::testing::{TestDb, store};
use switchboard_store::{
    AckedRecord, Backend, CertificateRecord, NackRecord, ProxyRoleRecord, ProxyRow,
    ProxyStatusRecord, SentRecord, Store, TypeState, TypeStatusRecord, both_backends,
};
use tower::ServiceExt;

const ADMIN: &str = "test-admin-token-0123456789";

/// The API's port to the xDS server: node `sent-1` is being sent nothing yet, and no other
/// node is connected.
struct FakeConfigs;

impl NodeConfigs for FakeConfigs {
    fn node_config<'a>(&'a self, _: &'a str, _: &'a str, node: &'a str) -> NodeConfigFuture<'a> {
        Box::pin(async move { Ok((node == "sent-1").then(|| json!({"node": node, "types": []}))) })
    }
}

struct Api {
    app: Router,
    store: Store,
    _db: TestDb,
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Api {
    async fn new(b: Backend) -> Option<Api> {
        let (store, db) = store(b).await?;
        let app = router(AppState {
            store: store.clone(),
            admin: AdminToken::new(ADMIN),
            node_configs: Arc::new(FakeConfigs),
            kek: Arc::new(switchboard_pki::Kek::parse(&"11".repeat(32)).unwrap()),
        });
        Some(Api {
            app,
            store,
            _db: db,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<(&str, Vec<u8>)>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(path);
        if !token.is_empty() {
            b = b.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let req = match body {
            Some((ct, bytes)) => b
                .header("content-type", ct)
                .body(Body::from(bytes))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                headers["content-type"], "application/problem+json",
                "{path}: {body}"
            );
        }
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn json(&self, method: Method, path: &str, token: &str, body: Value) -> Resp {
        self.call(
            method,
            path,
            token,
            Some(("application/json", body.to_string().into_bytes())),
            &[],
        )
        .await
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, token, None, &[]).await
    }

    /// Creates a tenant with a mesh `prod` and returns an API key of it.
    async fn tenant(&self, name: &str) -> String {
        let r = self
            .json(Method::POST, "/v1/tenants", ADMIN, json!({"name": name}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let k = self
            .json(
                Method::POST,
                &format!("/v1/tenants/{name}/api-keys"),
                ADMIN,
                json!({"description": "test"}),
            )
            .await;
        assert_eq!(k.status, StatusCode::CREATED, "{}", k.body);
        let key = k.body["secret"].as_str().unwrap().to_string();
        let m = self
            .json(
                Method::POST,
                &format!("/v1/tenants/{name}/meshes"),
                &key,
                json!({"name": "prod"}),
            )
            .await;
        assert_eq!(m.status, StatusCode::CREATED, "{}", m.body);
        key
    }

    /// A fingerprint of the whole tenant as stored: revision and every resource.
    async fn fingerprint(&self, tenant: &str) -> String {
        let rev = self.store.revision(tenant).await.unwrap();
        let mut out = format!("rev={rev};");
        for mesh in self
            .store
            .list(tenant, "", switchboard_model::Kind::Mesh, None, 1000)
            .await
            .unwrap()
            .items
        {
            out.push_str(&format!("{}@{};", mesh.key.name, mesh.revision));
            let snap = self
                .store
                .mesh_snapshot(tenant, &mesh.key.name)
                .await
                .unwrap();
            for r in snap.resources {
                out.push_str(&format!(
                    "{}/{}@{}={};",
                    r.key.kind, r.key.name, r.revision, r.spec
                ));
            }
        }
        for kind in [
            switchboard_store::CredentialKind::ApiKey,
            switchboard_store::CredentialKind::ProxyToken,
        ] {
            out.push_str(&format!(
                "creds={};",
                self.store
                    .list_credentials(tenant, kind)
                    .await
                    .unwrap()
                    .len()
            ));
        }
        out
    }
}

const M: &str = "/v1/tenants/acme/meshes/prod";

async fn walkthrough(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    for (name, port) in [("payments", 8080), ("ledger", 9090)] {
        let r = api
            .json(
                Method::POST,
                &format!("{M}/services"),
                &key,
                json!({"name": name, "spec": {"port": port, "protocol": "grpc"}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(r.headers["location"], format!("{M}/services/{name}"));
        assert_eq!(r.headers["etag"], r.body["etag"].as_str().unwrap());
    }
    for (i, addr) in ["127.0.0.1", "127.0.0.2"].iter().enumerate() {
        let r = api
            .json(
                Method::PUT,
                &format!("{M}/endpoints/payments-{i}"),
                &key,
                json!({"spec": {"service": "payments", "address": addr, "port": 8080}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    // YAML works as well as JSON.
    let yaml = "name: pay\nspec:\n  hostnames: [\"payments:8080\"]\n  rules:\n  - backends:\n    - service: payments\n      weight: 80\n    - service: ledger\n      weight: 20\n";
    let r = api
        .call(
            Method::POST,
            &format!("{M}/routes"),
            &key,
            Some(("application/yaml", yaml.into())),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["spec"]["rules"][0]["backends"][1]["weight"], 20);
    let got = api.get(&format!("{M}/routes/pay"), &key).await;
    assert_eq!(got.status, StatusCode::OK);
    let etag = got.body["etag"].as_str().unwrap().to_string();
    // Update with If-Match; then the old etag is stale.
    let mut spec = got.body["spec"].clone();
    spec["rules"][0]["backends"][0]["weight"] = json!(0);
    spec["rules"][0]["backends"][1]["weight"] = json!(100);
    let r = api
        .call(
            Method::PUT,
            &format!("{M}/routes/pay"),
            &key,
            Some(("application/json", json!({"spec": spec}).to_string().into())),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_ne!(r.body["etag"], json!(etag));
    // A whole GET body can be PUT back (read-only fields are ignored).
    let whole = api.get(&format!("{M}/routes/pay"), &key).await.body;
    let r = api
        .json(Method::PUT, &format!("{M}/routes/pay"), &key, whole)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Lists paginate.
    let p1 = api.get(&format!("{M}/services?pageSize=1"), &key).await;
    assert_eq!(p1.body["items"].as_array().unwrap().len(), 1);
    let tok = p1.body["nextPageToken"].as_str().unwrap();
    let p2 = api
        .get(&format!("{M}/services?pageSize=1&pageToken={tok}"), &key)
        .await;
    assert_eq!(p2.body["items"][0]["name"], "payments");
    assert!(p2.body["nextPageToken"].is_null());
    // Dry run: validated, answered, not written.
    let before = api.fingerprint("acme").await;
    let r = api
        .json(
            Method::POST,
            &format!("{M}/services?dryRun=true"),
            &key,
            json!({"name": "dry", "spec": {"port": 1}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        api.get(&format!("{M}/services/dry"), &key).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.fingerprint("acme").await, before);
    // Deleting a referenced service names who refers to it.
    let r = api
        .call(
            Method::DELETE,
            &format!("{M}/services/ledger"),
            &key,
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.body["detail"].as_str().unwrap().contains("route \"pay\""),
        "{}",
        r.body
    );
    assert_eq!(
        r.body["errors"][0]["field"],
        "routes/pay:spec.rules[0].backends[1].service"
    );
    // The change log tells what happened since a revision.
    let ch = api.get("/v1/tenants/acme/changes?since=0", &key).await;
    assert!(
        ch.body["changes"].as_array().unwrap().len() >= 6,
        "{}",
        ch.body
    );
    // Once pruned, an old `since` is 410 Gone naming the field; the current revision works.
    let current = ch.body["revision"].as_i64().unwrap();
    api.store.prune_changes(i64::MAX).await.unwrap();
    let gone = api.get("/v1/tenants/acme/changes?since=0", &key).await;
    assert_eq!(gone.status, StatusCode::GONE, "{}", gone.body);
    assert_eq!(gone.body["errors"][0]["field"], "since");
    assert!(
        gone.body["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("revisions after {current}")),
        "{}",
        gone.body
    );
    let fresh = api
        .get(&format!("/v1/tenants/acme/changes?since={current}"), &key)
        .await;
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.body);
    // Delete, then it's gone.
    assert_eq!(
        api.call(Method::DELETE, &format!("{M}/routes/pay"), &key, None, &[])
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            &format!("{M}/services/ledger"),
            &key,
            None,
            &[]
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get(&format!("{M}/services/ledger"), &key).await.status,
        StatusCode::NOT_FOUND
    );
    // The OpenAPI document lists every kind's paths.
    let doc = api.get("/v1/openapi.json", "").await;
    assert_eq!(doc.status, StatusCode::OK);
    for p in [
        "/v1/tenants/{tenant}/meshes/{mesh}/routes/{name}",
        "/v1/tenants/{tenant}/meshes/{mesh}/services",
    ] {
        assert!(doc.body["paths"][p].is_object(), "{p}");
    }
    assert!(
        doc.body["paths"]["/v1/tenants/{tenant}/meshes/{mesh}/routes/{name}"]["put"].is_object()
    );
    assert!(
        doc.body["paths"]["/v1/tenants/{tenant}/meshes/{mesh}/routes/{name}"]["get"].is_object()
    );
    assert!(doc.body["components"]["schemas"]["RouteSpec"].is_object());
}
both_backends!(walkthrough_, walkthrough);

async fn tenant_isolation(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key_a = api.tenant("alpha").await;
    let key_b = api.tenant("beta").await;
    let bm = "/v1/tenants/beta/meshes/prod";
    assert_eq!(
        api.json(
            Method::POST,
            &format!("{bm}/services"),
            &key_b,
            json!({"name": "svc", "spec": {"port": 80}})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let tok = api
        .json(
            Method::POST,
            "/v1/tenants/beta/proxy-tokens",
            &key_b,
            json!({}),
        )
        .await;
    let tok_id = tok.body["id"].as_str().unwrap().to_string();
    let keys = api.get("/v1/tenants/beta/api-keys", &key_b).await;
    let key_id = keys.body["items"][0]["id"].as_str().unwrap().to_string();
    let before = api.fingerprint("beta").await;
    let svc = json!({"spec": {"port": 81}});
    let mut cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/tenants/beta".into(), None),
        (Method::DELETE, "/v1/tenants/beta".into(), None),
        (Method::GET, "/v1/tenants/beta/meshes".into(), None),
        (
            Method::POST,
            "/v1/tenants/beta/meshes".into(),
            Some(json!({"name": "x"})),
        ),
        (Method::GET, bm.into(), None),
        (Method::PUT, bm.into(), Some(json!({"spec": {}}))),
        (Method::DELETE, bm.into(), None),
        (Method::GET, format!("{bm}/services"), None),
        (
            Method::POST,
            format!("{bm}/services"),
            Some(json!({"name": "new", "spec": {"port": 80}})),
        ),
        (Method::GET, format!("{bm}/services/svc"), None),
        (Method::PUT, format!("{bm}/services/svc"), Some(svc.clone())),
        (Method::DELETE, format!("{bm}/services/svc"), None),
        (Method::GET, format!("{bm}/services/guessed"), None),
        (
            Method::PUT,
            format!("{bm}/services/guessed"),
            Some(svc.clone()),
        ),
    ];
    // Both credential collections: list, mint and revoke.
    for (coll, id) in [("api-keys", &key_id), ("proxy-tokens", &tok_id)] {
        let base = format!("/v1/tenants/beta/{coll}");
        cases.push((Method::GET, base.clone(), None));
        cases.push((Method::POST, base.clone(), Some(json!({}))));
        cases.push((Method::DELETE, format!("{base}/{id}"), None));
    }
    cases.extend([
        (Method::GET, "/v1/tenants/beta/changes?since=0".into(), None),
        (Method::GET, format!("{bm}/proxies"), None),
        (Method::GET, format!("{bm}/proxies/n1"), None),
        (Method::GET, format!("{bm}/proxies/n1/config"), None),
    ]);
    for (method, path, body) in cases {
        let r = match body {
            Some(v) => api.json(method.clone(), &path, &key_a, v).await,
            None => api.call(method.clone(), &path, &key_a, None, &[]).await,
        };
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            r.body
        );
        // Indistinguishable from a tenant that does not exist.
        let ghost = path.replace("/tenants/beta", "/tenants/ghost");
        let g = api.call(method.clone(), &ghost, &key_a, None, &[]).await;
        assert_eq!(g.status, StatusCode::NOT_FOUND, "{method} {ghost}");
        assert_eq!(
            r.body["detail"].as_str().unwrap().replace("beta", "ghost"),
            g.body["detail"].as_str().unwrap()
        );
    }
    let listed = api.get("/v1/tenants", &key_a).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["items"][0]["name"], "alpha");
    assert_eq!(api.fingerprint("beta").await, before, "tenant beta changed");
    // A tenant key cannot create tenants; no or bad credentials are 401.
    assert_eq!(
        api.json(Method::POST, "/v1/tenants", &key_a, json!({"name": "x"}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.get("/v1/tenants/alpha", "").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.get("/v1/tenants/alpha", "sbk_nope").await.status,
        StatusCode::UNAUTHORIZED
    );
    let pt = api
        .json(
            Method::POST,
            "/v1/tenants/alpha/proxy-tokens",
            &key_a,
            json!({"mesh": "prod"}),
        )
        .await;
    assert_eq!(
        api.get("/v1/tenants/alpha", pt.body["secret"].as_str().unwrap())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // Revoked keys stop working.
    let k2 = api
        .json(
            Method::POST,
            "/v1/tenants/alpha/api-keys",
            &key_a,
            json!({}),
        )
        .await;
    let (k2_secret, k2_id) = (
        k2.body["secret"].as_str().unwrap().to_string(),
        k2.body["id"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        api.get("/v1/tenants/alpha", &k2_secret).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            &format!("/v1/tenants/alpha/api-keys/{k2_id}"),
            &key_a,
            None,
            &[]
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get("/v1/tenants/alpha", &k2_secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Secrets are never listed.
    let list = api.get("/v1/tenants/alpha/api-keys", &key_a).await;
    assert!(
        list.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i.get("secret").is_none())
    );
}
both_backends!(tenant_isolation_, tenant_isolation);

async fn jwt_proxy_tokens(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    // Without a signing key, JWTs are off, and the answer says why.
    let off = api
        .json(
            Method::POST,
            "/v1/tenants/acme/proxy-tokens",
            &key,
            json!({"format": "jwt"}),
        )
        .await;
    assert_eq!(off.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", off.body);
    assert_eq!(off.body["errors"][0]["field"], "format");
    assert!(
        off.body.to_string().contains("proxy_jwt_key_file"),
        "{}",
        off.body
    );
    api.store
        .set_proxy_jwt_key(switchboard_store::jwt::ProxyJwtKey::new(&[3; 32]).unwrap());
    let created = api
        .json(
            Method::POST,
            "/v1/tenants/acme/proxy-tokens",
            &key,
            json!({"mesh": "prod", "format": "jwt", "expiresIn": "2h"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let jwt = created.body["secret"].as_str().unwrap();
    let claims = api.store.proxy_jwt_key().unwrap().verify(jwt).unwrap();
    assert_eq!(claims.sub, created.body["id"].as_str().unwrap());
    assert_eq!(claims.exp - claims.iat, 7200);
    assert_eq!(
        (claims.tenant.as_str(), claims.mesh.as_deref()),
        ("acme", Some("prod"))
    );
    assert!(created.body["expireTime"].is_string(), "{}", created.body);
    // Listed like any proxy token, without the secret; revoked by id.
    let list = api.get("/v1/tenants/acme/proxy-tokens", &key).await;
    assert_eq!(list.body["items"][0]["id"], created.body["id"]);
    assert!(list.body["items"][0].get("secret").is_none());
    let cases = [
        ("api-keys", json!({"format": "jwt"}), "format"),
        ("proxy-tokens", json!({"expiresIn": "1h"}), "expiresIn"),
        (
            "proxy-tokens",
            json!({"format": "jwt", "expiresIn": "10s"}),
            "expiresIn",
        ),
        (
            "proxy-tokens",
            json!({"format": "jwt", "expiresIn": "soon"}),
            "expiresIn",
        ),
        ("proxy-tokens", json!({"format": "pem"}), "format"),
    ];
    for (coll, body, field) in cases {
        let r = api
            .json(
                Method::POST,
                &format!("/v1/tenants/acme/{coll}"),
                &key,
                body.clone(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        assert_eq!(r.body["errors"][0]["field"], field, "{body}: {}", r.body);
    }
}
both_backends!(jwt_proxy_tokens_, jwt_proxy_tokens);

async fn bad_input(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    api.json(
        Method::POST,
        &format!("{M}/services"),
        &key,
        json!({"name": "pay", "spec": {"port": 80}}),
    )
    .await;
    let etag = api.get(&format!("{M}/services/pay"), &key).await.body["etag"]
        .as_str()
        .unwrap()
        .to_string();
    api.json(
        Method::PUT,
        &format!("{M}/services/pay"),
        &key,
        json!({"spec": {"port": 81}}),
    )
    .await;
    let before = api.fingerprint("acme").await;
    let svc = format!("{M}/services");
    let big = format!(
        "{{\"name\": \"big\", \"spec\": {{\"port\": 80, \"description\": \"{}\"}}}}",
        "x".repeat(1024 * 1024 + 10)
    );
    let route = |svc: &str| {
        json!({"name": "r", "spec": {"hostnames": ["a"], "rules": [{"backends": [{"service": svc}]}]}}).to_string()
    };
    // (what, method, path, content type, body, headers, expected status, field named)
    type Case<'a> = (
        &'a str,
        Method,
        String,
        &'a str,
        String,
        Vec<(&'a str, &'a str)>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("malformed JSON", Method::POST, svc.clone(), "application/json", "{\"name\": ".into(), vec![], StatusCode::BAD_REQUEST, "body"),
        ("malformed YAML", Method::POST, svc.clone(), "application/yaml", "name: [unclosed\n  spec: {".into(), vec![], StatusCode::BAD_REQUEST, "body"),
        ("unknown spec field", Method::POST, svc.clone(), "application/json", json!({"name": "x", "spec": {"port": 80, "prot": "http"}}).to_string(), vec![], StatusCode::UNPROCESSABLE_ENTITY, "spec.prot"),
        ("unknown top-level field", Method::POST, svc.clone(), "application/json", json!({"name": "x", "sepc": {}}).to_string(), vec![], StatusCode::UNPROCESSABLE_ENTITY, "sepc"),
        ("wrong type", Method::POST, svc.clone(), "application/json", json!({"name": "x", "spec": {"port": "80"}}).to_string(), vec![], StatusCode::UNPROCESSABLE_ENTITY, "spec.port"),
        ("port out of range", Method::POST, svc.clone(), "application/json", json!({"name": "x", "spec": {"port": 70000}}).to_string(), vec![], StatusCode::UNPROCESSABLE_ENTITY, "spec.port"),
        ("too large", Method::POST, svc.clone(), "application/json", big, vec![], StatusCode::PAYLOAD_TOO_LARGE, ""),
        ("invalid name", Method::POST, svc.clone(), "application/json", json!({"name": "Bad_Name", "spec": {"port": 80}}).to_string(), vec![], StatusCode::UNPROCESSABLE_ENTITY, "name"),
        ("invalid path name", Method::PUT, format!("{svc}/Bad_Name"), "application/json", json!({"spec": {"port": 80}}).to_string(), vec![], StatusCode::UNPROCESSABLE_ENTITY, "name"),
        ("dangling reference", Method::POST, format!("{M}/routes"), "application/json", route("missing"), vec![], StatusCode::UNPROCESSABLE_ENTITY, "spec.rules[0].backends[0].service"),
        ("stale If-Match", Method::PUT, format!("{svc}/pay"), "application/json", json!({"spec": {"port": 82}}).to_string(), vec![("if-match", etag.as_str())], StatusCode::PRECONDITION_FAILED, "If-Match"),
        ("If-Match on a missing resource", Method::PUT, format!("{svc}/nope"), "application/json", json!({"spec": {"port": 82}}).to_string(), vec![("if-match", "\"1\"")], StatusCode::PRECONDITION_FAILED, "If-Match"),
        ("POST of an existing name", Method::POST, svc.clone(), "application/json", json!({"name": "pay", "spec": {"port": 80}}).to_string(), vec![], StatusCode::CONFLICT, "name"),
        ("bad regex", Method::POST, format!("{M}/routes"), "application/json", json!({"name": "r", "spec": {"hostnames": ["a"], "rules": [{"matches": [{"path": {"type": "regex", "value": "a(b"}}], "backends": [{"service": "pay"}]}]}}).to_string(), vec![], StatusCode::UNPROCESSABLE_ENTITY, "spec.rules[0].matches[0].path.value"),
        ("weights sum to 0", Method::POST, format!("{M}/routes"), "application/json", json!({"name": "r", "spec": {"hostnames": ["a"], "rules": [{"backends": [{"service": "pay", "weight": 0}]}]}}).to_string(), vec![], StatusCode::UNPROCESSABLE_ENTITY, "spec.rules[0].backends"),
        ("bad duration", Method::POST, format!("{M}/routes"), "application/json", json!({"name": "r", "spec": {"hostnames": ["a"], "rules": [{"timeout": "soon", "backends": [{"service": "pay"}]}]}}).to_string(), vec![], StatusCode::UNPROCESSABLE_ENTITY, "spec.rules[0].timeout"),
        ("bad header name", Method::POST, format!("{M}/routes"), "application/json", json!({"name": "r", "spec": {"hostnames": ["a"], "rules": [{"matches": [{"headers": [{"name": "x y", "value": "1"}]}], "backends": [{"service": "pay"}]}]}}).to_string(), vec![], StatusCode::UNPROCESSABLE_ENTITY, "spec.rules[0].matches[0].headers[0].name"),
        ("unsupported media type", Method::POST, svc.clone(), "text/plain", "hello".into(), vec![], StatusCode::UNSUPPORTED_MEDIA_TYPE, ""),
        ("missing mesh", Method::POST, "/v1/tenants/acme/meshes/nope/services".into(), "application/json", json!({"name": "x", "spec": {"port": 80}}).to_string(), vec![], StatusCode::NOT_FOUND, ""),
        ("unknown kind", Method::POST, format!("{M}/widgets"), "application/json", json!({"name": "x", "spec": {}}).to_string(), vec![], StatusCode::NOT_FOUND, ""),
        ("bad pageSize", Method::GET, format!("{svc}?pageSize=0"), "application/json", "".into(), vec![], StatusCode::BAD_REQUEST, "pageSize"),
    ];
    for (what, method, path, ct, body, headers, status, field) in cases {
        let body = if body.is_empty() {
            None
        } else {
            Some((ct, body.into_bytes()))
        };
        let r = api.call(method, &path, &key, body, &headers).await;
        assert_eq!(r.status, status, "{what}: {}", r.body);
        if !field.is_empty() {
            let fields: Vec<&str> = r.body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["field"].as_str().unwrap())
                .collect();
            assert!(
                fields.contains(&field),
                "{what}: expected field {field}, got {fields:?}: {}",
                r.body
            );
        }
        assert!(
            r.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}"
        );
        assert_eq!(
            api.fingerprint("acme").await,
            before,
            "{what}: the database changed"
        );
    }
    // Two hostnames claimed by two routes of one mesh.
    let ok = api.json(Method::POST, &format!("{M}/routes"), &key, json!({"name": "r1", "spec": {"hostnames": ["a"], "rules": [{"backends": [{"service": "pay"}]}]}})).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let before = api.fingerprint("acme").await;
    let dup = api.json(Method::POST, &format!("{M}/routes"), &key, json!({"name": "r2", "spec": {"hostnames": ["b", "a"], "rules": [{"backends": [{"service": "pay"}]}]}})).await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{}", dup.body);
    assert_eq!(dup.body["errors"][0]["field"], "spec.hostnames[1]");
    assert_eq!(api.fingerprint("acme").await, before);
}
both_backends!(bad_input_, bad_input);

async fn concurrent_writers(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    let r = api
        .json(
            Method::POST,
            &format!("{M}/services"),
            &key,
            json!({"name": "pay", "spec": {"port": 80}}),
        )
        .await;
    let mut etag = r.body["etag"].as_str().unwrap().to_string();
    let api = std::sync::Arc::new(api);
    for round in 0..5 {
        let mut tasks = vec![];
        for i in 0..2 {
            let (api, key, etag) = (api.clone(), key.clone(), etag.clone());
            tasks.push(tokio::spawn(async move {
                let body = json!({"spec": {"port": 100 + round * 2 + i}})
                    .to_string()
                    .into_bytes();
                api.call(
                    Method::PUT,
                    &format!("{M}/services/pay"),
                    &key,
                    Some(("application/json", body)),
                    &[("if-match", &etag)],
                )
                .await
            }));
        }
        let mut statuses = vec![];
        for t in tasks {
            let r = t.await.unwrap();
            if r.status == StatusCode::OK {
                etag = r.body["etag"].as_str().unwrap().to_string();
            }
            statuses.push(r.status);
        }
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::PRECONDITION_FAILED],
            "round {round}"
        );
    }
    let now = api.get(&format!("{M}/services/pay"), &key).await;
    assert_eq!(now.body["etag"], json!(etag));
}
both_backends!(concurrent_writers_, concurrent_writers);

/// The proxies' status as recorded by the xDS server, shown in the shape clients read.
async fn proxies(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    let m = "/v1/tenants/acme/meshes/prod/proxies";
    let empty = api.get(m, &key).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert_eq!(empty.body, json!({"items": []}));
    assert_eq!(
        api.get(&format!("{m}/n1"), &key).await.status,
        StatusCode::NOT_FOUND
    );
    let status = ProxyStatusRecord {
        role: "sidecar of pay".into(),
        role_spec: ProxyRoleRecord::Sidecar {
            service: "pay".into(),
            inbound_port: 15006,
            app_port: 8080,
            outbound_port: Some(15001),
        },
        service: "ADS".into(),
        authenticated: true,
        user_agent: "envoy 1.30".into(),
        types: vec![TypeStatusRecord {
            type_name: "CDS".into(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            state: TypeState::Nacked,
            wildcard: true,
            names: vec![],
            sent: Some(SentRecord {
                version: "v2".into(),
                nonce: "2".into(),
                revision: 7,
                time: 1_700_000_000_500,
            }),
            acked: Some(AckedRecord {
                version: "v1".into(),
                revision: 6,
                time: 1_700_000_000_400,
            }),
            nack: Some(NackRecord {
                version: "v2".into(),
                revision: 7,
                error: "cluster rejected".into(),
                resources: vec!["pay".into()],
                time: 1_700_000_000_600,
            }),
        }],
        certificate: Some(CertificateRecord {
            serial: "0af3".into(),
            spiffe_id: "spiffe://acme.switchboard.local/mesh/prod/service/pay".into(),
            not_after: "2023-11-15T22:13:20Z".into(),
        }),
        acked_revision: Some(6),
    };
    api.store
        .put_proxies(&[ProxyRow {
            tenant: "acme".into(),
            mesh: "prod".into(),
            node: "n1".into(),
            replica: "r1".into(),
            stream_id: 3,
            connected_since: 1_700_000_000_000,
            heartbeat: i64::MAX / 2,
            status,
        }])
        .await
        .unwrap();
    let stream = json!({
        "node": "n1",
        "nodeId": "tenants/acme/meshes/prod/nodes/n1",
        "replica": "r1",
        "streamId": 3,
        "connectedSince": "2023-11-14T22:13:20.000Z",
        "role": "sidecar of pay",
        "roleSpec": {"kind": "sidecar", "service": "pay", "inboundPort": 15006, "appPort": 8080, "outboundPort": 15001},
        "service": "ADS",
        "authenticated": true,
        "userAgent": "envoy 1.30",
        "types": [{
            "type": "CDS",
            "typeUrl": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "state": "NACKED",
            "wildcard": true,
            "names": [],
            "sent": {"version": "v2", "nonce": "2", "revision": 7, "time": 1_700_000_000_500i64},
            "acked": {"version": "v1", "revision": 6, "time": 1_700_000_000_400i64},
            "nack": {"version": "v2", "revision": 7, "error": "cluster rejected", "resources": ["pay"], "time": 1_700_000_000_600i64},
        }],
        "certificate": {
            "serial": "0af3",
            "spiffeId": "spiffe://acme.switchboard.local/mesh/prod/service/pay",
            "notAfter": "2023-11-15T22:13:20Z",
        },
        "ackedRevision": 6,
    });
    let listed = api.get(m, &key).await;
    assert_eq!(listed.body, json!({"items": [stream.clone()]}));
    let one = api.get(&format!("{m}/n1"), &key).await;
    assert_eq!(one.body, json!({"node": "n1", "streams": [stream]}));
    // What a node is sent comes through the port.
    let sent = api.get(&format!("{m}/sent-1/config"), &key).await;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.body);
    assert_eq!(sent.body, json!({"node": "sent-1", "types": []}));
    let gone = api.get(&format!("{m}/n2/config"), &key).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(
        gone.body["detail"],
        "no proxy \"n2\" is connected to mesh \"prod\""
    );
}
both_backends!(proxies_, proxies);

/// The authorization-policies kind end to end: round trip, references, the TCP rule, and
/// field errors, each refusal leaving the database as it was.
async fn authorization_policies(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    let policies = format!("{M}/authorization-policies");
    let spec = json!({"service": "b", "action": "deny", "from": [{"services": ["a"]}],
                      "to": [{"paths": ["/admin/*"], "methods": ["POST"]}]});
    let before = api.fingerprint("acme").await;
    let r = api
        .json(
            Method::POST,
            &policies,
            &key,
            json!({"name": "p", "spec": spec}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["errors"][0]["field"], "spec.service");
    assert_eq!(api.fingerprint("acme").await, before);
    for (name, protocol) in [("a", "http"), ("b", "http"), ("db", "tcp")] {
        let r = api
            .json(
                Method::POST,
                &format!("{M}/services"),
                &key,
                json!({"name": name, "spec": {"port": 80, "protocol": protocol}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = api
        .json(
            Method::POST,
            &policies,
            &key,
            json!({"name": "p", "spec": spec}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.headers["location"], format!("{policies}/p"));
    assert_eq!(r.body["spec"], spec);
    let got = api.get(&format!("{policies}/p"), &key).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["spec"], spec);
    let list = api.get(&policies, &key).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);

    let before = api.fingerprint("acme").await;
    let tcp_narrowed = json!({"service": "db", "action": "allow",
                              "from": [{"anyAuthenticated": true}], "to": [{"methods": ["GET"]}]});
    // (what, method, path, body, expected status, field named)
    let cases = [
        (
            "empty from",
            Method::POST,
            policies.clone(),
            json!({"name": "q", "spec": {"service": "b", "action": "allow", "from": []}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec.from",
        ),
        (
            "relative path",
            Method::POST,
            policies.clone(),
            json!({"name": "q", "spec": {"service": "b", "action": "allow", "from": [{"anyAuthenticated": true}], "to": [{"paths": ["admin"]}]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec.to[0].paths[0]",
        ),
        (
            "bad method",
            Method::POST,
            policies.clone(),
            json!({"name": "q", "spec": {"service": "b", "action": "allow", "from": [{"anyAuthenticated": true}], "to": [{"methods": ["GE T"]}]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec.to[0].methods[0]",
        ),
        (
            "unknown action",
            Method::POST,
            policies.clone(),
            json!({"name": "q", "spec": {"service": "b", "action": "audit", "from": [{"anyAuthenticated": true}]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec.action",
        ),
        (
            "missing source service",
            Method::POST,
            policies.clone(),
            json!({"name": "q", "spec": {"service": "b", "action": "allow", "from": [{"services": ["a", "ghost"]}]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec.from[0].services[1]",
        ),
        (
            "narrowing a tcp service",
            Method::POST,
            policies.clone(),
            json!({"name": "q", "spec": tcp_narrowed}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec.to",
        ),
        (
            "destination turned tcp",
            Method::PUT,
            format!("{M}/services/b"),
            json!({"spec": {"port": 80, "protocol": "tcp"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec.protocol",
        ),
        (
            "deleting a source",
            Method::DELETE,
            format!("{M}/services/a"),
            Value::Null,
            StatusCode::CONFLICT,
            "authorization-policies/p:spec.from[0].services[0]",
        ),
        (
            "deleting the destination",
            Method::DELETE,
            format!("{M}/services/b"),
            Value::Null,
            StatusCode::CONFLICT,
            "authorization-policies/p:spec.service",
        ),
    ];
    for (what, method, path, body, status, field) in cases {
        let body = (!body.is_null()).then(|| ("application/json", body.to_string().into_bytes()));
        let r = api.call(method, &path, &key, body, &[]).await;
        assert_eq!(r.status, status, "{what}: {}", r.body);
        let fields: Vec<&str> = r.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{what}: {fields:?}: {}", r.body);
        assert_eq!(api.fingerprint("acme").await, before, "{what}");
    }
    // From-only policies suit a TCP service; then the policy goes and its services can too.
    let r = api
        .json(
            Method::PUT,
            &format!("{policies}/db-callers"),
            &key,
            json!({"spec": {"service": "db", "action": "allow", "from": [{"services": ["a"]}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for name in ["p", "db-callers"] {
        let r = api
            .call(
                Method::DELETE,
                &format!("{policies}/{name}"),
                &key,
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }
    let r = api
        .call(Method::DELETE, &format!("{M}/services/a"), &key, None, &[])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // The change log names the kind by its token.
    let changes = api.get("/v1/tenants/acme/changes?since=0", &key).await.body;
    let policy_changes = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "authorization-policy")
        .count();
    assert_eq!(policy_changes, 4, "{changes}");
    // The OpenAPI document describes the kind.
    let doc = api.get("/v1/openapi.json", "").await.body;
    assert!(
        doc["paths"]["/v1/tenants/{tenant}/meshes/{mesh}/authorization-policies/{name}"]
            .is_object()
    );
    assert!(doc["components"]["schemas"]["AuthorizationPolicySpec"].is_object());
    assert!(doc["components"]["schemas"]["AuthorizationSource"].is_object());
}
both_backends!(authorization_policies_, authorization_policies);
