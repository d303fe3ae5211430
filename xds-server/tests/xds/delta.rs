//! Delta (incremental) xDS over real streams: tonic delta clients against the real server on
//! 127.0.0.1.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use switchboard_model::Kind;
use switchboard_xds_proto::pb::envoy::config::core::v3::data_source::Specifier;
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use switchboard_xds_proto::{DeltaDiscoveryResponse, ResourceType, unpack};
use switchboard_xds_server::ClientState;
use switchboard_xds_server::testing::{DeltaClient, TestIssuer, node, with_metadata};
use tonic::Code;

use crate::common::*;

const SDS: &str = switchboard_xds_proto::type_url::SECRET;

impl Env {
    /// An authenticated delta ADS client of `acme/{mesh}` named `name`.
    async fn delta(&self, mesh: &str, name: &str) -> DeltaClient {
        DeltaClient::connect(
            &self.server.url(),
            node("acme", mesh, name),
            Some(&self.token),
        )
        .await
        .unwrap()
    }
}

/// The names of the resources a delta response carries, sorted.
fn sent(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
    names.sort();
    names
}

fn removed(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut names = r.removed_resources.clone();
    names.sort();
    names
}

/// Asserts no delta response arrives for a while.
async fn assert_delta_quiet(client: &mut DeltaClient) {
    if let Some(r) = client.recv_within(QUIET).await {
        match r {
            Ok(r) => panic!(
                "unexpected response {} {:?} removed {:?}",
                r.type_url,
                sent(&r),
                r.removed_resources
            ),
            Err(s) => panic!("unexpected end {s:?}"),
        }
    }
}

/// Receives (ACKing each) until `done` holds for what arrived, or fails after a while.
async fn collect_delta(
    client: &mut DeltaClient,
    done: impl Fn(&[DeltaDiscoveryResponse]) -> bool,
) -> Vec<DeltaDiscoveryResponse> {
    let mut got = Vec::new();
    while !done(&got) {
        let r = client.recv_and_ack().await.unwrap_or_else(|s| {
            panic!(
                "stream failed after {:?}: {s:?}",
                got.iter()
                    .map(|r: &DeltaDiscoveryResponse| (&r.type_url, sent(r)))
                    .collect::<Vec<_>>()
            )
        });
        got.push(r);
    }
    got
}

fn sidecar(name: &str) -> switchboard_xds_proto::Node {
    with_metadata(
        node("acme", "prod", name),
        &[
            ("role", "sidecar"),
            ("service", "pay"),
            ("app_port", "8080"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_sidecar_gets_outbound_and_inbound_and_is_reported() {
    let env = env().await;
    let mut client = DeltaClient::connect(&env.server.url(), sidecar("pay-1"), Some(&env.token))
        .await
        .unwrap();
    client.subscribe(CDS, &[], &[]).await.unwrap();
    client.subscribe(LDS, &[], &[]).await.unwrap();
    let got = collect_delta(&mut client, |got| got.len() >= 2).await;
    assert_eq!(got[0].type_url, CDS);
    assert_eq!(sent(&got[0]), ["inbound|8080", "pay"]);
    assert_eq!(got[1].type_url, LDS);
    assert_eq!(sent(&got[1]), ["sidecar/inbound", "sidecar/outbound"]);
    for r in &got[0].resources {
        assert!(!r.version.is_empty(), "{} has a version", r.name);
        let any = r.resource.as_ref().unwrap();
        assert_eq!(any.type_url, CDS);
    }
    assert_delta_quiet(&mut client).await;
    let status = env.server.xds.registry().node("acme", "prod", "pay-1");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].service, "delta ADS");
    assert_eq!(status[0].role, "sidecar of pay");
    let cds = &status[0].types[&ResourceType::Cluster];
    assert_eq!(cds.state(), ClientState::Acked);
    assert!(cds.wildcard);
    assert_eq!(
        cds.acked.as_ref().unwrap().version,
        got[0].system_version_info
    );
    assert_eq!(
        cds.acked.as_ref().unwrap().revision,
        env.store.revision("acme").await.unwrap()
    );
    let held = env.server.xds.registry().resources("acme", "prod", "pay-1");
    assert_eq!(held[&ResourceType::Listener].len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxyless_client_subscribes_and_unsubscribes_by_name() {
    let env = env().await;
    env.put("prod", Kind::Service, "shop", json!({"port": 9090}))
        .await;
    let mut client = env.delta("prod", "a").await;
    client.subscribe(EDS, &["pay"], &[]).await.unwrap();
    let r = client.recv_and_ack().await.unwrap();
    assert_eq!(
        (r.type_url.as_str(), sent(&r)),
        (EDS, vec!["pay".to_owned()])
    );
    // A new name: just that one.
    client.subscribe(EDS, &["shop"], &[]).await.unwrap();
    let r = client.recv_and_ack().await.unwrap();
    assert_eq!(sent(&r), ["shop"]);
    assert!(r.removed_resources.is_empty());
    // Unsubscribed: its changes no longer come, nor its removal.
    client.subscribe(EDS, &[], &["pay"]).await.unwrap();
    env.put("prod", Kind::Service, "pay", json!({"port": 8081}))
        .await;
    assert_delta_quiet(&mut client).await;
    env.delete("prod", Kind::Service, "pay").await;
    assert_delta_quiet(&mut client).await;
    // The names still subscribed are followed.
    let status = env.server.xds.registry().node("acme", "prod", "a");
    let eds = &status[0].types[&ResourceType::ClusterLoadAssignment];
    assert!(!eds.wildcard);
    assert_eq!(eds.names, ["shop"]);
    env.put(
        "prod",
        Kind::Service,
        "shop",
        json!({"port": 9090, "connectTimeout": "3s"}),
    )
    .await;
    client.subscribe(CDS, &["shop"], &[]).await.unwrap();
    let r = client.recv_and_ack().await.unwrap();
    assert_eq!(
        (r.type_url.as_str(), sent(&r)),
        (CDS, vec!["shop".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_exist_is_answered_in_removed_resources() {
    let env = env().await;
    let mut client = env.delta("prod", "a").await;
    client.subscribe(LDS, &["pay", "nope"], &[]).await.unwrap();
    let r = client.recv_and_ack().await.unwrap();
    assert_eq!(sent(&r), ["pay"]);
    assert_eq!(removed(&r), ["nope"]);
    // Said once; when it comes to exist, it is sent.
    assert_delta_quiet(&mut client).await;
    env.put("prod", Kind::Service, "nope", json!({"port": 80}))
        .await;
    let r = client.recv_and_ack().await.unwrap();
    assert_eq!(sent(&r), ["nope"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_resource_is_removed() {
    let env = env().await;
    let mut client = env.delta("prod", "a").await;
    client.subscribe(CDS, &[], &[]).await.unwrap();
    assert_eq!(sent(&client.recv_and_ack().await.unwrap()), ["pay"]);
    env.put("prod", Kind::Service, "shop", json!({"port": 80}))
        .await;
    let r = client.recv_and_ack().await.unwrap();
    assert_eq!(sent(&r), ["shop"]);
    env.delete("prod", Kind::Service, "shop").await;
    let r = client.recv_and_ack().await.unwrap();
    assert!(r.resources.is_empty());
    assert_eq!(removed(&r), ["shop"]);
    assert_delta_quiet(&mut client).await;
    let held = env.server.xds.registry().resources("acme", "prod", "a");
    assert_eq!(held[&ResourceType::Cluster].len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_initial_versions_gets_only_what_changed() {
    let env = env().await;
    env.put("prod", Kind::Service, "old", json!({"port": 80}))
        .await;
    let mut first = env.delta("prod", "a").await;
    first.subscribe(CDS, &[], &[]).await.unwrap();
    let r = first.recv_and_ack().await.unwrap();
    assert_eq!(sent(&r), ["old", "pay"]);
    let held: HashMap<String, String> = r
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(first);
    env.delete("prod", Kind::Service, "old").await;
    env.put("prod", Kind::Service, "new", json!({"port": 80}))
        .await;
    let mut again = env.delta("prod", "a").await;
    again.resume(CDS, &[], held.clone()).await.unwrap();
    let r = again.recv_and_ack().await.unwrap();
    // `pay` is current: not resent.
    assert_eq!(sent(&r), ["new"]);
    assert_eq!(removed(&r), ["old"]);
    assert_delta_quiet(&mut again).await;

    // Everything current: one empty answer.
    let current: HashMap<String, String> = [("pay".to_owned(), held["pay"].clone())]
        .into_iter()
        .chain(
            r.resources
                .iter()
                .map(|r| (r.name.clone(), r.version.clone())),
        )
        .collect();
    let mut third = env.delta("prod", "b").await;
    third.resume(CDS, &[], current).await.unwrap();
    let r3 = third.recv_and_ack().await.unwrap();
    assert!(r3.resources.is_empty() && r3.removed_resources.is_empty());
    assert_eq!(r3.system_version_info, r.system_version_info);
    assert_delta_quiet(&mut third).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_keeps_the_last_good_until_a_fix() {
    let env = env().await;
    let mut client = env.delta("prod", "a").await;
    client.subscribe(CDS, &[], &[]).await.unwrap();
    let good = client.recv_and_ack().await.unwrap();
    env.put(
        "prod",
        Kind::Service,
        "pay",
        json!({"port": 8080, "protocol": "http2"}),
    )
    .await;
    let bad = client.recv().await.unwrap();
    assert_eq!(sent(&bad), ["pay"]);
    client
        .nack(&bad, "cluster pay: unsupported option")
        .await
        .unwrap();
    // Not sent again until it changes.
    assert_delta_quiet(&mut client).await;
    let status = env.server.xds.registry().node("acme", "prod", "a");
    let cds = &status[0].types[&ResourceType::Cluster];
    assert_eq!(cds.state(), ClientState::Nacked);
    let nack = cds.nack.as_ref().unwrap();
    assert_eq!(nack.nonce, bad.nonce);
    assert_eq!(nack.names, ["pay"]);
    assert_eq!(nack.message, "cluster pay: unsupported option");
    assert_eq!(
        cds.acked.as_ref().unwrap().version,
        good.system_version_info
    );
    env.put("prod", Kind::Service, "pay", json!({"port": 8081}))
        .await;
    let fixed = client.recv_and_ack().await.unwrap();
    assert_eq!(sent(&fixed), ["pay"]);
    assert_ne!(fixed.resources[0].version, bad.resources[0].version);
    assert_delta_quiet(&mut client).await;
    let status = env.server.xds.registry().node("acme", "prod", "a");
    assert_eq!(
        status[0].types[&ResourceType::Cluster].state(),
        ClientState::Acked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_meshes_and_tenants_are_never_sent() {
    let env = env().await;
    env.put("dev", Kind::Service, "dev-only", json!({"port": 80}))
        .await;
    crate::common::put(
        &env.store,
        "globex",
        "prod",
        Kind::Service,
        "globex-only",
        json!({"port": 1}),
    )
    .await;
    let mut prod = env.delta("prod", "p").await;
    prod.subscribe(CDS, &[], &[]).await.unwrap();
    prod.subscribe(EDS, &["pay", "dev-only", "globex-only"], &[])
        .await
        .unwrap();
    let got = collect_delta(&mut prod, |got| got.len() >= 2).await;
    assert_eq!(sent(&got[0]), ["pay"]);
    assert_eq!(sent(&got[1]), ["pay"]);
    // Another mesh's names do not exist for this node.
    assert_eq!(removed(&got[1]), ["dev-only", "globex-only"]);
    // Their changes are not pushed.
    env.put("dev", Kind::Service, "dev-only", json!({"port": 81}))
        .await;
    crate::common::put(
        &env.store,
        "globex",
        "prod",
        Kind::Service,
        "globex-only",
        json!({"port": 2}),
    )
    .await;
    assert_delta_quiet(&mut prod).await;
}

/// Checks a delta Secret response: only `default` (for `identity`) and `ROOTCA`, and
/// `default` is never said not to exist. Returns the secret names it carried.
fn check_secrets(r: &DeltaDiscoveryResponse, identity: &str) -> Vec<String> {
    assert_eq!(r.type_url, SDS);
    assert!(
        !r.removed_resources.iter().any(|n| n == "default"),
        "default was answered as missing while it was being issued"
    );
    for res in &r.resources {
        let s: Secret = unpack(res.resource.as_ref().unwrap()).unwrap();
        assert_eq!(res.name, s.name);
        match (s.name.as_str(), s.r#type) {
            ("ROOTCA", Some(secret::Type::ValidationContext(_))) => {}
            ("default", Some(secret::Type::TlsCertificate(t))) => {
                let chain: Vec<u8> = match t.certificate_chain.and_then(|d| d.specifier) {
                    Some(Specifier::InlineString(s)) => s.into_bytes(),
                    Some(Specifier::InlineBytes(b)) => b,
                    other => panic!("an inline chain, not {other:?}"),
                };
                let (_, pem) = x509_parser::pem::parse_x509_pem(&chain).unwrap();
                let cert = pem.parse_x509().unwrap();
                let san = cert.subject_alternative_name().unwrap().unwrap();
                let uris: Vec<String> = san
                    .value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => (*u).to_owned(),
                        other => panic!("unexpected SAN {other:?}"),
                    })
                    .collect();
                assert_eq!(uris, [identity]);
            }
            (name, _) => panic!("unexpected secret {name:?}"),
        }
    }
    sent(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_over_delta_serves_the_nodes_own_secrets() {
    let issuer = TestIssuer::new();
    let env = env_with(Some(Arc::clone(&issuer))).await;
    let identity = "spiffe://acme.switchboard.local/mesh/prod/service/pay";
    for (name, only) in [("pay-ads", None), ("pay-sds", Some(ResourceType::Secret))] {
        let mut client =
            DeltaClient::connect_to(&env.server.url(), only, sidecar(name), Some(&env.token))
                .await
                .unwrap();
        client
            .subscribe(SDS, &["default", "ROOTCA"], &[])
            .await
            .unwrap();
        let got = collect_delta(&mut client, |got| {
            let names: Vec<String> = got.iter().flat_map(sent).collect();
            names.iter().any(|n| n == "default") && names.iter().any(|n| n == "ROOTCA")
        })
        .await;
        for r in &got {
            check_secrets(r, identity);
        }
    }
    // An anonymous stream gets none: the names do not exist for it.
    let mut anonymous = DeltaClient::connect(&env.server.url(), node("acme", "open", "x"), None)
        .await
        .unwrap();
    anonymous
        .subscribe(SDS, &["default", "ROOTCA"], &[])
        .await
        .unwrap();
    let r = anonymous.recv_and_ack().await.unwrap();
    assert!(r.resources.is_empty());
    assert_eq!(removed(&r), ["ROOTCA", "default"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_type_delta_service_serves_only_its_type() {
    let env = env().await;
    let url = env.server.url();
    let mut cds = DeltaClient::connect_to(
        &url,
        Some(ResourceType::Cluster),
        node("acme", "prod", "c"),
        Some(&env.token),
    )
    .await
    .unwrap();
    // The type may be left out on a per-type stream.
    cds.subscribe("", &[], &[]).await.unwrap();
    let r = cds.recv_and_ack().await.unwrap();
    assert_eq!(
        (r.type_url.as_str(), sent(&r)),
        (CDS, vec!["pay".to_owned()])
    );
    cds.subscribe(LDS, &[], &[]).await.unwrap();
    let status = cds.ended().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("serves only"), "{status:?}");

    let mut lds = DeltaClient::connect_to(
        &url,
        Some(ResourceType::Listener),
        node("acme", "prod", "l"),
        Some(&env.token),
    )
    .await
    .unwrap();
    lds.subscribe(CDS, &[], &[]).await.unwrap();
    let status = lds.ended().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_end_the_stream_with_a_precise_error() {
    let env = env().await;
    let mut client = env.delta("prod", "a").await;
    let many: Vec<String> = (0..10_001).map(|i| format!("n{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    client.subscribe(EDS, &many, &[]).await.unwrap();
    let status = client.ended().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("resource_names_subscribe"),
        "{status:?}"
    );
    // Without a token, a mesh that requires one refuses the stream.
    let mut anonymous = DeltaClient::connect(&env.server.url(), node("acme", "prod", "x"), None)
        .await
        .unwrap();
    anonymous.subscribe(CDS, &[], &[]).await.unwrap();
    assert_eq!(anonymous.ended().await.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_stream_gets_what_it_is_owed_then_ends_ok() {
    let env = env().await;
    for _ in 0..3 {
        let mut client = env.delta("prod", "h").await;
        client.subscribe(CDS, &[], &[]).await.unwrap();
        client.subscribe(EDS, &["pay"], &[]).await.unwrap();
        client.subscribe(LDS, &["pay"], &[]).await.unwrap();
        client.close();
        let mut types = Vec::new();
        let end = loop {
            match client.recv().await {
                Ok(r) => types.push(r.type_url),
                Err(status) => break status,
            }
        };
        types.sort();
        let mut want = vec![CDS.to_owned(), EDS.to_owned(), LDS.to_owned()];
        want.sort();
        assert_eq!(types, want);
        // Ended OK (the helper reports an OK end as CANCELLED with this message).
        assert_eq!(end.code(), Code::Cancelled, "{end:?}");
        assert_eq!(end.message(), "the server closed the stream");
    }
    // A stream that half-closes after everything was answered ends at once.
    let mut client = env.delta("prod", "i").await;
    client.subscribe(CDS, &[], &[]).await.unwrap();
    client.recv_and_ack().await.unwrap();
    client.close();
    // (Sooner than the grace: `ended` waits less than it.)
    let end = client.ended().await;
    assert_eq!(end.message(), "the server closed the stream", "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_route_goes_make_before_break() {
    let env = env().await;
    env.put(
        "prod",
        Kind::Route,
        "r",
        json!({"hostnames": ["shop"], "rules": [{"backends": [{"service": "pay"}]}]}),
    )
    .await;
    let mut client = env.delta("prod", "a").await;
    client.subscribe(LDS, &["shop"], &[]).await.unwrap();
    client.subscribe(RDS, &["r"], &[]).await.unwrap();
    client.subscribe(CDS, &[], &[]).await.unwrap();
    client.subscribe(EDS, &["pay", "new"], &[]).await.unwrap();
    collect_delta(&mut client, |got| {
        [LDS, RDS, CDS, EDS]
            .iter()
            .all(|t| got.iter().any(|r| r.type_url == *t))
    })
    .await;
    // A new service, the route moved to it, and the old one deleted.
    env.put("prod", Kind::Service, "new", json!({"port": 8080}))
        .await;
    env.put(
        "prod",
        Kind::Route,
        "r",
        json!({"hostnames": ["shop"], "rules": [{"backends": [{"service": "new"}]}]}),
    )
    .await;
    env.delete("prod", Kind::Service, "pay").await;
    let has = |r: &DeltaDiscoveryResponse, t: &str, name: &str| {
        r.type_url == t && sent(r).iter().any(|n| n == name)
    };
    let gone = |r: &DeltaDiscoveryResponse, t: &str, name: &str| {
        r.type_url == t && r.removed_resources.iter().any(|n| n == name)
    };
    let got = collect_delta(&mut client, |got| {
        got.iter().any(|r| gone(r, CDS, "pay")) && got.iter().any(|r| gone(r, EDS, "pay"))
    })
    .await;
    let at = |f: &dyn Fn(&DeltaDiscoveryResponse) -> bool| {
        got.iter().position(f).unwrap_or_else(|| {
            panic!(
                "missing step in {:?}",
                got.iter()
                    .map(|r| (&r.type_url, sent(r), &r.removed_resources))
                    .collect::<Vec<_>>()
            )
        })
    };
    let cds_new = at(&|r| has(r, CDS, "new"));
    let eds_new = at(&|r| has(r, EDS, "new"));
    let route = at(&|r| r.type_url == RDS && !r.resources.is_empty());
    let eds_gone = at(&|r| gone(r, EDS, "pay"));
    let cds_gone = at(&|r| gone(r, CDS, "pay"));
    assert!(
        cds_new < eds_new && eds_new < route && route < eds_gone && eds_gone < cds_gone,
        "order: {:?}",
        got.iter()
            .map(|r| (&r.type_url, sent(r), &r.removed_resources))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_type_gets_an_empty_answer() {
    let env = env().await;
    let mut client = env.delta("prod", "a").await;
    let runtime = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
    client.subscribe(runtime, &[], &[]).await.unwrap();
    let r = client.recv().await.unwrap();
    assert_eq!(r.type_url, runtime);
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    client.subscribe(CDS, &[], &[]).await.unwrap();
    assert_eq!(sent(&client.recv().await.unwrap()), ["pay"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_mesh_deletion_end_delta_streams() {
    let env = env().await;
    let leaked = env
        .store
        .create_credential(
            "acme",
            switchboard_store::CredentialKind::ProxyToken,
            None,
            "leaked",
        )
        .await
        .unwrap();
    let mut doomed = DeltaClient::connect(
        &env.server.url(),
        node("acme", "prod", "r1"),
        Some(&leaked.secret),
    )
    .await
    .unwrap();
    doomed.subscribe(CDS, &[], &[]).await.unwrap();
    doomed.recv_and_ack().await.unwrap();
    env.store
        .revoke_credential(
            "acme",
            switchboard_store::CredentialKind::ProxyToken,
            &leaked.credential.id,
        )
        .await
        .unwrap();
    let status = doomed.ended().await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");

    let mut dev = env.delta("dev", "d").await;
    dev.subscribe(CDS, &[], &[]).await.unwrap();
    dev.recv_and_ack().await.unwrap();
    env.delete("", Kind::Mesh, "dev").await;
    assert_eq!(dev.ended().await.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csds_reports_a_delta_stream() {
    use switchboard_xds_proto::pb::envoy::admin::v3::ClientResourceStatus;
    use switchboard_xds_proto::pb::envoy::service::status::v3::ClientStatusRequest;
    use switchboard_xds_proto::service::csds::ClientStatusDiscoveryServiceClient;
    let env = env().await;
    let mut client = env.delta("prod", "a").await;
    client.subscribe(CDS, &[], &[]).await.unwrap();
    let r = client.recv_and_ack().await.unwrap();
    client.subscribe(EDS, &["ghost"], &[]).await.unwrap();
    client.recv_and_ack().await.unwrap();
    assert_delta_quiet(&mut client).await;
    let api_key = switchboard_xds_server::testing::secret(
        &env.store,
        "acme",
        switchboard_store::CredentialKind::ApiKey,
        None,
    )
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
    let response = csds
        .fetch_client_status(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.config.len(), 1);
    let pay = response.config[0]
        .generic_xds_configs
        .iter()
        .find(|c| c.type_url == CDS && c.name == "pay")
        .expect("cluster pay");
    assert_eq!(pay.client_status, ClientResourceStatus::Acked as i32);
    assert_eq!(pay.version_info, r.system_version_info);
}
