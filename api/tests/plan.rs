//! `POST …/meshes/{mesh}/plan` over real HTTP on both backends, planning with the xDS
//! server's code: a weight change, a new service and a deleted route, each with the Envoy
//! resources it changes and the connected proxies (status rows as replicas write them) that
//! would receive each; nothing written; bad input named; another tenant's key sees nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use support::Api;
use support::xds_plan::XdsPlanner;
use switchboard_store::{
    Backend, ProxyRoleRecord, ProxyRow, ProxyStatusRecord, TypeStatusRecord, both_backends,
};

const PLAN: &str = "/v1/tenants/acme/meshes/prod/plan";

fn route(weights: (u32, u32)) -> Value {
    json!({"kind": "route", "mesh": "prod", "name": "pay", "spec": {
        "hostnames": ["pay:8080"],
        "rules": [{"backends": [
            {"service": "pay-v1", "weight": weights.0},
            {"service": "pay-v2", "weight": weights.1}]}]}})
}

fn documents() -> Value {
    json!([
        {"kind": "mesh", "name": "prod", "spec": {}},
        {"kind": "service", "mesh": "prod", "name": "pay-v1", "spec": {"protocol": "grpc", "port": 8080}},
        {"kind": "service", "mesh": "prod", "name": "pay-v2", "spec": {"protocol": "grpc", "port": 8080}},
        {"kind": "endpoint", "mesh": "prod", "name": "pay-v1-a",
         "spec": {"service": "pay-v1", "address": "10.0.0.1", "port": 8080}},
        {"kind": "endpoint", "mesh": "prod", "name": "pay-v2-a",
         "spec": {"service": "pay-v2", "address": "10.0.0.2", "port": 8080}},
        route((90, 10)),
    ])
}

fn subscribed(t: &str, names: &[&str]) -> TypeStatusRecord {
    TypeStatusRecord {
        type_name: t.to_owned(),
        wildcard: names.is_empty(),
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

/// Two streams as replicas record them: a proxyless client of `pay:8080` (named
/// subscriptions) and a sidecar of `pay-v1` (wildcard).
async fn connect(api: &Api, tenant: &str) {
    let row = |node: &str, stream_id: i64, status: ProxyStatusRecord| ProxyRow {
        tenant: tenant.to_owned(),
        mesh: "prod".to_owned(),
        node: node.to_owned(),
        replica: "r1".to_owned(),
        stream_id,
        connected_since: 1,
        heartbeat: i64::MAX / 2,
        status,
    };
    let proxyless = ProxyStatusRecord {
        role: "proxyless".into(),
        role_spec: ProxyRoleRecord::Proxyless,
        types: vec![
            subscribed("LDS", &["pay:8080"]),
            subscribed("RDS", &["pay"]),
            subscribed("CDS", &["pay-v1", "pay-v2"]),
            subscribed("EDS", &["pay-v1", "pay-v2"]),
        ],
        ..Default::default()
    };
    let sidecar = ProxyStatusRecord {
        role: "sidecar of pay-v1".into(),
        role_spec: ProxyRoleRecord::Sidecar {
            service: "pay-v1".into(),
            inbound_port: 15006,
            app_port: 9000,
            outbound_port: None,
        },
        authenticated: true,
        types: ["CDS", "EDS", "LDS", "RDS"]
            .iter()
            .map(|t| subscribed(t, &[]))
            .collect(),
        ..Default::default()
    };
    api.store
        .put_proxies(&[
            row("checkout-1", 1, proxyless),
            row("pay-v1-sidecar", 2, sidecar),
        ])
        .await
        .unwrap();
}

async fn plan(api: &Api, key: &str, body: Value) -> Value {
    let (s, b) = api.call(Method::POST, PLAN, key, Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

/// The planned resource `kind name`.
fn find<'a>(plan: &'a Value, kind: &str, name: &str) -> &'a Value {
    plan["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {plan:#}"))
}

fn nodes(r: &Value) -> Vec<&str> {
    r["proxies"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect()
}

async fn revision(api: &Api, key: &str) -> i64 {
    let (s, b) = api
        .call(
            Method::GET,
            "/v1/tenants/acme/meshes/prod/routes/pay",
            key,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["revision"].as_i64().unwrap()
}

async fn plans_a_weight_change_a_new_service_and_a_deleted_route(b: Backend) {
    let Some(api) = Api::serve_with(b, &"44".repeat(32), Arc::new(XdsPlanner::default())).await
    else {
        return;
    };
    let key = api.tenant_key("acme").await;
    let (s, r) = api
        .call(
            Method::POST,
            "/v1/tenants/acme/import",
            &key,
            Some(json!({"documents": documents()})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    connect(&api, "acme").await;
    let before = revision(&api, &key).await;

    // The same documents again: nothing changes.
    let same = plan(&api, &key, json!({"documents": documents()})).await;
    assert_eq!(same["changes"], false, "{same:#}");
    assert_eq!(same["connectedProxies"], 2);

    // A weight change: the route configuration, with the weights in its diff, to both.
    let weight = plan(&api, &key, json!({"documents": [route((50, 50))]})).await;
    assert_eq!(weight["changes"], true);
    assert_eq!(weight["revision"], before);
    let rc = find(&weight, "RouteConfiguration", "pay");
    assert_eq!(rc["action"], "change");
    assert_eq!(
        rc["typeUrl"],
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    );
    let weights: Vec<(&Value, &Value)> = rc["diff"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["path"].as_str().unwrap().ends_with("/weight"))
        .map(|d| (&d["before"], &d["after"]))
        .collect();
    assert!(
        weights.contains(&(&json!(90), &json!(50))) && weights.contains(&(&json!(10), &json!(50))),
        "{rc:#}"
    );
    assert_eq!(nodes(rc), ["checkout-1", "pay-v1-sidecar"]);
    assert!(
        weight["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["action"] == "change" && r["kind"] == "RouteConfiguration"),
        "a weight changes route configurations only: {weight:#}"
    );

    // A new service: its cluster and load assignment to the sidecar (wildcard), its
    // proxyless listener to nobody yet (no client asked for it).
    let new = plan(
        &api,
        &key,
        json!({"documents": [
            {"kind": "service", "mesh": "prod", "name": "reviews", "spec": {"port": 9080}},
            {"kind": "endpoint", "mesh": "prod", "name": "reviews-a",
             "spec": {"service": "reviews", "address": "10.0.1.1", "port": 9080}}]}),
    )
    .await;
    for kind in ["Cluster", "ClusterLoadAssignment"] {
        let r = find(&new, kind, "reviews");
        assert_eq!(r["action"], "add");
        assert!(r["diff"].as_array().unwrap().is_empty());
        assert_eq!(nodes(r), ["pay-v1-sidecar"], "{r:#}");
    }
    let listener = find(&new, "Listener", "reviews:9080");
    assert_eq!(listener["action"], "add");
    assert_eq!(listener["proxies"]["count"], 0);

    // A deleted route: its listener and route configuration go, for whoever had them.
    let gone = plan(
        &api,
        &key,
        json!({"deletions": [{"kind": "route", "name": "pay"}]}),
    )
    .await;
    let l = find(&gone, "Listener", "pay:8080");
    assert_eq!(l["action"], "remove");
    assert_eq!(nodes(l), ["checkout-1"]);
    let rc = find(&gone, "RouteConfiguration", "pay");
    assert_eq!(rc["action"], "remove");
    assert_eq!(nodes(rc), ["checkout-1", "pay-v1-sidecar"]);

    // The planner held the mesh's translation for all of these (same revision) and undid
    // each change: the weight change planned again answers the same.
    let again = plan(&api, &key, json!({"documents": [route((50, 50))]})).await;
    assert_eq!(again, weight);

    // Nothing was written by any of it.
    assert_eq!(revision(&api, &key).await, before);
    let (_, stored) = api
        .call(
            Method::GET,
            "/v1/tenants/acme/meshes/prod/routes/pay",
            &key,
            None,
        )
        .await;
    assert_eq!(stored["spec"]["rules"][0]["backends"][0]["weight"], 90);
    let (_, svc) = api
        .call(
            Method::GET,
            "/v1/tenants/acme/meshes/prod/services/reviews",
            &key,
            None,
        )
        .await;
    assert_eq!(svc["status"], 404, "{svc}");
}

async fn bad_input_is_named_and_other_tenants_see_nothing(b: Backend) {
    let Some(api) = Api::serve_with(b, &"55".repeat(32), Arc::new(XdsPlanner::default())).await
    else {
        return;
    };
    let key = api.tenant_key("acme").await;
    let other = api.tenant_key("other").await;
    let (s, r) = api
        .call(
            Method::POST,
            "/v1/tenants/acme/import",
            &key,
            Some(json!({"documents": documents()})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let field = |b: &Value| {
        b["errors"][0]["field"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // A backend that does not exist: the write's own error, naming the document and field.
    let mut bad = route((1, 1));
    bad["spec"]["rules"][0]["backends"][1]["service"] = json!("missing");
    let (s, b) = api
        .call(Method::POST, PLAN, &key, Some(json!({"documents": [bad]})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(
        field(&b),
        "documents[0].spec.rules[0].backends[1].service",
        "{b}"
    );

    // A type error in a spec.
    let mut bad = route((1, 1));
    bad["spec"]["rules"][0]["backends"][0]["weight"] = json!("heavy");
    let (s, b) = api
        .call(Method::POST, PLAN, &key, Some(json!({"documents": [bad]})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        field(&b).starts_with("documents[0].spec.rules[0].backends[0].weight"),
        "{b}"
    );

    // A document of another mesh.
    let mut elsewhere = route((1, 1));
    elsewhere["mesh"] = json!("staging");
    let (s, b) = api
        .call(
            Method::POST,
            PLAN,
            &key,
            Some(json!({"documents": [elsewhere]})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(field(&b), "documents[0].mesh", "{b}");

    // Deleting what does not exist, or what something still refers to.
    let (s, b) = api
        .call(
            Method::POST,
            PLAN,
            &key,
            Some(json!({"deletions": [{"kind": "route", "name": "nope"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert!(
        b["detail"].as_str().unwrap().starts_with("deletions[0]"),
        "{b}"
    );
    let (s, b) = api
        .call(
            Method::POST,
            PLAN,
            &key,
            Some(json!({"deletions": [{"kind": "service", "name": "pay-v1"}]})),
        )
        .await;
    assert!(s.is_client_error(), "{s} {b}");
    assert!(
        b["detail"].as_str().unwrap().starts_with("deletions[0]"),
        "{b}"
    );
    let (s, b) = api
        .call(
            Method::POST,
            PLAN,
            &key,
            Some(json!({"deletions": [{"kind": "widget", "name": "x"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(field(&b), "deletions[0].kind", "{b}");

    // An unknown field, an empty body.
    let (s, b) = api
        .call(
            Method::POST,
            PLAN,
            &key,
            Some(json!({"documents": [], "prune": true})),
        )
        .await;
    assert!(s.is_client_error(), "{s} {b}");
    assert!(b["detail"].as_str().unwrap().contains("prune"), "{b}");

    // Another tenant's key: as if nothing existed; and its own mesh of that name is absent.
    let (s, _) = api
        .call(
            Method::POST,
            PLAN,
            &other,
            Some(json!({"documents": [route((1, 1))]})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/tenants/other/meshes/prod/plan",
            &other,
            Some(json!({"documents": []})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Streams of another tenant's mesh of the same name are not counted.
    connect(&api, "other").await;
    let p = plan(&api, &key, json!({"documents": [route((2, 1))]})).await;
    assert_eq!(p["connectedProxies"], 0, "{p:#}");
}

both_backends!(
    weight_service_route,
    plans_a_weight_change_a_new_service_and_a_deleted_route
);
both_backends!(
    bad_input_and_tenants,
    bad_input_is_named_and_other_tenants_see_nothing
);
