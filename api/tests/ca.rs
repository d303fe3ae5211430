//! The mesh CA over real HTTP (the router served on 127.0.0.1:0, called with reqwest), on
//! SQLite and PostgreSQL: creation with the mesh, uploads and their errors, rotation, tenant
//! isolation, and that no log line carries a private key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use support::{ADMIN, Api};
use switchboard_model::{Kind, Spec};
use switchboard_store::{Backend, WriteOptions, both_backends};
use time::OffsetDateTime;

/// The CA key-encryption key, as configuration would give it (64 hex characters).
static KEK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "11".repeat(32));

/// Every log line of this test binary, at every level.
#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let c = Captured(Arc::new(Mutex::new(Vec::new())));
        let w = c.clone();
        tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_writer(move || w.clone())
            .init();
        c
    })
}

/// No captured log line holds a secret: a private key, the admin token, the KEK, an API key
/// or proxy token (`switchboard_runtime::leaks`).
fn assert_no_key_in_logs() {
    let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).to_string();
    assert!(!text.is_empty(), "the logs were captured");
    switchboard_runtime::leaks::remember("admin token", ADMIN);
    switchboard_runtime::leaks::remember("CA key-encryption key", &KEK);
    let leaks = switchboard_runtime::leaks::find_leaks(&text);
    assert!(
        leaks.is_empty(),
        "captured log lines hold secrets: {leaks:?}"
    );
}

impl Api {
    async fn new(b: Backend) -> Option<Api> {
        logs();
        Api::serve(b, &KEK).await
    }

    /// A tenant with an API key and a mesh `prod` created through the API.
    async fn tenant(&self, name: &str) -> String {
        let key = self.tenant_key(name).await;
        let (s, b) = self
            .call(
                Method::POST,
                &format!("/v1/tenants/{name}/meshes"),
                &key,
                Some(json!({"name": "prod"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        key
    }
}

const CA: &str = "/v1/tenants/acme/meshes/prod/ca";

/// A root and an intermediate CA it signed: (chain PEM, key PEM, root PEM).
fn intermediate(from: OffsetDateTime, to: OffsetDateTime, ca: bool) -> (String, String, String) {
    let now = OffsetDateTime::now_utc();
    let params = |cn: &str, from, to, ca| {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = from;
        p.not_after = to;
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root_params = params(
        "corp root",
        now - time::Duration::days(1),
        now + time::Duration::days(3650),
        true,
    );
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let key = KeyPair::generate().unwrap();
    let inter = params("corp mesh intermediate", from, to, ca)
        .signed_by(&key, &issuer)
        .unwrap();
    (
        format!("{}{}", inter.pem(), root.pem()),
        key.serialize_pem(),
        root.pem(),
    )
}

fn good_intermediate() -> (String, String, String) {
    let now = OffsetDateTime::now_utc();
    intermediate(
        now - time::Duration::hours(1),
        now + time::Duration::days(365),
        true,
    )
}

async fn a_mesh_gets_a_ca_with_its_creation(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    let (s, ca) = api.call(Method::GET, CA, &key, None).await;
    assert_eq!(s, StatusCode::OK, "{ca}");
    let active = &ca["active"];
    assert_eq!(active["origin"], "generated");
    assert!(
        active["subject"].as_str().unwrap().contains("mesh prod"),
        "{ca}"
    );
    assert!(
        active["rootPem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(ca["trustBundle"]["signerId"], active["id"]);
    assert_eq!(ca["trustBundle"]["rootsPem"], json!([active["rootPem"]]));
    assert!(ca.get("rotation").is_none());
    // The same CA the store holds, stored with the mesh.
    let stored = api.store.signing_ca("acme", "prod").await.unwrap().unwrap();
    assert_eq!(active["id"], stored.ca.id.as_str());
    // Reading twice changes nothing.
    let (_, again) = api.call(Method::GET, CA, &key, None).await;
    assert_eq!(again["active"]["id"], active["id"]);
    assert_no_key_in_logs();
}
both_backends!(
    a_mesh_gets_a_ca_with_its_creation_,
    a_mesh_gets_a_ca_with_its_creation
);

async fn a_mesh_older_than_cas_gets_one_when_first_needed(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    let spec = Spec::parse(Kind::Mesh, json!({})).unwrap();
    api.store
        .put_spec("acme", "", "legacy", &spec, &WriteOptions::default())
        .await
        .unwrap();
    assert!(
        api.store
            .signing_ca("acme", "legacy")
            .await
            .unwrap()
            .is_none()
    );
    let (s, ca) = api
        .call(Method::GET, "/v1/tenants/acme/meshes/legacy/ca", &key, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{ca}");
    let stored = api
        .store
        .signing_ca("acme", "legacy")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ca["active"]["id"], stored.ca.id.as_str());
    let (s, _) = api
        .call(Method::GET, "/v1/tenants/acme/meshes/nope/ca", &key, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
both_backends!(
    a_mesh_older_than_cas_gets_one_when_first_needed_,
    a_mesh_older_than_cas_gets_one_when_first_needed
);

async fn bad_uploads_are_422_naming_the_field_and_store_nothing(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    let (_, before) = api.call(Method::GET, CA, &key, None).await;
    let revision = api.store.revision("acme").await.unwrap();
    let now = OffsetDateTime::now_utc();
    let (chain, pkey, root) = good_intermediate();
    let (_, other_key, _) = good_intermediate();
    let (expired, expired_key, _) = intermediate(
        now - time::Duration::days(30),
        now - time::Duration::days(1),
        true,
    );
    let (future, future_key, _) = intermediate(
        now + time::Duration::days(1),
        now + time::Duration::days(30),
        true,
    );
    let (not_ca, not_ca_key, _) = intermediate(
        now - time::Duration::days(1),
        now + time::Duration::days(30),
        false,
    );
    let long = format!("{chain}{}", root.repeat(4));
    let rsa_chain = include_str!("../../pki/tests/fixtures/rsa1024.crt");
    let rsa_key = include_str!("../../pki/tests/fixtures/rsa1024.key");
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"certificateChain": "garbage", "privateKey": pkey}),
            "certificateChain",
            "malformed PEM",
        ),
        (
            json!({"certificateChain": chain, "privateKey": "garbage"}),
            "privateKey",
            "PKCS#8",
        ),
        (
            json!({"certificateChain": chain, "privateKey": other_key}),
            "privateKey",
            "does not match",
        ),
        (
            json!({"certificateChain": expired, "privateKey": expired_key}),
            "certificateChain",
            "expired",
        ),
        (
            json!({"certificateChain": future, "privateKey": future_key}),
            "certificateChain",
            "not valid until",
        ),
        (
            json!({"certificateChain": not_ca, "privateKey": not_ca_key}),
            "certificateChain",
            "CA:true",
        ),
        (
            json!({"certificateChain": long, "privateKey": pkey}),
            "certificateChain",
            "at most 5",
        ),
        (
            json!({"certificateChain": rsa_chain, "privateKey": rsa_key}),
            "privateKey",
            "2048",
        ),
        (json!({"privateKey": pkey}), "certificateChain", "missing"),
        (json!({"certificateChain": chain}), "privateKey", "missing"),
        (
            json!({"certificateChain": chain, "privateKey": pkey, "extra": 1}),
            "extra",
            "unknown field",
        ),
        (
            json!({"certificateChain": 5, "privateKey": pkey}),
            "certificateChain",
            "invalid type",
        ),
    ];
    for (body, field, problem) in cases {
        let (s, p) = api.call(Method::PUT, CA, &key, Some(body)).await;
        assert_eq!(
            s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field} {problem}: {p}"
        );
        assert_eq!(p["errors"][0]["field"], field, "{p}");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains(problem), "{field}: {detail}");
    }
    // A rotation to an unusable upload is refused the same way.
    let (s, p) = api
        .call(
            Method::POST,
            &format!("{CA}/rotation"),
            &key,
            Some(json!({"certificateChain": chain, "privateKey": other_key})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["errors"][0]["field"], "privateKey");
    // Nothing was stored.
    assert_eq!(api.store.revision("acme").await.unwrap(), revision);
    let (_, after) = api.call(Method::GET, CA, &key, None).await;
    assert_eq!(after, before);
    assert_no_key_in_logs();
}
both_backends!(
    bad_uploads_are_422_naming_the_field_and_store_nothing_,
    bad_uploads_are_422_naming_the_field_and_store_nothing
);

async fn an_uploaded_intermediate_replaces_the_generated_ca(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    let (chain, pkey, root) = good_intermediate();
    let (s, ca) = api
        .call(
            Method::PUT,
            CA,
            &key,
            Some(json!({"certificateChain": chain, "privateKey": pkey})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{ca}");
    assert_eq!(ca["active"]["origin"], "uploaded");
    assert!(
        ca["active"]["subject"]
            .as_str()
            .unwrap()
            .contains("corp mesh intermediate")
    );
    assert_eq!(ca["trustBundle"]["rootsPem"], json!([root]));
    let stored = api.store.signing_ca("acme", "prod").await.unwrap().unwrap();
    assert_eq!(ca["trustBundle"]["signerId"], stored.ca.id.as_str());
    // The stored key is sealed, not the PEM we sent.
    assert!(!String::from_utf8_lossy(&stored.ca.sealed_key).contains("PRIVATE"));
    assert_no_key_in_logs();
}
both_backends!(
    an_uploaded_intermediate_replaces_the_generated_ca_,
    an_uploaded_intermediate_replaces_the_generated_ca
);

async fn rotation_steps_and_their_conflicts(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    let rot = format!("{CA}/rotation");
    let (_, before) = api.call(Method::GET, CA, &key, None).await;
    let old_id = before["active"]["id"].clone();
    let old_root = before["active"]["rootPem"].clone();

    // Nothing to complete or abort yet.
    for (m, p) in [
        (Method::POST, format!("{rot}/complete")),
        (Method::DELETE, rot.clone()),
    ] {
        let (s, e) = api.call(m, &p, &key, None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{e}");
        assert!(
            e["detail"].as_str().unwrap().contains("no CA rotation"),
            "{e}"
        );
    }
    // Bad overlap.
    let (s, e) = api
        .call(Method::POST, &rot, &key, Some(json!({"overlap": "soon"})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["errors"][0]["field"], "overlap");

    // Start: a new signer, both roots trusted.
    let (s, ca) = api
        .call(Method::POST, &rot, &key, Some(json!({"overlap": "1h"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{ca}");
    assert_ne!(ca["active"]["id"], old_id);
    assert_eq!(ca["trustBundle"]["signerId"], ca["active"]["id"]);
    assert_eq!(ca["trustBundle"]["rootsPem"].as_array().unwrap().len(), 2);
    assert!(
        ca["trustBundle"]["rootsPem"]
            .as_array()
            .unwrap()
            .contains(&old_root)
    );
    assert_eq!(ca["rotation"]["phase"], "overlap");
    assert_eq!(ca["rotation"]["newCaId"], ca["active"]["id"]);
    assert_eq!(ca["rotation"]["previous"]["id"], old_id);
    assert!(
        ca["rotation"]["nextStep"]
            .as_str()
            .unwrap()
            .contains("/ca/rotation/complete")
    );
    let (_, shown) = api.call(Method::GET, CA, &key, None).await;
    assert_eq!(shown, ca);
    let snap = api.store.mesh_snapshot("acme", "prod").await.unwrap();
    assert_eq!(snap.trust.roots_pem.len(), 2);

    // While rotating: no second rotation, no upload (409 saying why).
    let (s, e) = api
        .call(Method::POST, &rot, &key, Some(json!({"overlap": "1h"})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("already in progress"),
        "{e}"
    );
    let (chain, pkey, _) = good_intermediate();
    let upload = json!({"certificateChain": chain, "privateKey": pkey});
    let (s, e) = api.call(Method::PUT, CA, &key, Some(upload.clone())).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("rotation is in progress"),
        "{e}"
    );

    // Completing inside the overlap needs force.
    let (s, e) = api
        .call(Method::POST, &format!("{rot}/complete"), &key, None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(e["detail"].as_str().unwrap().contains("force=true"), "{e}");
    let (s, done) = api
        .call(
            Method::POST,
            &format!("{rot}/complete?force=true"),
            &key,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert_eq!(done["active"]["id"], ca["active"]["id"]);
    assert_eq!(
        done["trustBundle"]["rootsPem"],
        json!([ca["active"]["rootPem"]])
    );
    assert!(done.get("rotation").is_none());

    // Rotate to an uploaded CA, then abort: back to the CA before it alone.
    let (s, up) = api.call(Method::POST, &rot, &key, Some(upload)).await;
    assert_eq!(s, StatusCode::OK, "{up}");
    assert_eq!(up["active"]["origin"], "uploaded");
    let (s, back) = api.call(Method::DELETE, &rot, &key, None).await;
    assert_eq!(s, StatusCode::OK, "{back}");
    assert_eq!(back["active"]["id"], done["active"]["id"]);
    assert_eq!(back["trustBundle"]["rootsPem"].as_array().unwrap().len(), 1);
    // An overlap already over completes without force.
    let (s, _) = api
        .call(Method::POST, &rot, &key, Some(json!({"overlap": "0s"})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, ready) = api.call(Method::GET, CA, &key, None).await;
    assert_eq!(ready["rotation"]["phase"], "ready-to-complete");
    let (s, _) = api
        .call(Method::POST, &format!("{rot}/complete"), &key, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_no_key_in_logs();
}
both_backends!(
    rotation_steps_and_their_conflicts_,
    rotation_steps_and_their_conflicts
);

async fn another_tenants_key_sees_no_ca(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let _acme = api.tenant("acme").await;
    let beta = api.tenant("beta").await;
    let (chain, pkey, _) = good_intermediate();
    let upload = json!({"certificateChain": chain, "privateKey": pkey});
    let before = api.store.list_cas("acme", "prod").await.unwrap();
    for (m, p, body) in [
        (Method::GET, CA.to_owned(), None),
        (Method::PUT, CA.to_owned(), Some(upload.clone())),
        (Method::POST, format!("{CA}/rotation"), Some(json!({}))),
        (
            Method::POST,
            format!("{CA}/rotation/complete?force=true"),
            None,
        ),
        (Method::DELETE, format!("{CA}/rotation"), None),
    ] {
        let (s, e) = api.call(m.clone(), &p, &beta, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {p}: {e}");
    }
    assert_eq!(api.store.list_cas("acme", "prod").await.unwrap(), before);
    // Its own mesh's CA is its own.
    let (s, own) = api
        .call(Method::GET, "/v1/tenants/beta/meshes/prod/ca", &beta, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(own["active"]["id"], before[0].ca.id.as_str());
}
both_backends!(
    another_tenants_key_sees_no_ca_,
    another_tenants_key_sees_no_ca
);

/// A server certificate for `names` signed by a fresh root: (chain PEM, key PEM).
fn server_certificate(
    names: &[&str],
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> (String, String) {
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.not_before = from;
    root_params.not_after = to;
    let root = root_params.self_signed(&root_key).unwrap();
    let root_chain = root.pem();
    let issuer = Issuer::new(root_params, root_key);
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.not_before = from;
    p.not_after = to;
    let leaf = p.signed_by(&key, &issuer).unwrap();
    (format!("{}{root_chain}", leaf.pem()), key.serialize_pem())
}

const CERTS: &str = "/v1/tenants/acme/meshes/prod/certificates";

/// The `certificates` kind: validated (422 naming the field, nothing stored), the key sealed
/// at rest and never shown, referenced by gateways like any resource, and isolated by tenant.
async fn gateway_certificates(b: Backend) {
    let Some(api) = Api::new(b).await else { return };
    let key = api.tenant("acme").await;
    let other = api.tenant("globex").await;
    let now = OffsetDateTime::now_utc();
    let valid = || {
        server_certificate(
            &["shop.example.com", "*.shop.example.com"],
            now - time::Duration::days(1),
            now + time::Duration::days(90),
        )
    };
    let (chain, pkey) = valid();
    let (_, other_key) = valid();
    let (expired, expired_key) = server_certificate(
        &["old.example.com"],
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let revision = api.store.revision("acme").await.unwrap();
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"certificateChain": "garbage", "privateKey": pkey}),
            "spec.certificateChain",
            "malformed PEM",
        ),
        (
            json!({"certificateChain": chain, "privateKey": other_key}),
            "spec.privateKey",
            "does not match",
        ),
        (
            json!({"certificateChain": expired, "privateKey": expired_key}),
            "spec.certificateChain",
            "expired",
        ),
        (
            json!({"certificateChain": include_str!("../../pki/tests/fixtures/rsa1024.crt"),
                   "privateKey": include_str!("../../pki/tests/fixtures/rsa1024.key")}),
            "spec.privateKey",
            "1024 bits",
        ),
        (
            json!({"certificateChain": chain, "privateKey": {"kekId": "x", "sealed": "AAAA"}}),
            "spec.privateKey",
            "PEM private key",
        ),
    ];
    for (spec, field, words) in cases {
        let (s, p) = api
            .call(
                Method::POST,
                CERTS,
                &key,
                Some(json!({"name": "shop", "spec": spec})),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{p}");
        assert!(p["detail"].as_str().unwrap().contains(words), "{p}");
    }
    assert_eq!(
        api.store.revision("acme").await.unwrap(),
        revision,
        "nothing stored"
    );

    // A gateway naming a certificate that does not exist.
    let gateway =
        json!({"name": "edge", "spec": {"port": 8443, "tls": {"certificates": ["shop"]}}});
    let (s, p) = api
        .call(
            Method::POST,
            "/v1/tenants/acme/meshes/prod/gateways",
            &key,
            Some(gateway.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["errors"][0]["field"], "spec.tls.certificates[0]", "{p}");

    let (s, c) = api
        .call(
            Method::POST,
            CERTS,
            &key,
            Some(json!({"name": "shop", "spec": {"certificateChain": chain, "privateKey": pkey}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let spec = &c["spec"];
    assert!(spec.get("privateKey").is_none(), "{c}");
    assert_eq!(
        spec["dnsNames"],
        json!(["shop.example.com", "*.shop.example.com"])
    );
    assert_eq!(spec["fingerprint"].as_str().unwrap().len(), 64);
    assert!(spec["notAfter"].as_str().unwrap().ends_with('Z'), "{c}");
    assert!(
        spec["certificateChain"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let (s, listed) = api.call(Method::GET, CERTS, &key, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        listed["items"][0]["spec"].get("privateKey").is_none(),
        "{listed}"
    );

    // At rest: sealed with the KEK, bound to the certificate's name.
    let stored = api
        .store
        .get(&switchboard_store::ResourceKey::new(
            "acme",
            "prod",
            Kind::Certificate,
            "shop",
        ))
        .await
        .unwrap();
    let raw = stored.spec.to_string();
    assert!(!raw.contains("PRIVATE KEY"), "{raw}");
    let Ok(Spec::Certificate(parsed)) = Spec::parse(Kind::Certificate, stored.spec.clone()) else {
        panic!("not a certificate: {raw}");
    };
    let sealed = parsed.sealed_key().unwrap();
    let kek = switchboard_pki::Kek::parse(&"11".repeat(32)).unwrap();
    let bytes = sealed.sealed.as_str();
    let opened =
        switchboard_pki::open_certificate_key(&kek, "acme", "prod", "shop", &sealed.kek_id, bytes)
            .unwrap();
    assert!(opened.contains("BEGIN PRIVATE KEY"));
    assert!(
        switchboard_pki::open_certificate_key(&kek, "acme", "prod", "other", &sealed.kek_id, bytes)
            .is_err()
    );

    // Referenced by a gateway: it cannot be deleted while the gateway names it.
    let (s, p) = api
        .call(
            Method::POST,
            "/v1/tenants/acme/meshes/prod/gateways",
            &key,
            Some(gateway),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let (s, p) = api
        .call(Method::DELETE, &format!("{CERTS}/shop"), &key, None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");

    // Another tenant cannot tell it exists.
    let (s, _) = api
        .call(Method::GET, &format!("{CERTS}/shop"), &other, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_no_key_in_logs();
}
both_backends!(gateway_certificates_, gateway_certificates);
