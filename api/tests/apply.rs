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
