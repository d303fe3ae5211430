//! History, rollback and the audit log over real HTTP on both backends: each revision names
//! the API key that wrote it; a resource and a whole mesh roll back to the exact specs of a
//! revision as a new revision; bad input gets a problem naming the field; a tenant's key
//! never sees another tenant's history or audit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{ADMIN, Api};
use switchboard_store::{Backend, both_backends};

const KEK: &str = "44444444444444444444444444444444444444444444444444444444444444aa";

/// An API key of `tenant` with `description`: (secret, id).
async fn key(api: &Api, tenant: &str, description: &str) -> (String, String) {
    let (s, k) = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{tenant}/api-keys"),
            ADMIN,
            Some(json!({ "description": description })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    (
        k["secret"].as_str().unwrap().to_owned(),
        k["id"].as_str().unwrap().to_owned(),
    )
}

async fn put(api: &Api, token: &str, path: &str, spec: Value) -> Value {
    let (s, b) = api
        .call(
            Method::PUT,
            &format!("/v1/tenants/acme/meshes/{path}"),
            token,
            Some(json!({ "spec": spec })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

async fn get(api: &Api, token: &str, path: &str) -> (StatusCode, Value) {
    api.call(Method::GET, path, token, None).await
}

/// Two keys of acme (alice and CI) and a mesh `prod` written by alice: (alice, ci).
async fn setup(api: &Api) -> ((String, String), (String, String)) {
    api.tenant_key("acme").await;
    let alice = key(api, "acme", "alice's laptop").await;
    let ci = key(api, "acme", "CI pipeline").await;
    put(api, &alice.0, "prod", json!({})).await;
    (alice, ci)
}

async fn history_and_audit_name_the_credential(b: Backend) {
    let Some(api) = Api::serve(b, KEK).await else {
        return;
    };
    let (alice, ci) = setup(&api).await;
    let first = put(&api, &alice.0, "prod/services/pay", json!({"port": 8080})).await;
    let second = put(&api, &ci.0, "prod/services/pay", json!({"port": 9090})).await;
    let (s, h) = get(
        &api,
        &ci.0,
        "/v1/tenants/acme/meshes/prod/services/pay/history",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{h}");
    let items = h["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{h}");
    assert_eq!(items[0]["revision"], second["revision"]);
    assert_eq!(items[0]["op"], "update");
    assert_eq!(items[0]["spec"], second["spec"]);
    assert_eq!(
        items[0]["credential"],
        json!({"id": ci.1, "description": "CI pipeline"})
    );
    assert_eq!(items[1]["revision"], first["revision"]);
    assert_eq!(items[1]["op"], "create");
    assert_eq!(
        items[1]["credential"],
        json!({"id": alice.1, "description": "alice's laptop"})
    );
    assert!(items[0]["time"].as_str().unwrap().ends_with('Z'), "{h}");
    // Paged like other lists.
    let (_, p1) = get(
        &api,
        &ci.0,
        "/v1/tenants/acme/meshes/prod/services/pay/history?pageSize=1",
    )
    .await;
    let token = p1["nextPageToken"].as_str().unwrap();
    let (_, p2) = get(
        &api,
        &ci.0,
        &format!("/v1/tenants/acme/meshes/prod/services/pay/history?pageSize=1&pageToken={token}"),
    )
    .await;
    assert_eq!(p2["items"][0]["revision"], first["revision"]);
    assert!(p2["nextPageToken"].is_null(), "{p2}");
    // The mesh's own history.
    let (_, mh) = get(&api, &alice.0, "/v1/tenants/acme/meshes/prod/history").await;
    assert_eq!(mh["items"][0]["credential"]["id"], alice.1.as_str());

    // The audit log: newest first, by credential, with the keys the admin created.
    let (s, a) = get(&api, &alice.0, "/v1/tenants/acme/audit").await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let entries = a["items"].as_array().unwrap();
    assert_eq!(
        entries[0],
        json!({"revision": second["revision"], "time": entries[0]["time"], "mesh": "prod",
               "kind": "service", "name": "pay", "op": "update",
               "credential": {"id": ci.1, "description": "CI pipeline"}})
    );
    assert!(
        entries.iter().any(|e| e["kind"] == "api-key"
            && e["name"] == ci.1.as_str()
            && e["op"] == "create"
            && e["credential"]["id"] == "admin"),
        "{a}"
    );
    let (_, by_ci) = get(
        &api,
        &alice.0,
        &format!("/v1/tenants/acme/audit?credential={}", ci.1),
    )
    .await;
    assert_eq!(by_ci["items"].as_array().unwrap().len(), 1, "{by_ci}");
    let (_, by_mesh) = get(
        &api,
        &alice.0,
        "/v1/tenants/acme/audit?mesh=prod&pageSize=2",
    )
    .await;
    assert_eq!(by_mesh["items"].as_array().unwrap().len(), 2, "{by_mesh}");
    assert!(by_mesh["nextPageToken"].is_string(), "{by_mesh}");
    let (_, later) = get(
        &api,
        &alice.0,
        "/v1/tenants/acme/audit?since=2999-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(later["items"], json!([]));
    let (s, bad) = get(&api, &alice.0, "/v1/tenants/acme/audit?since=yesterday").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(bad["errors"][0]["field"], "since", "{bad}");
    let (s, bad) = get(&api, &alice.0, "/v1/tenants/acme/audit?pageToken=Zm9v").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(bad["errors"][0]["field"], "pageToken", "{bad}");

    // Another tenant's key sees neither, as for a tenant that does not exist.
    let other = api.tenant_key("other").await;
    for path in [
        "/v1/tenants/acme/meshes/prod/services/pay/history",
        "/v1/tenants/acme/meshes/prod/history",
        "/v1/tenants/acme/audit",
    ] {
        let (s, b) = get(&api, &other, path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {b}");
    }
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/tenants/acme/meshes/prod/services/pay/rollback",
            &other,
            Some(json!({"toRevision": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, own) = get(&api, &other, "/v1/tenants/other/audit").await;
    assert!(
        own["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != ci.1.as_str() && e["mesh"] != "prod"),
        "{own}"
    );
}
both_backends!(history_and_audit, history_and_audit_name_the_credential);

async fn rollback(api: &Api, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    api.call(
        Method::POST,
        &format!("/v1/tenants/acme/meshes/{path}"),
        token,
        Some(body),
    )
    .await
}

async fn a_resource_rolls_back_as_a_new_revision(b: Backend) {
    let Some(api) = Api::serve(b, KEK).await else {
        return;
    };
    let (alice, ci) = setup(&api).await;
    let spec = json!({"port": 8080, "description": "payments", "connectTimeout": "2s"});
    let first = put(&api, &alice.0, "prod/services/pay", spec).await;
    put(&api, &ci.0, "prod/services/pay", json!({"port": 9090})).await;
    let n = first["revision"].as_i64().unwrap();
    // A dry run writes nothing.
    let (s, dry) = rollback(
        &api,
        &ci.0,
        "prod/services/pay/rollback?dryRun=true",
        json!({"toRevision": n}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(dry["dryRun"], true);
    let (_, now) = get(&api, &ci.0, "/v1/tenants/acme/meshes/prod/services/pay").await;
    assert_eq!(now["spec"]["port"], 9090);
    let (s, done) = rollback(
        &api,
        &ci.0,
        "prod/services/pay/rollback",
        json!({"toRevision": n}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert_eq!(done["effect"], "restored");
    let (_, now) = get(&api, &ci.0, "/v1/tenants/acme/meshes/prod/services/pay").await;
    assert_eq!(now["spec"], first["spec"], "the exact spec of revision {n}");
    assert!(now["revision"].as_i64().unwrap() > n + 1, "a new revision");
    let (_, h) = get(
        &api,
        &ci.0,
        "/v1/tenants/acme/meshes/prod/services/pay/history",
    )
    .await;
    assert_eq!(h["items"][0]["revision"], now["revision"]);
    assert_eq!(h["items"][0]["credential"]["id"], ci.1.as_str());
    assert_eq!(h["items"][0]["spec"], first["spec"]);
    // Before it existed: the rollback deletes it.
    let (s, gone) = rollback(
        &api,
        &ci.0,
        "prod/services/pay/rollback",
        json!({"toRevision": n - 1}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{gone}");
    assert_eq!(gone["effect"], "deleted");
    let (s, _) = get(&api, &ci.0, "/v1/tenants/acme/meshes/prod/services/pay").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
both_backends!(resource_rollback, a_resource_rolls_back_as_a_new_revision);

async fn bad_rollbacks_get_precise_errors_and_write_nothing(b: Backend) {
    let Some(api) = Api::serve(b, KEK).await else {
        return;
    };
    let (alice, _) = setup(&api).await;
    put(&api, &alice.0, "prod/services/pay", json!({"port": 8080})).await;
    let route = put(
        &api,
        &alice.0,
        "prod/routes/pay",
        json!({"hostnames": ["pay.example"], "rules": [{"backends": [{"service": "pay"}]}]}),
    )
    .await;
    for path in ["prod/routes/pay", "prod/services/pay"] {
        let (s, _) = api
            .call(
                Method::DELETE,
                &format!("/v1/tenants/acme/meshes/{path}"),
                &alice.0,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    let (_, tenant) = get(&api, &alice.0, "/v1/tenants/acme").await;
    let n = route["revision"].as_i64().unwrap();
    let cases = [
        // The service the route refers to is gone.
        (
            "prod/routes/pay/rollback",
            json!({"toRevision": n}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec.rules[0].backends[0].service",
        ),
        (
            "prod/routes/pay/rollback",
            json!({"toRevision": -1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "toRevision",
        ),
        (
            "prod/routes/pay/rollback",
            json!({"toRevision": "3"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "toRevision",
        ),
        (
            "prod/routes/pay/rollback",
            json!({"revision": 3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "revision",
        ),
        (
            "prod/routes/pay/rollback",
            json!({"toRevision": 99999}),
            StatusCode::NOT_FOUND,
            "toRevision",
        ),
        (
            "prod/rollback",
            json!({"toRevision": 99999}),
            StatusCode::NOT_FOUND,
            "toRevision",
        ),
        (
            "prod/rollback",
            json!({"toRevision": 1}),
            StatusCode::NOT_FOUND,
            "toRevision",
        ),
    ];
    for (path, body, status, field) in cases {
        let (s, p) = rollback(&api, &alice.0, path, body.clone()).await;
        assert_eq!(s, status, "{path} {body}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{path} {body}: {p}");
    }
    // An unknown kind names the kinds.
    let (s, p) = rollback(
        &api,
        &alice.0,
        "prod/widgets/x/rollback",
        json!({"toRevision": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(p["detail"].as_str().unwrap().contains("services"), "{p}");
    let (s, _) = get(
        &api,
        &alice.0,
        "/v1/tenants/acme/meshes/prod/widgets/x/history",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Nothing was written.
    let (_, after) = get(&api, &alice.0, "/v1/tenants/acme").await;
    assert_eq!(after["revision"], tenant["revision"]);
}
both_backends!(
    bad_rollbacks,
    bad_rollbacks_get_precise_errors_and_write_nothing
);

/// Every resource of mesh prod: (kind path, name, spec), sorted.
async fn mesh_specs(api: &Api, token: &str) -> Vec<(String, String, Value)> {
    let mut all = vec![];
    let (_, m) = get(api, token, "/v1/tenants/acme/meshes/prod").await;
    all.push(("meshes".to_owned(), "prod".to_owned(), m["spec"].clone()));
    for kind in ["services", "endpoints", "routes"] {
        let (_, l) = get(api, token, &format!("/v1/tenants/acme/meshes/prod/{kind}")).await;
        for r in l["items"].as_array().unwrap() {
            all.push((
                kind.to_owned(),
                r["name"].as_str().unwrap().to_owned(),
                r["spec"].clone(),
            ));
        }
    }
    all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    all
}

async fn a_mesh_rolls_back_in_one_transaction(b: Backend) {
    let Some(api) = Api::serve(b, KEK).await else {
        return;
    };
    let (alice, ci) = setup(&api).await;
    put(&api, &alice.0, "prod/services/pay", json!({"port": 8080})).await;
    put(&api, &alice.0, "prod/services/cart", json!({"port": 8081})).await;
    put(
        &api,
        &alice.0,
        "prod/endpoints/pay-1",
        json!({"service": "pay", "address": "10.0.0.1", "port": 8080}),
    )
    .await;
    let last = put(
        &api,
        &alice.0,
        "prod/routes/shop",
        json!({"hostnames": ["shop.example"], "rules": [{"backends": [{"service": "pay", "weight": 90}, {"service": "cart", "weight": 10}]}]}),
    )
    .await;
    let then = mesh_specs(&api, &alice.0).await;
    let n = last["revision"].as_i64().unwrap();
    // A canary weight change, a service created, one deleted with its route.
    put(
        &api,
        &ci.0,
        "prod/routes/shop",
        json!({"hostnames": ["shop.example"], "rules": [{"backends": [{"service": "pay"}]}]}),
    )
    .await;
    put(&api, &ci.0, "prod/services/new", json!({"port": 7000})).await;
    for path in ["prod/routes/shop", "prod/services/cart"] {
        let (s, _) = api
            .call(
                Method::DELETE,
                &format!("/v1/tenants/acme/meshes/{path}"),
                &ci.0,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    let (_, before) = get(&api, &ci.0, "/v1/tenants/acme").await;
    let (s, dry) = rollback(
        &api,
        &ci.0,
        "prod/rollback?dryRun=true",
        json!({"toRevision": n}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert!(dry["revision"].is_null(), "{dry}");
    assert_eq!(dry["items"].as_array().unwrap().len(), 3, "{dry}");
    let (s, done) = rollback(&api, &ci.0, "prod/rollback", json!({"toRevision": n})).await;
    assert_eq!(s, StatusCode::OK, "{done}");
    let revision = before["revision"].as_i64().unwrap() + 1;
    assert_eq!(done["revision"], revision, "one new revision: {done}");
    assert_eq!(
        mesh_specs(&api, &ci.0).await,
        then,
        "the exact specs of revision {n}"
    );
    let (_, h) = get(
        &api,
        &ci.0,
        "/v1/tenants/acme/meshes/prod/routes/shop/history",
    )
    .await;
    assert_eq!(h["items"][0]["revision"], revision);
    assert_eq!(h["items"][0]["op"], "create");
    assert_eq!(h["items"][0]["credential"]["id"], ci.1.as_str());
    let (_, a) = get(
        &api,
        &alice.0,
        &format!("/v1/tenants/acme/audit?credential={}", ci.1),
    )
    .await;
    let at: Vec<_> = a["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["revision"] == revision)
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["name"].as_str().unwrap(),
                e["op"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        at.len(),
        3,
        "the rollback's writes, each under the caller's key: {a}"
    );
}
both_backends!(mesh_rollback, a_mesh_rolls_back_in_one_transaction);
