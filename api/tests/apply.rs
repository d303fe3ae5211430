//! What `switchboard apply` and `diff` need of the import endpoint, over real HTTP on both
//! backends: a dry run's items carry each spec as it would be stored (defaults filled in, a
//! certificate without its key: what a GET shows), and documents written by hand (a
//! certificate with its PEM key, not an export's encrypted secret) import a second time
//! without a change or a revision, while a new key or chain is an update.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::Api;
use switchboard_store::{Backend, both_backends};

/// A server certificate for `name` signed by a fresh root: (chain PEM, key PEM).
fn server_certificate(name: &str) -> (String, String) {
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (format!("{}{}", leaf.pem(), root.pem()), key.serialize_pem())
}

async fn import(api: &Api, key: &str, docs: &Value, dry: bool) -> Value {
    let q = if dry { "?dryRun=true" } else { "" };
    let (s, b) = api
        .call(
            Method::POST,
            &format!("/v1/tenants/acme/import{q}"),
            key,
            Some(json!({ "documents": docs })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

fn effects(r: &Value) -> Vec<&str> {
    r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["effect"].as_str().unwrap())
        .collect()
}

async fn hand_written_documents_apply_twice_without_a_change(b: Backend) {
    let Some(api) = Api::serve(b, &"33".repeat(32)).await else {
        return;
    };
    let key = api.tenant_key("acme").await;
    let (chain, pem) = server_certificate("shop.example.com");
    let docs = json!([
        {"kind": "mesh", "name": "prod"},
        {"kind": "service", "mesh": "prod", "name": "pay", "spec": {"port": 8080}},
        {"kind": "certificate", "mesh": "prod", "name": "shop",
         "spec": {"certificateChain": chain, "privateKey": pem}},
    ]);

    // A dry run into an empty tenant: what would be stored, no revision.
    let planned = import(&api, &key, &docs, true).await;
    assert_eq!(effects(&planned), ["created"; 3]);
    assert!(planned.get("revision").is_none(), "{planned}");
    let first = import(&api, &key, &docs, false).await;
    assert_eq!(effects(&first), ["created"; 3]);
    assert!(
        first["items"][0].get("spec").is_none(),
        "only a dry run carries specs"
    );
    let revision = first["revision"].as_i64().unwrap();
    for (item, path) in planned["items"].as_array().unwrap().iter().zip([
        "/v1/tenants/acme/meshes/prod",
        "/v1/tenants/acme/meshes/prod/services/pay",
        "/v1/tenants/acme/meshes/prod/certificates/shop",
    ]) {
        let (s, stored) = api.call(Method::GET, path, &key, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(item["spec"], stored["spec"], "{path}");
    }
    let cert = &planned["items"][2]["spec"];
    assert!(
        cert.get("privateKey").is_none() && cert["fingerprint"].is_string(),
        "{cert}"
    );

    // The same documents again: unchanged, no revision, in a dry run and for real.
    let again = import(&api, &key, &docs, true).await;
    assert_eq!(effects(&again), ["unchanged"; 3]);
    let again = import(&api, &key, &docs, false).await;
    assert_eq!(effects(&again), ["unchanged"; 3]);
    assert!(again.get("revision").is_none(), "{again}");
    let (_, tenant) = api.call(Method::GET, "/v1/tenants/acme", &key, None).await;
    assert_eq!(tenant["revision"], revision);

    // Another certificate under the same name is an update.
    let (chain2, pem2) = server_certificate("shop.example.com");
    let mut changed = docs.clone();
    changed[2]["spec"] = json!({"certificateChain": chain2, "privateKey": pem2});
    let r = import(&api, &key, &changed, false).await;
    assert_eq!(effects(&r), ["unchanged", "unchanged", "updated"]);
    assert!(r["revision"].as_i64().unwrap() > revision);
}
both_backends!(
    hand_written_documents_apply_twice_without_a_change_,
    hand_written_documents_apply_twice_without_a_change
);

/// `POST …/import` with `prune`, straight.
async fn prune(api: &Api, key: &str, docs: &Value, dry: bool) -> (StatusCode, Value) {
    let q = if dry { "?dryRun=true" } else { "" };
    api.call(
        Method::POST,
        &format!("/v1/tenants/acme/import{q}"),
        key,
        Some(json!({ "documents": docs, "prune": true })),
    )
    .await
}

fn managed() -> Value {
    json!({"switchboard.dev/managed-by": "apply"})
}

/// Labels are kept beside the spec (REST and import alike, checked as fields), and `prune`
/// deletes only what carries apply's label, only in the meshes the documents name, in the
/// same transaction, or nothing when a delete can't be made.
async fn labels_and_prune(b: Backend) {
    let Some(api) = Api::serve(b, &"33".repeat(32)).await else {
        return;
    };
    let key = api.tenant_key("acme").await;
    let svc = |mesh: &str, name: &str| {
        json!({"kind": "service", "mesh": mesh, "name": name, "spec": {"port": 8080},
               "labels": managed()})
    };
    let docs = json!([
        {"kind": "mesh", "name": "prod", "labels": managed()},
        svc("prod", "pay"),
        svc("prod", "old"),
        {"kind": "route", "mesh": "prod", "name": "old", "labels": managed(),
         "spec": {"hostnames": ["old.example.com"], "rules": [{"backends": [{"service": "old"}]}]}},
        {"kind": "mesh", "name": "staging", "labels": managed()},
        svc("staging", "web"),
    ]);
    import(&api, &key, &docs, false).await;
    // Written another way: never pruned.
    let (s, by_hand) = api
        .call(
            Method::PUT,
            "/v1/tenants/acme/meshes/prod/services/manual",
            &key,
            Some(json!({"spec": {"port": 81}, "labels": {"team": "payments"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{by_hand}");
    assert_eq!(by_hand["labels"], json!({"team": "payments"}));
    let (_, got) = api
        .call(
            Method::GET,
            "/v1/tenants/acme/meshes/prod/services/pay",
            &key,
            None,
        )
        .await;
    assert_eq!(got["labels"], managed());

    // A bad label is a field error, on REST and on import.
    let (s, p) = api
        .call(
            Method::PUT,
            "/v1/tenants/acme/meshes/prod/services/manual",
            &key,
            Some(json!({"spec": {"port": 81}, "labels": {"-team": "x"}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["errors"][0]["field"], "labels[\"-team\"]", "{p}");
    let mut bad = svc("prod", "pay");
    bad["labels"]["team"] = json!("not ok!");
    let (s, p) = prune(&api, &key, &json!([bad]), false).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(
        p["errors"][0]["field"], "documents[0].labels[\"team\"]",
        "{p}"
    );

    let (_, tenant) = api.call(Method::GET, "/v1/tenants/acme", &key, None).await;
    let before = tenant["revision"].as_i64().unwrap();

    // prod without `old` (service and route): a dry run says what would go, writes nothing.
    let kept = json!([{"kind": "mesh", "name": "prod", "labels": managed()}, svc("prod", "pay")]);
    let (s, planned) = prune(&api, &key, &kept, true).await;
    assert_eq!(s, StatusCode::OK, "{planned}");
    assert_eq!(
        effects(&planned),
        ["unchanged", "unchanged", "deleted", "deleted"]
    );
    let gone: Vec<(&str, &str)> = planned["items"].as_array().unwrap()[2..]
        .iter()
        .map(|i| (i["kind"].as_str().unwrap(), i["name"].as_str().unwrap()))
        .collect();
    assert_eq!(gone, [("route", "old"), ("service", "old")]);
    let (_, tenant) = api.call(Method::GET, "/v1/tenants/acme", &key, None).await;
    assert_eq!(tenant["revision"], before);

    // Pruned in one transaction (the route before the service it refers to).
    let (s, r) = prune(&api, &key, &kept, false).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        effects(&r),
        ["unchanged", "unchanged", "deleted", "deleted"]
    );
    for (path, exists) in [
        ("prod/services/old", false),
        ("prod/routes/old", false),
        ("prod/services/pay", true),
        ("prod/services/manual", true),
        ("staging/services/web", true),
    ] {
        let (s, _) = api
            .call(
                Method::GET,
                &format!("/v1/tenants/acme/meshes/{path}"),
                &key,
                None,
            )
            .await;
        assert_eq!(s == StatusCode::OK, exists, "{path}");
    }
    // Again: nothing to do, no revision.
    let (_, again) = prune(&api, &key, &kept, false).await;
    assert_eq!(effects(&again), ["unchanged", "unchanged"]);
    assert!(again.get("revision").is_none(), "{again}");

    // A prune that can't be made (a route written by hand still uses `pay`) fails whole.
    let (s, _) = api
        .call(
            Method::PUT,
            "/v1/tenants/acme/meshes/prod/routes/by-hand",
            &key,
            Some(json!({"spec": {"hostnames": ["h.example.com"],
                                 "rules": [{"backends": [{"service": "pay"}]}]}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, tenant) = api.call(Method::GET, "/v1/tenants/acme", &key, None).await;
    let before = tenant["revision"].as_i64().unwrap();
    let only_mesh = json!([{"kind": "mesh", "name": "prod", "labels": managed()},
                           svc("prod", "new")]);
    let (s, p) = prune(&api, &key, &only_mesh, false).await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.starts_with("pruning service \"pay\""), "{detail}");
    let (_, tenant) = api.call(Method::GET, "/v1/tenants/acme", &key, None).await;
    assert_eq!(tenant["revision"], before);
    let (s, _) = api
        .call(
            Method::GET,
            "/v1/tenants/acme/meshes/prod/services/new",
            &key,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
both_backends!(labels_and_prune_, labels_and_prune);
