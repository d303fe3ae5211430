//! Export and import of a tenant over real HTTP (the router served on 127.0.0.1:0), on
//! SQLite and PostgreSQL: every kind round-trips exactly (into a fresh tenant and back into
//! an emptied one), private keys only when asked and then encrypted (the CA and certificate
//! keys come back the very same), a second import changes nothing, and a bad file (a bad
//! field, a dangling reference, a wrong passphrase) changes nothing and names the document
//! and the field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{ADMIN, Api};
use switchboard_model::{Kind, Spec};
use switchboard_store::{Backend, ResourceKey, both_backends};
use time::OffsetDateTime;

const PASSPHRASE: &str = "a long enough passphrase";
static KEK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "22".repeat(32));

impl Api {
    async fn new(b: Backend) -> Option<Api> {
        Api::serve(b, &KEK).await
    }

    async fn put(&self, key: &str, path: &str, spec: Value) {
        let (s, b) = self
            .call(Method::PUT, path, key, Some(json!({"spec": spec})))
            .await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
    }

    async fn export(&self, tenant: &str, key: &str, passphrase: Option<&str>) -> Value {
        let body = match passphrase {
            Some(p) => json!({"includeSecrets": true, "passphrase": p}),
            None => json!({}),
        };
        let (s, b) = self
            .call(
                Method::POST,
                &format!("/v1/tenants/{tenant}/export"),
                key,
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b
    }

    async fn import(
        &self,
        tenant: &str,
        key: &str,
        docs: &Value,
        passphrase: Option<&str>,
        dry: bool,
    ) -> (StatusCode, Value) {
        let mut body = json!({"documents": docs});
        if let Some(p) = passphrase {
            body["passphrase"] = p.into();
        }
        let q = if dry { "?dryRun=true" } else { "" };
        self.call(
            Method::POST,
            &format!("/v1/tenants/{tenant}/import{q}"),
            key,
            Some(body),
        )
        .await
    }

    /// The tenant's revision and every resource's key and spec.
    async fn contents(&self, tenant: &str) -> (i64, Vec<(ResourceKey, Value)>) {
        let dump = self.store.tenant_dump(tenant).await.unwrap();
        let specs = dump
            .resources
            .into_iter()
            .map(|r| (r.key, r.spec))
            .collect();
        (dump.revision, specs)
    }

    /// The mesh's active CA: its id, chain, and key (DER) opened with the KEK.
    async fn ca(&self, tenant: &str, mesh: &str) -> (String, String, Vec<u8>) {
        let ca = self.store.signing_ca(tenant, mesh).await.unwrap().unwrap();
        let aad = switchboard_pki::ca_key_aad(tenant, mesh, &ca.ca.id);
        let der = self.kek.open(&ca.ca.sealed_key, &aad).unwrap();
        (ca.ca.id.clone(), ca.ca.chain_pem.clone(), der.to_vec())
    }

    async fn certificate_key(&self, tenant: &str, name: &str) -> String {
        let key = ResourceKey::new(tenant, "prod", Kind::Certificate, name);
        let stored = self.store.get(&key).await.unwrap();
        let Ok(Spec::Certificate(c)) = Spec::parse(Kind::Certificate, stored.spec) else {
            panic!("not a certificate");
        };
        let sealed = c.sealed_key().unwrap();
        switchboard_pki::open_certificate_key(
            &self.kek,
            tenant,
            "prod",
            name,
            &sealed.kek_id,
            &sealed.sealed,
        )
        .unwrap()
        .to_string()
    }
}

const SPIFFE: &str = "spiffe://acme.switchboard.local/mesh/prod/service/payments";

/// A workload certificate (chain PEM, leaf first) from the mesh's active CA, opened with the
/// KEK as the SDS issuer opens it.
async fn issue(api: &Api, tenant: &str) -> String {
    let ca = api.store.signing_ca(tenant, "prod").await.unwrap().unwrap();
    let ca = switchboard_pki::MeshCa::unseal(ca.sealed(), &api.kek).unwrap();
    ca.issue(
        SPIFFE,
        std::time::Duration::from_secs(3600),
        OffsetDateTime::now_utc(),
    )
    .unwrap()
    .chain_pem
}

/// Whether `chain_pem` verifies for client authentication against the mesh's active root now.
async fn verifies(api: &Api, tenant: &str, chain_pem: &str) -> bool {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, UnixTime};
    let root = api
        .store
        .signing_ca(tenant, "prod")
        .await
        .unwrap()
        .unwrap()
        .ca
        .root_pem;
    let root = CertificateDer::from_pem_slice(root.as_bytes()).unwrap();
    let anchor = webpki::anchor_from_trusted_cert(&root).unwrap().to_owned();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let (leaf, intermediates) = certs.split_first().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    webpki::EndEntityCert::try_from(leaf)
        .unwrap()
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            intermediates,
            UnixTime::since_unix_epoch(now),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
}

/// A server certificate for `name` signed by a fresh root: (chain PEM, key PEM).
fn server_certificate(name: &str) -> (String, String) {
    let now = OffsetDateTime::now_utc();
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.not_before = now - time::Duration::days(1);
    root_params.not_after = now + time::Duration::days(90);
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params.clone(), root_key);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
    p.not_before = root_params.not_before;
    p.not_after = root_params.not_after;
    let leaf = p.signed_by(&key, &issuer).unwrap();
    (format!("{}{}", leaf.pem(), root.pem()), key.serialize_pem())
}

/// A tenant with every kind: two meshes (one with mTLS settings), a service with two
/// endpoints, a route, a policy, a certificate and a gateway serving it.
async fn populate(api: &Api, tenant: &str, key: &str, certificate: bool) {
    let t = format!("/v1/tenants/{tenant}/meshes");
    api.put(
        key,
        &format!("{t}/prod"),
        json!({"mtls": {"mode": "permissive"}}),
    )
    .await;
    api.put(key, &format!("{t}/staging"), json!({})).await;
    let m = format!("{t}/prod");
    api.put(
        key,
        &format!("{m}/services/payments"),
        json!({"protocol": "http", "port": 8080}),
    )
    .await;
    api.put(
        key,
        &format!("{t}/staging/services/web"),
        json!({"port": 80}),
    )
    .await;
    for (n, ip) in [("payments-1", "10.0.0.1"), ("payments-2", "10.0.0.2")] {
        api.put(
            key,
            &format!("{m}/endpoints/{n}"),
            json!({"service": "payments", "address": ip, "port": 8080, "locality": {"zone": "b"}}),
        )
        .await;
    }
    api.put(
        key,
        &format!("{m}/routes/pay"),
        json!({"hostnames": ["pay.example.com"], "rules": [{"backends": [{"service": "payments"}], "timeout": "2s"}]}),
    )
    .await;
    api.put(
        key,
        &format!("{m}/authorization-policies/only-payments"),
        json!({"service": "payments", "action": "allow", "from": [{"services": ["payments"]}], "to": [{"paths": ["/pay"]}]}),
    )
    .await;
    let mut gateway = json!({"port": 8443, "protocol": "http", "routes": ["pay"]});
    if certificate {
        let (chain, pem) = server_certificate("pay.example.com");
        api.put(
            key,
            &format!("{m}/certificates/shop"),
            json!({"certificateChain": chain, "privateKey": pem}),
        )
        .await;
        gateway["tls"] = json!({"certificates": ["shop"]});
    }
    api.put(key, &format!("{m}/gateways/edge"), gateway).await;
}

/// The documents without their secrets: what must round-trip exactly.
fn plain(export: &Value) -> Vec<Value> {
    export["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let mut d = d.clone();
            d.as_object_mut().unwrap().remove("secret");
            d
        })
        .collect()
}

async fn round_trip_with_secrets(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let acme = api.tenant_key("acme").await;
    populate(&api, "acme", &acme, true).await;
    let original = api.export("acme", &acme, Some(PASSPHRASE)).await;
    assert_eq!(original["secrets"], "encrypted");
    let kinds: std::collections::BTreeSet<&str> = original["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "authorization-policy",
            "certificate",
            "endpoint",
            "gateway",
            "mesh",
            "route",
            "service"
        ]
    );
    let text = original.to_string();
    assert!(
        !text.contains("PRIVATE KEY") && text.contains("sbx1:"),
        "{text}"
    );
    assert_eq!(original["documents"][0]["kind"], "mesh");
    let ca = api.ca("acme", "prod").await;
    let cert_key = api.certificate_key("acme", "shop").await;
    let workload = issue(&api, "acme").await;
    assert!(verifies(&api, "acme", &workload).await);

    // Into a fresh tenant: everything, at one revision, with the same CA and keys.
    let other = api.tenant_key("restored").await;
    let before = api.store.revision("restored").await.unwrap();
    let (s, r) = api
        .import(
            "restored",
            &other,
            &original["documents"],
            Some(PASSPHRASE),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["revision"], before + 1, "{r}");
    let items = r["items"].as_array().unwrap();
    assert_eq!(items.len(), original["documents"].as_array().unwrap().len());
    assert!(items.iter().all(|i| i["effect"] == "created"), "{r}");
    assert!(
        items
            .iter()
            .filter(|i| i["kind"] == "mesh")
            .all(|i| i["ca"] == "restored"),
        "{r}"
    );
    let copy = api.export("restored", &other, Some(PASSPHRASE)).await;
    assert_eq!(plain(&copy), plain(&original));
    assert_eq!(
        api.ca("restored", "prod").await,
        ca,
        "the very CA, key and all"
    );
    // A workload certificate issued before the export verifies against the restored CA, and
    // one the restored CA issues verifies against the original.
    assert!(verifies(&api, "restored", &workload).await);
    assert!(verifies(&api, "acme", &issue(&api, "restored").await).await);
    assert_eq!(api.certificate_key("restored", "shop").await, cert_key);
    // Stored sealed with this server's KEK for the new tenant: never in clear.
    let (_, stored) = api.contents("restored").await;
    assert!(!format!("{stored:?}").contains("PRIVATE KEY"));

    // Again: nothing changes, no revision is taken.
    let (s, r) = api
        .import(
            "restored",
            &other,
            &copy["documents"],
            Some(PASSPHRASE),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(r.get("revision").is_none(), "{r}");
    assert!(
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["effect"] == "unchanged"),
        "{r}"
    );
    assert_eq!(api.store.revision("restored").await.unwrap(), before + 1);

    // Back into the emptied original.
    for mesh in ["prod", "staging"] {
        let (s, _) = api
            .call(
                Method::DELETE,
                &format!("/v1/tenants/acme/meshes/{mesh}"),
                &acme,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    assert!(api.contents("acme").await.1.is_empty());
    let (s, r) = api
        .import("acme", &acme, &copy["documents"], Some(PASSPHRASE), false)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let again = api.export("acme", &acme, None).await;
    assert_eq!(plain(&again), plain(&original));
    assert_eq!(api.ca("acme", "prod").await, ca);
    assert_eq!(api.certificate_key("acme", "shop").await, cert_key);
}
both_backends!(round_trip_with_secrets_, round_trip_with_secrets);

async fn round_trip_without_secrets(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let acme = api.tenant_key("acme").await;
    populate(&api, "acme", &acme, false).await;
    let original = api.export("acme", &acme, None).await;
    assert_eq!(original["secrets"], "omitted");
    assert!(
        original["notes"][0]
            .as_str()
            .unwrap()
            .contains("secrets omitted")
    );
    let text = original.to_string();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("sbx1:") && !text.contains("\"secret\""),
        "{text}"
    );
    let other = api.tenant_key("fresh").await;
    let (s, r) = api
        .import("fresh", &other, &original["documents"], None, false)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == "mesh")
            .all(|i| i["ca"] == "generated"),
        "{r}"
    );
    assert_eq!(
        plain(&api.export("fresh", &other, None).await),
        plain(&original)
    );
    // A new CA, as creating a mesh gives.
    assert_ne!(
        api.ca("fresh", "prod").await.0,
        api.ca("acme", "prod").await.0
    );
    assert!(!verifies(&api, "fresh", &issue(&api, "acme").await).await);

    // A certificate without its key imports only where that very certificate is.
    let (chain, pem) = server_certificate("shop.example.com");
    api.put(
        &acme,
        "/v1/tenants/acme/meshes/prod/certificates/shop",
        json!({"certificateChain": chain, "privateKey": pem}),
    )
    .await;
    let with_cert = api.export("acme", &acme, None).await;
    let before = api.contents("acme").await;
    let (s, r) = api
        .import("acme", &acme, &with_cert["documents"], None, false)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(r.get("revision").is_none(), "nothing changed: {r}");
    assert_eq!(api.contents("acme").await, before);
    let fresh_before = api.contents("fresh").await;
    let (s, p) = api
        .import("fresh", &other, &with_cert["documents"], None, false)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let at = with_cert["documents"]
        .as_array()
        .unwrap()
        .iter()
        .position(|d| d["kind"] == "certificate")
        .unwrap();
    assert_eq!(
        p["errors"][0]["field"],
        format!("documents[{at}].secret.privateKey"),
        "{p}"
    );
    assert_eq!(api.contents("fresh").await, fresh_before);
}
both_backends!(round_trip_without_secrets_, round_trip_without_secrets);

async fn bad_files_change_nothing(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let acme = api.tenant_key("acme").await;
    populate(&api, "acme", &acme, true).await;
    let export = api.export("acme", &acme, Some(PASSPHRASE)).await;
    let docs = export["documents"].as_array().unwrap().clone();
    let target = api.tenant_key("target").await;
    let before = api.contents("target").await;

    // A bad field in the third document.
    let mut bad = docs.clone();
    assert_eq!(bad[2]["kind"], "service");
    bad[2]["spec"]["port"] = json!("eighty");
    let (s, p) = api
        .import("target", &target, &json!(bad), Some(PASSPHRASE), false)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["errors"][0]["field"], "documents[2].spec.port", "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("documents[2] (service \"payments\")"),
        "{p}"
    );
    assert_eq!(api.contents("target").await, before);

    // A route to a service that is nowhere.
    let mut bad = docs.clone();
    let route = bad.iter().position(|d| d["kind"] == "route").unwrap();
    bad[route]["spec"]["rules"][0]["backends"][0]["service"] = json!("nope");
    let (s, p) = api
        .import("target", &target, &json!(bad), Some(PASSPHRASE), false)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(
        p["errors"][0]["field"],
        format!("documents[{route}].spec.rules[0].backends[0].service"),
        "{p}"
    );
    assert_eq!(api.contents("target").await, before);

    // A resource in a mesh that is not there.
    let (s, p) = api
        .import(
            "target",
            &target,
            &json!([{"kind": "service", "mesh": "nowhere", "name": "a", "spec": {"port": 80}}]),
            None,
            false,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["errors"][0]["field"], "documents[0].mesh", "{p}");

    // A wrong passphrase, and none.
    let (s, p) = api
        .import(
            "target",
            &target,
            &json!(docs),
            Some("not the passphrase at all"),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(
        p["errors"][0]["field"], "documents[0].secret.ca.privateKey",
        "{p}"
    );
    assert!(p["detail"].as_str().unwrap().contains("passphrase"), "{p}");
    let (s, p) = api
        .import("target", &target, &json!(docs), None, false)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(
        p["errors"][0]["field"], "documents[0].secret.ca.privateKey",
        "{p}"
    );
    // Unknown kinds and fields.
    let (s, p) = api
        .import(
            "target",
            &target,
            &json!([{"kind": "mesh", "name": "m"}, {"kind": "widget", "mesh": "m", "name": "a"}]),
            None,
            false,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["errors"][0]["field"], "documents[1].kind", "{p}");
    let (s, p) = api
        .import(
            "target",
            &target,
            &json!([{"kind": "mesh", "name": "m", "colour": "red"}]),
            None,
            false,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert!(
        p["errors"][0]["field"]
            .as_str()
            .unwrap()
            .starts_with("documents[0]"),
        "{p}"
    );
    assert_eq!(api.contents("target").await, before);

    // A dry run checks everything and writes nothing.
    let (s, r) = api
        .import("target", &target, &json!(docs), Some(PASSPHRASE), true)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["dryRun"], true);
    assert!(
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["effect"] == "created"),
        "{r}"
    );
    assert_eq!(api.contents("target").await, before);

    // Passphrase rules, and tenant isolation.
    let (s, p) = api
        .call(
            Method::POST,
            "/v1/tenants/acme/export",
            &acme,
            Some(json!({"includeSecrets": true, "passphrase": "short"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["errors"][0]["field"], "passphrase", "{p}");
    let (s, p) = api
        .call(
            Method::POST,
            "/v1/tenants/acme/export",
            &acme,
            Some(json!({"includeSecrets": true})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["errors"][0]["field"], "passphrase", "{p}");
    let (s, _) = api
        .call(Method::POST, "/v1/tenants/acme/export", &target, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .import("acme", &target, &json!(docs), Some(PASSPHRASE), false)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The admin may export any tenant, with no body at all.
    let (s, e) = api
        .call(Method::POST, "/v1/tenants/acme/export", ADMIN, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(plain(&e), plain(&export));
}
both_backends!(bad_files_change_nothing_, bad_files_change_nothing);
