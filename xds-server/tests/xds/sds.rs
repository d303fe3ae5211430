//! SDS: `default` and `ROOTCA` over ADS and the SDS service, renewal, CA rotation, isolation
//! and redaction. Every Secret response a test receives goes through [`Who::check`], which
//! panics on a secret of another tenant, mesh or identity, or on any secret at all for an
//! anonymous stream.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::json;
use switchboard_model::Kind;
use switchboard_runtime::eventually;
use switchboard_store::CredentialKind;
use switchboard_xds_proto::pb::envoy::config::core::v3::DataSource;
use switchboard_xds_proto::pb::envoy::config::core::v3::data_source::Specifier;
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use switchboard_xds_proto::pb::envoy::service::status::v3::ClientStatusRequest;
use switchboard_xds_proto::service::csds::ClientStatusDiscoveryServiceClient;
use switchboard_xds_proto::service::sds::SecretDiscoveryServiceClient;
use switchboard_xds_proto::{DiscoveryResponse, unpack};
use switchboard_xds_server::testing::{
    AdsClient, TestIssuer, node, secret as credential, with_metadata,
};
use tonic::Code;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::common::*;

const SDS: &str = switchboard_xds_proto::type_url::SECRET;
const BOTH: &[&str] = &["default", "ROOTCA"];

/// Every log line of this test binary, to check that no key was ever logged.
pub(crate) fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Capture(Arc::clone(&writer)))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Panics if any captured log line holds a secret: key material, a proxy token, a JWT
/// (`switchboard_runtime::leaks`).
pub(crate) fn assert_no_key_logged() {
    let logs = logs().lock().unwrap();
    let text = String::from_utf8_lossy(&logs);
    assert!(!text.is_empty(), "the capture works");
    let leaks = switchboard_runtime::leaks::find_leaks(&text);
    assert!(
        leaks.is_empty(),
        "captured log lines hold secrets: {leaks:?}"
    );
}

/// A store and a server whose mesh CA is a fresh [`TestIssuer`].
async fn sds_env() -> (Env, Arc<TestIssuer>) {
    logs();
    let issuer = TestIssuer::new();
    let env = env_with(Some(Arc::clone(&issuer))).await;
    (env, issuer)
}

/// Which service of the xDS port a client uses.
#[derive(Clone, Copy)]
enum Api {
    Ads,
    Sds,
}

/// A sidecar node of `service` in `tenant`/`mesh`.
fn sidecar_node(
    tenant: &str,
    mesh: &str,
    name: &str,
    service: &str,
) -> switchboard_xds_proto::Node {
    with_metadata(
        node(tenant, mesh, name),
        &[
            ("role", "sidecar"),
            ("service", service),
            ("app_port", "8080"),
        ],
    )
}

async fn connect(
    env: &Env,
    api: Api,
    node: switchboard_xds_proto::Node,
    token: Option<&str>,
) -> AdsClient {
    let url = env.server.url();
    match api {
        Api::Ads => AdsClient::connect(&url, node, token).await.unwrap(),
        Api::Sds => AdsClient::connect_sds(&url, node, token).await.unwrap(),
    }
}

/// Who a stream is, and so what every Secret it receives must be.
struct Who<'a> {
    issuer: &'a TestIssuer,
    tenant: &'a str,
    mesh: &'a str,
    /// `false`: no secret of any kind (an anonymous stream).
    secrets: bool,
    /// The only SPIFFE ID its `default` may carry; `None`: it may get no `default`.
    identity: Option<String>,
}

impl<'a> Who<'a> {
    fn sidecar(issuer: &'a TestIssuer, tenant: &'a str, mesh: &'a str, service: &str) -> Self {
        Self {
            issuer,
            tenant,
            mesh,
            secrets: true,
            identity: Some(format!(
                "spiffe://{tenant}.switchboard.local/mesh/{mesh}/service/{service}"
            )),
        }
    }

    fn anonymous(issuer: &'a TestIssuer, tenant: &'a str, mesh: &'a str) -> Self {
        Self {
            issuer,
            tenant,
            mesh,
            secrets: false,
            identity: None,
        }
    }

    /// Checks every secret of `r` against who the stream is; what it got.
    fn check(&self, r: &DiscoveryResponse) -> Got {
        assert_eq!(r.type_url, SDS);
        let mut got = Got::default();
        if !self.secrets {
            assert!(
                r.resources.is_empty(),
                "an anonymous stream received secrets"
            );
            return got;
        }
        // The mesh's roots now: every root sent must be one of them, every leaf must chain
        // to one of them. Each mesh has its own CA, so another mesh's secret fails both.
        let bundle = self.issuer.bundle(self.tenant, self.mesh).unwrap();
        for any in &r.resources {
            let s: Secret = unpack(any).unwrap();
            match (s.name.as_str(), s.r#type) {
                ("ROOTCA", Some(secret::Type::ValidationContext(v))) => {
                    let roots = pems(&inline(v.trusted_ca));
                    assert!(!roots.is_empty());
                    for root in &roots {
                        assert!(
                            bundle.roots_pem.iter().any(|b| b.trim() == root.trim()),
                            "ROOTCA carries a root that is not {}/{}'s",
                            self.tenant,
                            self.mesh
                        );
                    }
                    got.roots = Some(roots);
                }
                ("default", Some(secret::Type::TlsCertificate(t))) => {
                    let identity = self
                        .identity
                        .as_deref()
                        .expect("received a certificate this node may not have");
                    let chain = inline(t.certificate_chain);
                    let key = inline(t.private_key);
                    got.leaf = Some(Leaf::check(&chain, &key, identity, &bundle.roots_pem));
                }
                (name, _) => panic!("unexpected secret {name:?}"),
            }
        }
        got
    }
}

/// What a stream holds so far.
#[derive(Debug, Default, Clone)]
struct Got {
    roots: Option<Vec<String>>,
    leaf: Option<Leaf>,
}

/// A checked `default` certificate.
#[derive(Debug, Clone)]
struct Leaf {
    chain_pem: String,
    serial: String,
    spiffe_id: String,
    not_after: i64,
}

impl Leaf {
    /// Checks the certificate: its only SAN is `identity`, it chains to one of `roots`, and
    /// the key is its own.
    fn check(chain_pem: &str, key_pem: &str, identity: &str, roots: &[String]) -> Leaf {
        let pem = first_pem(chain_pem);
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().expect("a SAN");
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => *u,
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(uris, [identity]);
        assert!(
            verifies(chain_pem, roots),
            "the certificate does not chain to the mesh's roots"
        );
        let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
        assert_eq!(
            key.public_key_raw(),
            &cert.public_key().subject_public_key.data[..],
            "the key is not the certificate's"
        );
        Leaf {
            chain_pem: chain_pem.to_owned(),
            serial: cert
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            spiffe_id: identity.to_owned(),
            not_after: cert.validity().not_after.timestamp(),
        }
    }
}

fn inline(source: Option<DataSource>) -> String {
    match source.and_then(|s| s.specifier) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b).unwrap(),
        other => panic!("not inline bytes: {}", other.is_some()),
    }
}

fn first_pem(pem: &str) -> Pem {
    Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .expect("a PEM block")
        .unwrap()
}

/// The PEM blocks of `pem`, each re-encoded on its own.
fn pems(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end_marker = "-----END CERTIFICATE-----";
        let end = rest[start..].find(end_marker).unwrap() + start + end_marker.len();
        out.push(rest[start..end].to_owned());
        rest = &rest[end..];
    }
    out
}

/// Whether the leaf of `chain_pem` is signed by one of `roots`.
fn verifies(chain_pem: &str, roots: &[String]) -> bool {
    let leaf_pem = first_pem(chain_pem);
    let leaf = leaf_pem.parse_x509().unwrap();
    roots.iter().any(|root| {
        let root_pem = first_pem(root);
        let root = root_pem.parse_x509().unwrap();
        leaf.verify_signature(Some(root.public_key())).is_ok()
    })
}

/// Receives responses until `done` holds for what the stream has got, ACKing each (with
/// `names` for Secrets) and checking every Secret response.
async fn receive(
    client: &mut AdsClient,
    who: &Who<'_>,
    names: &[&str],
    mut got: Got,
    done: impl Fn(&Got) -> bool,
) -> Got {
    while !done(&got) {
        let r = client.recv().await.unwrap();
        if r.type_url == SDS {
            let new = who.check(&r);
            got.roots = new.roots.or(got.roots);
            got.leaf = new.leaf.or(got.leaf);
            client.ack(&r, names).await.unwrap();
        } else {
            client.ack(&r, &[]).await.unwrap();
        }
    }
    got
}

fn complete(g: &Got) -> bool {
    g.roots.is_some() && g.leaf.is_some()
}

/// A sidecar of `acme/prod` service `pay` subscribes to both secrets over `api`, and gets a
/// certificate for its identity that verifies against the ROOTCA it got.
async fn sidecar_gets_both(api: Api) {
    let (env, issuer) = sds_env().await;
    let mut client = connect(
        &env,
        api,
        sidecar_node("acme", "prod", "pay-1", "pay"),
        Some(&env.token),
    )
    .await;
    client.subscribe(SDS, BOTH).await.unwrap();
    let who = Who::sidecar(&issuer, "acme", "prod", "pay");
    let got = receive(&mut client, &who, BOTH, Got::default(), complete).await;
    let leaf = got.leaf.unwrap();
    assert!(verifies(&leaf.chain_pem, &got.roots.unwrap()));
    // The proxy's status shows the certificate it was sent, and nothing secret.
    let store = env.store.clone();
    let serial = leaf.serial.clone();
    let row = eventually("the status row shows the certificate", || {
        let store = store.clone();
        let serial = serial.clone();
        async move {
            let rows = store
                .list_proxies("acme", "prod", Some("pay-1"))
                .await
                .unwrap();
            rows.into_iter().find(|r| {
                r.status
                    .certificate
                    .as_ref()
                    .is_some_and(|c| c.serial == serial)
            })
        }
    })
    .await;
    let certificate = row.status.certificate.clone().unwrap();
    assert_eq!(certificate.spiffe_id, leaf.spiffe_id);
    let not_after = time::OffsetDateTime::parse(
        &certificate.not_after,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(not_after.unix_timestamp(), leaf.not_after);
    let stored = serde_json::to_string(&row.status).unwrap();
    assert!(!stored.contains("PRIVATE KEY"), "{stored}");
    assert!(issuer.issued() >= 1);
    assert_no_key_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_gets_its_certificate_and_roots_over_ads() {
    sidecar_gets_both(Api::Ads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_gets_its_certificate_and_roots_over_the_sds_service() {
    sidecar_gets_both(Api::Sds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_subscription_gets_both_secrets() {
    let (env, issuer) = sds_env().await;
    let mut client = connect(
        &env,
        Api::Ads,
        sidecar_node("acme", "prod", "pay-1", "pay"),
        Some(&env.token),
    )
    .await;
    client.subscribe(SDS, &[]).await.unwrap();
    let who = Who::sidecar(&issuer, "acme", "prod", "pay");
    receive(&mut client, &who, &[], Got::default(), complete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_and_pushed_unasked() {
    let (env, issuer) = sds_env().await;
    env.put(
        "",
        Kind::Mesh,
        "prod",
        json!({"mtls": {"certificateLifetime": "1m"}}),
    )
    .await;
    // The CA caps validity at 3 s (as one close to its own expiry does): renewal at about
    // half of that, within the test's patience.
    issuer.cap_validity(Duration::from_secs(3));
    let mut client = connect(
        &env,
        Api::Ads,
        sidecar_node("acme", "prod", "pay-1", "pay"),
        Some(&env.token),
    )
    .await;
    client.subscribe(SDS, BOTH).await.unwrap();
    let who = Who::sidecar(&issuer, "acme", "prod", "pay");
    let first = receive(&mut client, &who, BOTH, Got::default(), complete).await;
    let first_leaf = first.leaf.clone().unwrap();
    // Nothing but ACKs from here on: the renewed certificate comes by itself.
    let renewed = receive(&mut client, &who, BOTH, first, |g| {
        g.leaf
            .as_ref()
            .is_some_and(|l| l.serial != first_leaf.serial)
    })
    .await;
    let leaf = renewed.leaf.unwrap();
    assert_eq!(leaf.spiffe_id, first_leaf.spiffe_id);
    assert!(leaf.not_after >= first_leaf.not_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_pushes_the_new_roots_and_reissues() {
    let (env, issuer) = sds_env().await;
    let mut client = connect(
        &env,
        Api::Ads,
        sidecar_node("acme", "prod", "pay-1", "pay"),
        Some(&env.token),
    )
    .await;
    client.subscribe(SDS, BOTH).await.unwrap();
    let who = Who::sidecar(&issuer, "acme", "prod", "pay");
    let before = receive(&mut client, &who, BOTH, Got::default(), complete).await;
    assert_eq!(before.roots.as_ref().unwrap().len(), 1);
    let old_roots = before.roots.clone().unwrap();
    let old_serial = before.leaf.clone().unwrap().serial;
    // A rotation: a new root and signer, then (as the store does for a CA write) a commit
    // that rebuilds the mesh.
    issuer.rotate("acme", "prod").unwrap();
    env.put("", Kind::Mesh, "prod", json!({"description": "rotated"}))
        .await;
    let after = receive(&mut client, &who, BOTH, Got::default(), |g| {
        g.roots.as_ref().is_some_and(|r| r.len() == 2)
            && g.leaf.as_ref().is_some_and(|l| l.serial != old_serial)
    })
    .await;
    let leaf = after.leaf.unwrap();
    let new_root: Vec<String> = after
        .roots
        .unwrap()
        .into_iter()
        .filter(|r| !old_roots.contains(r))
        .collect();
    assert_eq!(new_root.len(), 1);
    assert!(verifies(&leaf.chain_pem, &new_root), "signed by the new CA");
    assert!(!verifies(&leaf.chain_pem, &old_roots));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_tenant_gets_no_secret() {
    let (env, issuer) = sds_env().await;
    let globex = credential(&env.store, "globex", CredentialKind::ProxyToken, None)
        .await
        .unwrap();
    let mut client = connect(
        &env,
        Api::Ads,
        sidecar_node("acme", "prod", "pay-1", "pay"),
        Some(&globex),
    )
    .await;
    client.subscribe(SDS, BOTH).await.unwrap();
    let status = loop {
        match client.recv().await {
            Ok(r) => {
                // Would panic: a globex stream may receive nothing of acme's.
                Who::anonymous(&issuer, "acme", "prod").check(&r);
            }
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(issuer.issued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_streams_get_no_secret_of_any_kind() {
    let (env, issuer) = sds_env().await;
    env.put("open", Kind::Service, "web", json!({"port": 80}))
        .await;
    for api in [Api::Ads, Api::Sds] {
        let mut client = connect(
            &env,
            api,
            sidecar_node("acme", "open", "web-1", "web"),
            None,
        )
        .await;
        let who = Who::anonymous(&issuer, "acme", "open");
        // A wildcard subscription is answered, with nothing.
        client.subscribe(SDS, &[]).await.unwrap();
        let r = client.recv().await.unwrap();
        who.check(&r);
        client.ack(&r, BOTH).await.unwrap();
        // Named secrets are never answered: after the ACK names them, a later subscription
        // (which comes after any pending Secret response in push order) gets its answer and
        // no Secret came first.
        if let Api::Ads = api {
            client.subscribe(CDS, &[]).await.unwrap();
            loop {
                let r = client.recv().await.unwrap();
                if r.type_url == CDS {
                    break;
                }
                who.check(&r);
            }
        }
    }
    // The mesh has a CA (its trust bundle was read), yet nothing was issued.
    assert_eq!(issuer.issued(), 0);
    assert_no_key_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gets_only_the_identity_of_its_service() {
    let (env, issuer) = sds_env().await;
    env.put("prod", Kind::Service, "shop", json!({"port": 8080}))
        .await;
    for service in ["pay", "shop"] {
        let mut client = connect(
            &env,
            Api::Ads,
            sidecar_node("acme", "prod", &format!("{service}-1"), service),
            Some(&env.token),
        )
        .await;
        client.subscribe(SDS, BOTH).await.unwrap();
        let who = Who::sidecar(&issuer, "acme", "prod", service);
        receive(&mut client, &who, BOTH, Got::default(), complete).await;
    }
    // A service that does not exist yet: ROOTCA, and no certificate until it exists.
    let mut ghost = connect(
        &env,
        Api::Ads,
        sidecar_node("acme", "prod", "ghost-1", "ghost"),
        Some(&env.token),
    )
    .await;
    ghost.subscribe(SDS, BOTH).await.unwrap();
    let none = Who {
        identity: None,
        ..Who::sidecar(&issuer, "acme", "prod", "ghost")
    };
    let got = receive(&mut ghost, &none, BOTH, Got::default(), |g| {
        g.roots.is_some()
    })
    .await;
    assert!(got.leaf.is_none());
    env.put("prod", Kind::Service, "ghost", json!({"port": 8080}))
        .await;
    let who = Who::sidecar(&issuer, "acme", "prod", "ghost");
    receive(&mut ghost, &who, BOTH, got, complete).await;
    // A proxyless client with a token: ROOTCA only, never a `default`.
    let mut grpc = connect(
        &env,
        Api::Ads,
        node("acme", "prod", "grpc-1"),
        Some(&env.token),
    )
    .await;
    grpc.subscribe(SDS, &[]).await.unwrap();
    let proxyless = Who {
        identity: None,
        ..Who::sidecar(&issuer, "acme", "prod", "none")
    };
    let got = receive(&mut grpc, &proxyless, &[], Got::default(), |g| {
        g.roots.is_some()
    })
    .await;
    assert!(got.leaf.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_limited_token_never_gets_another_meshs_secrets() {
    let (env, issuer) = sds_env().await;
    env.put("dev", Kind::Service, "pay", json!({"port": 8080}))
        .await;
    let prod_only = credential(&env.store, "acme", CredentialKind::ProxyToken, Some("prod"))
        .await
        .unwrap();
    // Naming a node of dev: refused, nothing received.
    let mut dev = connect(
        &env,
        Api::Ads,
        sidecar_node("acme", "dev", "pay-1", "pay"),
        Some(&prod_only),
    )
    .await;
    dev.subscribe(SDS, BOTH).await.unwrap();
    let status = loop {
        match dev.recv().await {
            Ok(r) => {
                Who::anonymous(&issuer, "acme", "dev").check(&r);
            }
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Its own mesh: prod's secrets, which do not verify against dev's roots.
    let mut prod = connect(
        &env,
        Api::Ads,
        sidecar_node("acme", "prod", "pay-1", "pay"),
        Some(&prod_only),
    )
    .await;
    prod.subscribe(SDS, BOTH).await.unwrap();
    let who = Who::sidecar(&issuer, "acme", "prod", "pay");
    let got = receive(&mut prod, &who, BOTH, Got::default(), complete).await;
    let dev_roots = issuer.bundle("acme", "dev").unwrap().roots_pem;
    assert!(!verifies(&got.leaf.unwrap().chain_pem, &dev_roots));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csds_and_node_config_show_no_private_key() {
    let (env, issuer) = sds_env().await;
    let mut client = connect(
        &env,
        Api::Ads,
        sidecar_node("acme", "prod", "pay-1", "pay"),
        Some(&env.token),
    )
    .await;
    client.subscribe(SDS, BOTH).await.unwrap();
    let who = Who::sidecar(&issuer, "acme", "prod", "pay");
    let got = receive(&mut client, &who, BOTH, Got::default(), complete).await;
    let serial = got.leaf.unwrap().serial;
    let api_key = credential(&env.store, "acme", CredentialKind::ApiKey, None)
        .await
        .unwrap();
    let mut csds = ClientStatusDiscoveryServiceClient::connect(env.server.url())
        .await
        .unwrap();
    let mut request = tonic::Request::new(ClientStatusRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {api_key}").parse().unwrap(),
    );
    let dump = csds
        .fetch_client_status(request)
        .await
        .unwrap()
        .into_inner();
    let configs = &dump.config[0].generic_xds_configs;
    let default = configs
        .iter()
        .find(|c| c.type_url == SDS && c.name == "default")
        .expect("the dump lists `default`");
    assert!(default.version_info.is_empty() || default.version_info.len() < 100);
    let secret: Secret = unpack(default.xds_config.as_ref().expect("contents")).unwrap();
    let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
        panic!("not a certificate");
    };
    assert!(
        tls.certificate_chain.is_some(),
        "the certificate itself is public"
    );
    assert!(
        matches!(tls.private_key.and_then(|k| k.specifier), Some(Specifier::InlineString(s)) if s == "[redacted]")
    );
    let bytes = prost::Message::encode_to_vec(&dump);
    assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"));
    // The REST API's view of what the node is sent.
    let config = env
        .server
        .xds
        .node_config("acme", "prod", "pay-1")
        .await
        .unwrap()
        .unwrap()
        .to_string();
    assert!(config.contains("ROOTCA"), "{config}");
    assert!(!config.contains("PRIVATE KEY"));
    // The registry knows which certificate was sent.
    let status = env.server.xds.registry().node("acme", "prod", "pay-1");
    assert_eq!(status[0].certificate.as_ref().unwrap().serial, serial);
    assert_no_key_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_fetch_gets_secrets_only_with_a_token() {
    let (env, issuer) = sds_env().await;
    env.put("open", Kind::Service, "web", json!({"port": 80}))
        .await;
    let fetch = |node: switchboard_xds_proto::Node, token: Option<String>| {
        let url = env.server.url();
        async move {
            let mut client = SecretDiscoveryServiceClient::connect(url).await.unwrap();
            let mut request = tonic::Request::new(switchboard_xds_server::testing::request(
                Some(&node),
                SDS,
                BOTH,
                "",
                "",
            ));
            if let Some(token) = token {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            client.fetch_secrets(request).await.unwrap().into_inner()
        }
    };
    let r = fetch(
        sidecar_node("acme", "prod", "pay-1", "pay"),
        Some(env.token.clone()),
    )
    .await;
    let got = Who::sidecar(&issuer, "acme", "prod", "pay").check(&r);
    assert!(complete(&got), "{got:?}");
    let r = fetch(sidecar_node("acme", "open", "web-1", "web"), None).await;
    Who::anonymous(&issuer, "acme", "open").check(&r);
}
