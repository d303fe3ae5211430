//! The protocol over a real stream.

use std::time::Duration;

use serde_json::json;
use switchboard_model::Kind;
use switchboard_xds_proto::ResourceType;
use switchboard_xds_server::ClientState;
use switchboard_xds_server::testing::{AdsClient, node, with_metadata};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_is_recorded_with_its_revision() {
    let env = env().await;
    let mut client = env.client("prod", "a").await;
    client.subscribe(CDS, &[]).await.unwrap();
    let r = client.recv().await.unwrap();
    assert_eq!(r.type_url, CDS);
    assert_eq!(names(&r), ["pay"]);
    client.ack(&r, &[]).await.unwrap();
    assert_quiet(&mut client).await;
    let status = env.server.xds.registry().node("acme", "prod", "a");
    assert_eq!(status.len(), 1);
    let cds = &status[0].types[&ResourceType::Cluster];
    assert_eq!(cds.state(), ClientState::Acked);
    let acked = cds.acked.as_ref().unwrap();
    assert_eq!(acked.version, r.version_info);
    assert_eq!(acked.revision, env.store.revision("acme").await.unwrap());
    assert_eq!(status[0].role, "proxyless");
    assert!(status[0].authenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_keeps_the_last_good_and_is_reported() {
    let env = env().await;
    let (mut client, good) = env.cds_client("prod", "a").await;
    env.put(
        "prod",
        Kind::Service,
        "pay",
        json!({"port": 8080, "protocol": "http2"}),
    )
    .await;
    let bad = client.recv().await.unwrap();
    assert_ne!(bad.version_info, good.version_info);
    client
        .nack(
            &bad,
            &[],
            &good.version_info,
            "cluster pay: unsupported option",
        )
        .await
        .unwrap();
    // The rejected version is not sent again.
    assert_quiet(&mut client).await;
    let status = env.server.xds.registry().node("acme", "prod", "a");
    let cds = &status[0].types[&ResourceType::Cluster];
    assert_eq!(cds.state(), ClientState::Nacked);
    let nack = cds.nack.as_ref().unwrap();
    assert_eq!(nack.version, bad.version_info);
    assert_eq!(nack.nonce, bad.nonce);
    assert_eq!(nack.message, "cluster pay: unsupported option");
    assert_eq!(cds.acked.as_ref().unwrap().version, good.version_info);
    // A new change is sent, and its ACK clears the error state.
    env.put("prod", Kind::Service, "pay", json!({"port": 8081}))
        .await;
    let fixed = client.recv_and_ack(&[]).await.unwrap();
    assert_ne!(fixed.version_info, bad.version_info);
    assert_quiet(&mut client).await;
    let status = env.server.xds.registry().node("acme", "prod", "a");
    assert_eq!(
        status[0].types[&ResourceType::Cluster].state(),
        ClientState::Acked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_nonce_applies_names_but_not_ack_or_nack() {
    let env = env().await;
    env.put("prod", Kind::Service, "shop", json!({"port": 80}))
        .await;
    let mut client = env.client("prod", "a").await;
    client.subscribe(EDS, &["pay"]).await.unwrap();
    let first = client.recv().await.unwrap();
    assert_eq!(names(&first), ["pay"]);
    env.put(
        "prod",
        Kind::Endpoint,
        "pay-1",
        json!({"service": "pay", "address": "10.0.0.1"}),
    )
    .await;
    let second = client.recv().await.unwrap();
    assert_eq!(names(&second), ["pay"]);
    // A NACK naming the first (stale) nonce, which also adds "shop".
    client
        .nack(&first, &["pay", "shop"], "", "stale complaint")
        .await
        .unwrap();
    let third = client.recv().await.unwrap();
    assert_eq!(names(&third), ["shop"]);
    let status = env.server.xds.registry().node("acme", "prod", "a");
    let eds = &status[0].types[&ResourceType::ClusterLoadAssignment];
    assert!(eds.nack.is_none(), "a stale nonce does not NACK");
    assert!(eds.acked.is_none(), "nor ACK");
    assert_eq!(eds.names, ["pay", "shop"]);
    client.ack(&third, &["pay", "shop"]).await.unwrap();
    assert_quiet(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_and_explicit_wildcard() {
    let env = env().await;
    let mut legacy = env.client("prod", "legacy").await;
    let mut explicit = env.client("prod", "explicit").await;
    legacy.subscribe(LDS, &[]).await.unwrap();
    explicit.subscribe(LDS, &["*"]).await.unwrap();
    let a = legacy.recv_and_ack(&[]).await.unwrap();
    let b = explicit.recv_and_ack(&["*"]).await.unwrap();
    assert_eq!(
        names(&a),
        ["pay", "pay:8080"],
        "proxyless clients get host-named listeners"
    );
    assert_eq!(names(&a), names(&b));
    assert_eq!(a.version_info, b.version_info);
    env.put("prod", Kind::Service, "shop", json!({"port": 80}))
        .await;
    for (client, subscription) in [(&mut legacy, &[][..]), (&mut explicit, &["*"][..])] {
        let r = client.recv_and_ack(subscription).await.unwrap();
        assert_eq!(names(&r), ["pay", "pay:8080", "shop", "shop:80"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_subscribe_and_unsubscribe() {
    let env = env().await;
    env.put("prod", Kind::Service, "shop", json!({"port": 80}))
        .await;
    let mut client = env.client("prod", "a").await;
    client.subscribe(RDS, &["pay:8080"]).await.unwrap();
    let r = client.recv_and_ack(&["pay:8080"]).await.unwrap();
    assert_eq!(names(&r), ["pay:8080"]);
    // Adding a name sends only it.
    client
        .subscribe(RDS, &["pay:8080", "shop:80"])
        .await
        .unwrap();
    let r = client.recv_and_ack(&["pay:8080", "shop:80"]).await.unwrap();
    assert_eq!(names(&r), ["shop:80"]);
    // After unsubscribing, its changes are not sent.
    client.subscribe(RDS, &["pay:8080"]).await.unwrap();
    assert_quiet(&mut client).await;
    env.put("prod", Kind::Service, "shop", json!({"port": 81}))
        .await;
    assert_quiet(&mut client).await;
    // CDS by name: full state of the names.
    client.subscribe(CDS, &["shop"]).await.unwrap();
    let r = client.recv_and_ack(&["shop"]).await.unwrap();
    assert_eq!(names(&r), ["shop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_that_appear_later_are_pushed() {
    let env = env().await;
    let mut client = env.client("prod", "a").await;
    client.subscribe(EDS, &["later"]).await.unwrap();
    assert_quiet(&mut client).await;
    client.subscribe(LDS, &["later"]).await.unwrap();
    // A listener that does not exist is answered at once: the empty full state.
    let empty = client.recv_and_ack(&["later"]).await.unwrap();
    assert_eq!(empty.type_url, LDS);
    assert!(empty.resources.is_empty());
    env.put("prod", Kind::Service, "later", json!({"port": 9000}))
        .await;
    let got = collect_until(
        &mut client,
        |_| vec!["later"],
        |got| got.iter().any(|r| r.type_url == EDS) && got.iter().any(|r| r.type_url == LDS),
    )
    .await;
    let eds = got.iter().find(|r| r.type_url == EDS).unwrap();
    assert_eq!(names(eds), ["later"]);
    let lds = got.iter().find(|r| r.type_url == LDS).unwrap();
    assert_eq!(names(lds), ["later"]);
    // Endpoints before listeners.
    let pos = |t: &str| got.iter().position(|r| r.type_url == t).unwrap();
    assert!(pos(EDS) < pos(LDS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_gets_the_same_version() {
    let env = env().await;
    let (client, before) = env.cds_client("prod", "a").await;
    drop(client);
    // The registry forgets the stream once the server notices the disconnect.
    for _ in 0..100 {
        if env.server.xds.registry().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(env.server.xds.registry().is_empty());
    let mut again = env.client("prod", "a").await;
    again
        .request(CDS, &[], &before.version_info, "")
        .await
        .unwrap();
    let after = again.recv_and_ack(&[]).await.unwrap();
    assert_eq!(after.version_info, before.version_info);
    assert_eq!(names(&after), ["pay"]);
    // Changes made while away arrive after reconnecting.
    drop(again);
    env.put("prod", Kind::Service, "shop", json!({"port": 80}))
        .await;
    let mut third = env.client("prod", "a").await;
    third.subscribe(CDS, &[]).await.unwrap();
    assert_eq!(names(&third.recv().await.unwrap()), ["pay", "shop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_before_break_on_a_new_cluster_and_route() {
    let env = env().await;
    env.put(
        "prod",
        Kind::Route,
        "r",
        json!({"hostnames": ["shop"], "rules": [{"backends": [{"service": "pay"}]}]}),
    )
    .await;
    let mut client = env.client("prod", "a").await;
    let subs = |t: &str| -> Vec<&'static str> {
        match t {
            LDS => vec!["shop"],
            RDS => vec!["r"],
            EDS => vec!["pay", "new"],
            _ => vec![],
        }
    };
    for t in [LDS, RDS, CDS, EDS] {
        client.subscribe(t, &subs(t)).await.unwrap();
    }
    collect_until(&mut client, subs, |got| {
        [LDS, RDS, CDS, EDS]
            .iter()
            .all(|t| got.iter().any(|r| r.type_url == *t))
    })
    .await;
    // A new service, and the route moved to it.
    env.put("prod", Kind::Service, "new", json!({"port": 8080}))
        .await;
    env.put(
        "prod",
        Kind::Route,
        "r",
        json!({"hostnames": ["shop"], "rules": [{"backends": [{"service": "new"}]}]}),
    )
    .await;
    let route_to_new = |r: &switchboard_xds_proto::DiscoveryResponse| {
        r.type_url == RDS && debug_of(r).contains("\"new\"")
    };
    let got = collect_until(&mut client, subs, |got| got.iter().any(route_to_new)).await;
    let cds = got
        .iter()
        .position(|r| r.type_url == CDS && names(r).contains(&"new".to_owned()))
        .expect("CDS with the new cluster");
    let eds = got
        .iter()
        .position(|r| r.type_url == EDS && names(r).contains(&"new".to_owned()))
        .expect("EDS of the new cluster");
    let rds = got.iter().position(route_to_new).unwrap();
    assert!(
        cds < eds && eds < rds,
        "order: {:?}",
        got.iter().map(|r| &r.type_url).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_acks_does_not_block_others() {
    let env = env().await;
    let mut stuck = env.client("prod", "stuck").await;
    stuck.subscribe(CDS, &[]).await.unwrap();
    stuck.subscribe(EDS, &["pay"]).await.unwrap();
    let (mut live, _) = env.cds_client("prod", "live").await;
    // Timeouts unlike the default (5 s), so that the last one written is told apart.
    for round in 11..=15u32 {
        set_pay_timeout(&env, round).await;
        let r = live.recv_and_ack(&[]).await.unwrap();
        assert_eq!(names(&r), ["pay"]);
        // One change is one response.
        assert_quiet_for(&mut live, Duration::from_millis(50)).await;
    }
    // The stuck client is still connected and, once it reads and ACKs again, gets the
    // latest state: the last version written.
    let subs = |t: &str| -> Vec<&'static str> {
        match t {
            EDS => vec!["pay"],
            _ => vec![],
        }
    };
    let latest = |r: &switchboard_xds_proto::DiscoveryResponse| {
        r.type_url == CDS && debug_of(r).contains("seconds: 15,")
    };
    let got = collect_until(&mut stuck, subs, |got| got.iter().any(latest)).await;
    assert!(
        got.iter().any(|r| r.type_url == EDS),
        "and its endpoints: {:?}",
        got.iter().map(|r| &r.type_url).collect::<Vec<_>>()
    );
    assert_quiet(&mut stuck).await;
}

/// Sets the connect timeout of `prod/pay` to `seconds`, a value every CDS response then
/// shows (`seconds: {seconds},`).
async fn set_pay_timeout(env: &Env, seconds: u32) {
    env.put(
        "prod",
        Kind::Service,
        "pay",
        json!({"port": 8080, "connectTimeout": format!("{seconds}s")}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshes_are_isolated() {
    let env = env().await;
    env.put("dev", Kind::Service, "dev-only", json!({"port": 80}))
        .await;
    let mut prod = env.client("prod", "p").await;
    let mut dev = env.client("dev", "d").await;
    for c in [&mut prod, &mut dev] {
        c.subscribe(CDS, &[]).await.unwrap();
        c.subscribe(LDS, &["pay", "dev-only"]).await.unwrap();
        c.subscribe(EDS, &["pay", "dev-only"]).await.unwrap();
        c.subscribe(RDS, &["pay:8080", "dev-only:80"])
            .await
            .unwrap();
    }
    let subs = |t: &str| -> Vec<&'static str> {
        match t {
            LDS | EDS => vec!["pay", "dev-only"],
            RDS => vec!["pay:8080", "dev-only:80"],
            _ => vec![],
        }
    };
    let all = |got: &[switchboard_xds_proto::DiscoveryResponse]| {
        [CDS, LDS, EDS, RDS]
            .iter()
            .all(|t| got.iter().any(|r| r.type_url == *t))
    };
    let p = collect_until(&mut prod, subs, all).await;
    let d = collect_until(&mut dev, subs, all).await;
    for r in &p {
        assert!(
            !names(r).iter().any(|n| n.starts_with("dev-only")),
            "{:?}",
            names(r)
        );
    }
    for r in &d {
        assert!(
            !names(r).iter().any(|n| n.starts_with("pay")),
            "{:?}",
            names(r)
        );
    }
    // A change in dev is not pushed to prod.
    env.put("dev", Kind::Service, "dev-only", json!({"port": 81}))
        .await;
    let r = dev.recv_and_ack(&subs(CDS)).await.unwrap();
    assert!(!r.resources.is_empty());
    assert_quiet(&mut prod).await;
    // Another tenant's mesh of the same name is another mesh.
    crate::common::put(
        &env.store,
        "globex",
        "prod",
        Kind::Service,
        "secret",
        json!({"port": 1}),
    )
    .await;
    assert_quiet(&mut prod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_get_outbound_and_inbound() {
    let env = env().await;
    let sidecar = with_metadata(
        node("acme", "prod", "pay-1"),
        &[
            ("role", "sidecar"),
            ("service", "pay"),
            ("app_port", "8080"),
        ],
    );
    let mut client = AdsClient::connect(&env.server.url(), sidecar, Some(&env.token))
        .await
        .unwrap();
    client.subscribe(CDS, &[]).await.unwrap();
    client.subscribe(LDS, &[]).await.unwrap();
    let got = collect_until(&mut client, |_| vec![], |got| got.len() >= 2).await;
    assert_eq!(got[0].type_url, CDS);
    assert_eq!(names(&got[0]), ["inbound|8080", "pay"]);
    assert_eq!(got[1].type_url, LDS);
    assert_eq!(names(&got[1]), ["sidecar/inbound", "sidecar/outbound"]);
    let status = env.server.xds.registry().node("acme", "prod", "pay-1");
    assert_eq!(status[0].role, "sidecar of pay");
    let sent = env.server.xds.registry().resources("acme", "prod", "pay-1");
    assert_eq!(sent[&ResourceType::Listener].len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_mesh_ends_its_streams() {
    let env = env().await;
    let (mut client, _) = env.cds_client("dev", "d").await;
    env.delete("", Kind::Mesh, "dev").await;
    let status = client.ended().await;
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_get_an_empty_answer() {
    let env = env().await;
    let mut client = env.client("prod", "a").await;
    let runtime = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
    client.subscribe(runtime, &[]).await.unwrap();
    let r = client.recv().await.unwrap();
    assert_eq!(r.type_url, runtime);
    assert!(r.resources.is_empty());
    client.subscribe(CDS, &[]).await.unwrap();
    assert_eq!(names(&client.recv().await.unwrap()), ["pay"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_type_service() {
    use switchboard_xds_proto::service::cds::ClusterDiscoveryServiceClient;
    let env = env().await;
    let mut client = ClusterDiscoveryServiceClient::connect(env.server.url())
        .await
        .unwrap();
    let mut request = tonic::Request::new(switchboard_xds_server::testing::request(
        Some(&node("acme", "prod", "c")),
        "",
        &[],
        "",
        "",
    ));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", env.token).parse().unwrap(),
    );
    let response = client.fetch_clusters(request).await.unwrap().into_inner();
    assert_eq!(response.type_url, CDS);
    assert_eq!(names(&response), ["pay"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_skips_to_the_latest_state() {
    let env = env().await;
    for i in 0..150 {
        env.put(
            "prod",
            Kind::Service,
            &format!("svc-{i}"),
            json!({"port": 8080}),
        )
        .await;
    }
    let mut slow = env.client("prod", "slow").await;
    slow.subscribe(CDS, &[]).await.unwrap();
    let (mut live, _) = env.cds_client("prod", "live").await;
    // Each push is a full CDS state of 151 clusters; the slow client reads none of them, so
    // its HTTP/2 window fills while the live client keeps up.
    for round in 11..=18u32 {
        set_pay_timeout(&env, round).await;
        let r = tokio::time::timeout(Duration::from_secs(5), live.recv_and_ack(&[]))
            .await
            .expect("the live client is not held up")
            .unwrap();
        assert!(
            debug_of(&r).contains(&format!("seconds: {round},")),
            "round {round}"
        );
    }
    // The slow client ends up with the latest state.
    let mut last = None;
    while let Some(r) = slow.recv_within(QUIET).await {
        let r = r.unwrap();
        slow.ack(&r, &[]).await.unwrap();
        last = Some(r);
    }
    let last = last.expect("the slow client got responses");
    assert!(debug_of(&last).contains("seconds: 18,"), "latest state");
}
