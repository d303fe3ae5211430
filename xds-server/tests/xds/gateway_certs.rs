//! Uploaded certificates over SDS (`certificate/{name}`): only to authenticated gateway
//! nodes of the certificate's tenant and mesh whose gateway names it; redacted in CSDS and
//! in the REST view of a node's configuration; never logged.

use std::sync::Arc;

use serde_json::json;
use switchboard_model::Kind;
use switchboard_store::CredentialKind;
use switchboard_xds_proto::pb::envoy::config::core::v3::data_source::Specifier;
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use switchboard_xds_proto::pb::envoy::service::status::v3::ClientStatusRequest;
use switchboard_xds_proto::service::csds::ClientStatusDiscoveryServiceClient;
use switchboard_xds_proto::{DiscoveryResponse, unpack};
use switchboard_xds_server::testing::{
    AdsClient, TestIssuer, node, secret as credential, with_metadata,
};

use crate::common::*;
use crate::sds::{assert_no_key_logged, logs};

const SDS: &str = switchboard_xds_proto::type_url::SECRET;

/// A self-signed server certificate for `dns`: (chain PEM, key PEM).
fn certificate(dns: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![dns.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes certificate `name` to `tenant`/`mesh` as the API stores it (key sealed).
async fn put_certificate(
    env: &Env,
    issuer: &TestIssuer,
    tenant: &str,
    mesh: &str,
    name: &str,
) -> (String, String) {
    let (chain, key) = certificate(&format!("{name}.{mesh}.example.com"));
    let sealed = issuer.seal_certificate_key(tenant, mesh, name, &key);
    let spec = json!({
        "certificateChain": chain,
        "privateKey": {"kekId": sealed.kek_id, "sealed": sealed.sealed},
        "dnsNames": [format!("{name}.{mesh}.example.com")],
        "fingerprint": format!("fp-{tenant}-{mesh}-{name}"),
    });
    put(&env.store, tenant, mesh, Kind::Certificate, name, spec).await;
    (chain, key)
}

fn gateway_node(
    tenant: &str,
    mesh: &str,
    node_name: &str,
    gateway: &str,
) -> switchboard_xds_proto::Node {
    with_metadata(
        node(tenant, mesh, node_name),
        &[("role", "gateway"), ("gateway", gateway)],
    )
}

/// The uploaded certificates of a Secret response: (name, chain, key).
fn uploaded(r: &DiscoveryResponse) -> Vec<(String, String, String)> {
    assert_eq!(r.type_url, SDS);
    let text = |s: Option<switchboard_xds_proto::pb::envoy::config::core::v3::DataSource>| match s
        .and_then(|s| s.specifier)
    {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b).unwrap(),
        _ => panic!("not inline bytes"),
    };
    r.resources
        .iter()
        .filter_map(|any| {
            let s: Secret = unpack(any).unwrap();
            if !s.name.starts_with("certificate/") {
                return None;
            }
            let Some(secret::Type::TlsCertificate(t)) = s.r#type else {
                panic!("{} is not a certificate", s.name);
            };
            Some((s.name, text(t.certificate_chain), text(t.private_key)))
        })
        .collect()
}

/// Subscribes to `names` (wildcard when empty) and returns the first Secret response, ACKed.
async fn secrets(client: &mut AdsClient, names: &[&str]) -> DiscoveryResponse {
    client.subscribe(SDS, names).await.unwrap();
    loop {
        let r = client.recv().await.unwrap();
        client.ack(&r, names).await.unwrap();
        if r.type_url == SDS {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_certificates_go_only_to_the_gateways_naming_them() {
    logs();
    let issuer = TestIssuer::new();
    let env = env_with(Some(Arc::clone(&issuer))).await;
    let (shop_chain, shop_key) = put_certificate(&env, &issuer, "acme", "prod", "shop").await;
    put_certificate(&env, &issuer, "acme", "prod", "blog").await;
    put_certificate(&env, &issuer, "acme", "dev", "shop").await;
    put_certificate(&env, &issuer, "acme", "open", "shop").await;
    for (mesh, gateway, cert) in [
        ("prod", "edge", "shop"),
        ("prod", "news", "blog"),
        ("dev", "edge", "shop"),
        ("open", "edge", "shop"),
    ] {
        env.put(
            mesh,
            Kind::Gateway,
            gateway,
            json!({"port": 8443, "tls": {"certificates": [cert]}}),
        )
        .await;
    }
    let both = ["certificate/shop", "certificate/blog"];

    // The gateway naming `shop` gets exactly it, with its own key, by name or wildcard.
    let mut edge = AdsClient::connect(
        &env.server.url(),
        gateway_node("acme", "prod", "edge-1", "edge"),
        Some(&env.token),
    )
    .await
    .unwrap();
    let got = uploaded(&secrets(&mut edge, &both).await);
    assert_eq!(got.len(), 1, "only the certificate its gateway names");
    assert_eq!(got[0].0, "certificate/shop");
    assert_eq!(got[0].1, shop_chain);
    assert_eq!(got[0].2, shop_key);
    let mut wildcard = AdsClient::connect(
        &env.server.url(),
        gateway_node("acme", "prod", "edge-2", "edge"),
        Some(&env.token),
    )
    .await
    .unwrap();
    let all = secrets(&mut wildcard, &[]).await;
    assert_eq!(
        uploaded(&all).into_iter().map(|c| c.0).collect::<Vec<_>>(),
        ["certificate/shop"]
    );
    // The other gateway of the mesh gets its own only; dev's gateway dev's certificate.
    let mut news = AdsClient::connect(
        &env.server.url(),
        gateway_node("acme", "prod", "news-1", "news"),
        Some(&env.token),
    )
    .await
    .unwrap();
    let got = uploaded(&secrets(&mut news, &both).await);
    assert_eq!(
        got.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["certificate/blog"]
    );
    let mut dev = AdsClient::connect(
        &env.server.url(),
        gateway_node("acme", "dev", "edge-1", "edge"),
        Some(&env.token),
    )
    .await
    .unwrap();
    let got = uploaded(&secrets(&mut dev, &both).await);
    assert_eq!(got.len(), 1);
    assert_ne!(got[0].1, shop_chain, "dev's own certificate, not prod's");

    // A sidecar, a gateway of another name, and an anonymous gateway get none (asked with
    // the wildcard, which is always answered).
    let sidecar = with_metadata(
        node("acme", "prod", "pay-1"),
        &[
            ("role", "sidecar"),
            ("service", "pay"),
            ("app_port", "8080"),
        ],
    );
    let mut sidecar = AdsClient::connect(&env.server.url(), sidecar, Some(&env.token))
        .await
        .unwrap();
    assert!(uploaded(&secrets(&mut sidecar, &[]).await).is_empty());
    let mut ghost = AdsClient::connect(
        &env.server.url(),
        gateway_node("acme", "prod", "g-1", "ghost"),
        Some(&env.token),
    )
    .await
    .unwrap();
    assert!(uploaded(&secrets(&mut ghost, &[]).await).is_empty());
    let mut anonymous = AdsClient::connect(
        &env.server.url(),
        gateway_node("acme", "open", "edge-1", "edge"),
        None,
    )
    .await
    .unwrap();
    let r = secrets(&mut anonymous, &[]).await;
    assert!(r.resources.is_empty(), "an anonymous stream gets no secret");

    // Dropping the certificate from the gateway takes it away.
    env.put(
        "prod",
        Kind::Gateway,
        "edge",
        json!({"port": 8443, "tls": {"certificates": ["blog"]}}),
    )
    .await;
    loop {
        let r = edge.recv().await.unwrap();
        edge.ack(&r, &both).await.unwrap();
        if r.type_url == SDS {
            let names: Vec<_> = uploaded(&r).into_iter().map(|c| c.0).collect();
            if names == ["certificate/blog"] {
                break;
            }
        }
    }

    // CSDS and the REST view show the certificate but never its key.
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
    let bytes = prost::Message::encode_to_vec(&dump);
    assert!(
        bytes.windows(12).any(|w| w == b"certificate/"),
        "the dump lists it"
    );
    assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"));
    let config = env
        .server
        .xds
        .node_config("acme", "prod", "edge-2")
        .await
        .unwrap()
        .unwrap()
        .to_string();
    assert!(config.contains("certificate/blog"), "{config}");
    assert!(config.contains("[redacted]"), "{config}");
    assert!(!config.contains("PRIVATE KEY"), "{config}");
    assert_no_key_logged();
}
