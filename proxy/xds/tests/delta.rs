#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The client's incremental xDS (its default protocol) against a hand-driven delta server:
//! wildcard and named subscriptions and their deltas, per-resource versions, ACKs and NACKs,
//! `removed_resources` (removal, and "does not exist" for a name never held),
//! `initial_resource_versions` on reconnect, and the fall-back to state of the world when a
//! control plane answers delta with `UNIMPLEMENTED`.

use std::collections::HashMap;
use std::time::Duration;

use switchboard_proxy_xds::testing::resources::{
    eds_cluster, http_listener, load_assignment, redis_listener, regex_route_config, route_config,
};
use switchboard_proxy_xds::testing::{AdsServer, DeltaReceived, Serves, delta_response};
use switchboard_proxy_xds::{
    AdsConfig, ApiType, Bootstrap, ClientOptions, ConfigStore, XdsClient, XdsClientHandle,
};
use switchboard_runtime::eventually;
use switchboard_xds_proto::{
    Any, DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource, pack, type_url,
};

const LDS: &str = type_url::LISTENER;
const RDS: &str = type_url::ROUTE_CONFIGURATION;
const CDS: &str = type_url::CLUSTER;
const EDS: &str = type_url::CLUSTER_LOAD_ASSIGNMENT;

struct Env {
    server: AdsServer,
    store: ConfigStore,
    client: XdsClientHandle,
    _token: tempfile::NamedTempFile,
}

fn bootstrap(
    server: &AdsServer,
    token: &tempfile::NamedTempFile,
    api: Option<ApiType>,
) -> Bootstrap {
    Bootstrap {
        xds_address: server.url(),
        node_id: "tenants/acme/meshes/prod/nodes/p-1".to_owned(),
        metadata: [("role".to_owned(), "sidecar".to_owned())].into(),
        token_file: Some(token.path().to_owned()),
        xds_ca_file: None,
        xds_client_cert_file: None,
        xds_client_key_file: None,
        ads_config: AdsConfig { api_type: api },
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(1),
    }
}

/// A client with the default protocol (delta) against `server`.
fn env_on(server: AdsServer, api: Option<ApiType>) -> Env {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "secret-token\n").unwrap();
    let store = ConfigStore::new();
    let client = XdsClient::new(bootstrap(&server, &token, api), &store, options()).spawn();
    Env {
        server,
        store,
        client,
        _token: token,
    }
}

async fn env() -> Env {
    env_on(AdsServer::start_delta().await.unwrap(), None)
}

async fn expect(server: &mut AdsServer, type_url: &str) -> DeltaReceived {
    let r = server
        .next_delta()
        .await
        .unwrap_or_else(|| panic!("no delta request of {type_url}"));
    assert_eq!(r.request.type_url, type_url, "{:?}", r.request);
    r
}

fn subscribed(r: &DeltaDiscoveryRequest) -> Vec<&str> {
    r.resource_names_subscribe
        .iter()
        .map(String::as_str)
        .collect()
}

fn unsubscribed(r: &DeltaDiscoveryRequest) -> Vec<&str> {
    r.resource_names_unsubscribe
        .iter()
        .map(String::as_str)
        .collect()
}

fn versions(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
    pack(m)
}

fn assert_ack(r: &DeltaDiscoveryRequest, nonce: &str) {
    assert_eq!(r.response_nonce, nonce, "{r:?}");
    assert!(r.error_detail.is_none(), "{r:?}");
    assert!(
        r.resource_names_subscribe.is_empty() && r.resource_names_unsubscribe.is_empty(),
        "an ACK changes no subscription: {r:?}"
    );
}

/// Sends `response` and expects the client's ACK of it.
async fn respond_acked(server: &mut AdsServer, response: DeltaDiscoveryResponse) {
    let (type_url, nonce) = (response.type_url.clone(), response.nonce.clone());
    assert!(server.respond_delta(response));
    assert_ack(&expect(server, &type_url).await.request, &nonce);
}

/// Drives the initial sync: cluster `pay` (c1), its endpoints (e1), listener `out` (l1) and
/// route `rc` (r1).
async fn sync(env: &mut Env) {
    let s = &mut env.server;
    let cds = expect(s, CDS).await;
    assert!(
        cds.request.node.is_some(),
        "the node goes with the first request"
    );
    assert_eq!(cds.authorization.as_deref(), Some("Bearer secret-token"));
    assert_eq!(subscribed(&cds.request), ["*"], "CDS is wildcard");
    assert!(cds.request.initial_resource_versions.is_empty());
    let lds = expect(s, LDS).await;
    assert!(lds.request.node.is_none(), "the node goes once");
    assert_eq!(subscribed(&lds.request), ["*"], "LDS is wildcard");

    let cds = delta_response(CDS, "n1", vec![("c1", any(&eds_cluster("pay")))], &[]);
    respond_acked(s, cds).await;
    let eds = expect(s, EDS).await.request;
    assert_eq!(
        (subscribed(&eds), eds.response_nonce.as_str()),
        (vec!["pay"], "")
    );

    let cla = load_assignment("pay", &["10.0.0.1:8080".parse().unwrap()]);
    respond_acked(s, delta_response(EDS, "n2", vec![("e1", any(&cla))], &[])).await;

    let out = any(&http_listener("out", 15001, "rc"));
    respond_acked(s, delta_response(LDS, "n3", vec![("l1", out)], &[])).await;
    assert_eq!(subscribed(&expect(s, RDS).await.request), ["rc"]);
    assert!(!env.client.is_ready(), "RDS is still missing");

    let rc = any(&route_config("rc", "*", "pay"));
    respond_acked(s, delta_response(RDS, "n4", vec![("r1", rc)], &[])).await;
    tokio::time::timeout(Duration::from_secs(5), env.client.ready())
        .await
        .expect("ready after the initial LDS, RDS, CDS and EDS");
}

#[tokio::test]
async fn initial_sync_subscribes_acks_and_becomes_ready() {
    let mut env = env().await;
    sync(&mut env).await;
    let snap = env.store.snapshot();
    assert!(snap.listeners.contains_key("out"));
    assert!(snap.routes.contains_key("rc"));
    assert!(snap.clusters.contains_key("pay"));
    assert_eq!(snap.endpoints["pay"].localities[0].endpoints.len(), 1);
    assert_eq!(env.server.streams_opened(), 1);
}

#[tokio::test]
async fn updates_add_without_removing_and_removals_unsubscribe() {
    let mut env = env().await;
    sync(&mut env).await;
    let s = &mut env.server;
    // An incremental update adds `web`: `pay` stays, EDS subscribes to `web` only.
    respond_acked(
        s,
        delta_response(CDS, "n5", vec![("c2", any(&eds_cluster("web")))], &[]),
    )
    .await;
    let eds = expect(s, EDS).await.request;
    assert_eq!(
        (subscribed(&eds), unsubscribed(&eds)),
        (vec!["web"], vec![])
    );
    let snap = env.store.snapshot();
    assert!(snap.clusters.contains_key("pay") && snap.clusters.contains_key("web"));

    // Removing `pay` unsubscribes its endpoints and drops them.
    respond_acked(s, delta_response(CDS, "n6", vec![], &["pay"])).await;
    let eds = expect(s, EDS).await.request;
    assert_eq!(
        (subscribed(&eds), unsubscribed(&eds)),
        (vec![], vec!["pay"])
    );
    let snap = env.store.snapshot();
    assert!(
        !snap.clusters.contains_key("pay"),
        "removed_resources: removed"
    );
    assert!(
        !snap.endpoints.contains_key("pay"),
        "no longer subscribed: dropped"
    );
    assert!(snap.clusters.contains_key("web"));

    // A listener moving to another route configuration swaps the RDS subscription.
    let out = any(&http_listener("out", 15001, "rc2"));
    respond_acked(s, delta_response(LDS, "n7", vec![("l2", out)], &[])).await;
    let rds = expect(s, RDS).await.request;
    assert_eq!(
        (subscribed(&rds), unsubscribed(&rds)),
        (vec!["rc2"], vec!["rc"])
    );
    assert!(!env.store.snapshot().routes.contains_key("rc"));
}

#[tokio::test]
async fn a_name_that_does_not_exist_does_not_block_readiness() {
    let mut env = env().await;
    let s = &mut env.server;
    expect(s, CDS).await;
    expect(s, LDS).await;
    respond_acked(s, delta_response(CDS, "n1", vec![], &[])).await;
    let out = any(&http_listener("out", 15001, "missing"));
    respond_acked(s, delta_response(LDS, "n2", vec![("l1", out)], &[])).await;
    assert_eq!(subscribed(&expect(s, RDS).await.request), ["missing"]);
    assert!(!env.client.is_ready());
    // The server says the subscribed name does not exist: nothing to wait for.
    respond_acked(s, delta_response(RDS, "n3", vec![], &["missing"])).await;
    tokio::time::timeout(Duration::from_secs(5), env.client.ready())
        .await
        .expect("ready once the missing route configuration is known not to exist");
    assert!(env.store.snapshot().routes.is_empty());
}

#[tokio::test]
async fn an_invalid_resource_is_nacked_and_the_valid_ones_apply() {
    let mut env = env().await;
    sync(&mut env).await;
    let s = &mut env.server;
    let mut response = delta_response(
        LDS,
        "n5",
        vec![
            ("l2", any(&http_listener("out", 15001, "rc"))),
            ("l2", any(&redis_listener("cache", 6379))),
            ("l2", any(&http_listener("admin", 15002, "rc"))),
        ],
        &[],
    );
    // A wrapper naming another resource than the one inside is refused by its name.
    response.resources.push(Resource {
        name: "liar".to_owned(),
        version: "l2".to_owned(),
        resource: Some(any(&http_listener("honest", 15003, "rc"))),
        ..Default::default()
    });
    assert!(s.respond_delta(response));
    let nack = expect(s, LDS).await.request;
    assert_eq!(nack.response_nonce, "n5");
    let detail = nack.error_detail.expect("error_detail").message;
    assert!(
        detail.contains(
            "cache: listener \"cache\": filter_chains[0].filters[0]: unsupported filter \
             envoy.filters.network.redis_proxy"
        ),
        "{detail}"
    );
    assert!(
        detail.contains("liar: the resource inside is named \"honest\""),
        "{detail}"
    );
    assert!(!detail.contains("admin"), "{detail}");
    let snap = env.store.snapshot();
    assert!(
        snap.listeners.contains_key("admin"),
        "the valid listener applied"
    );
    assert!(!snap.listeners.contains_key("cache") && !snap.listeners.contains_key("honest"));

    // A bad regex rejects its route configuration; the previous one keeps serving.
    let bad = any(&regex_route_config("rc", "([a-z", "pay"));
    assert!(s.respond_delta(delta_response(RDS, "n6", vec![("r2", bad)], &[])));
    let nack = expect(s, RDS).await.request;
    let detail = nack.error_detail.expect("error_detail").message;
    assert!(
        detail.starts_with("rc: route configuration \"rc\""),
        "{detail}"
    );
    assert_eq!(
        env.store.snapshot().routes["rc"].virtual_hosts[0].domains,
        ["*"]
    );
}

/// A `Resource` without a body (a TTL heartbeat) keeps a held resource as it is; for a name
/// not held it is refused.
#[tokio::test]
async fn a_resource_without_a_body_refreshes_only_what_is_held() {
    let mut env = env().await;
    sync(&mut env).await;
    let bodiless = |name: &str| Resource {
        name: name.to_owned(),
        version: "l1".to_owned(),
        ..Default::default()
    };
    let mut heartbeat = delta_response(LDS, "n5", vec![], &[]);
    heartbeat.resources.push(bodiless("out"));
    respond_acked(&mut env.server, heartbeat).await;
    assert!(env.store.snapshot().listeners.contains_key("out"));

    let mut ghost = delta_response(LDS, "n6", vec![], &[]);
    ghost.resources.push(bodiless("ghost"));
    assert!(env.server.respond_delta(ghost));
    let nack = expect(&mut env.server, LDS).await.request;
    assert_eq!(
        nack.error_detail.expect("error_detail").message,
        "ghost: the resource carries no body"
    );
    assert!(env.store.snapshot().listeners.contains_key("out"));
}

#[tokio::test]
async fn a_reconnect_states_the_versions_held_and_the_subscriptions() {
    let mut env = env().await;
    sync(&mut env).await;
    let addr = env.server.addr;
    // A rejected update leaves the held version as it was.
    let bad = any(&regex_route_config("rc", "([a-z", "pay"));
    assert!(
        env.server
            .respond_delta(delta_response(RDS, "n5", vec![("r2", bad)], &[]))
    );
    assert!(
        expect(&mut env.server, RDS)
            .await
            .request
            .error_detail
            .is_some()
    );
    env.server.stop().await;
    let before = env.store.snapshot();

    env.server = AdsServer::start_serving(addr, Serves::Delta).await.unwrap();
    let s = &mut env.server;
    let cds = expect(s, CDS).await.request;
    assert!(cds.node.is_some());
    assert_eq!(subscribed(&cds), ["*"]);
    assert_eq!(cds.initial_resource_versions, versions(&[("pay", "c1")]));
    assert_eq!(cds.response_nonce, "");
    let lds = expect(s, LDS).await.request;
    assert_eq!(lds.initial_resource_versions, versions(&[("out", "l1")]));
    let eds = expect(s, EDS).await.request;
    assert_eq!(subscribed(&eds), ["pay"]);
    assert_eq!(eds.initial_resource_versions, versions(&[("pay", "e1")]));
    let rds = expect(s, RDS).await.request;
    assert_eq!(subscribed(&rds), ["rc"]);
    assert_eq!(rds.initial_resource_versions, versions(&[("rc", "r1")]));
    assert_eq!(
        env.store.snapshot().generation,
        before.generation,
        "nothing changed while away"
    );
    assert!(env.client.is_ready(), "still ready on the last good config");

    // The new server sends only what changed.
    let extra = any(&http_listener("extra", 15003, "rc"));
    respond_acked(s, delta_response(LDS, "x1", vec![("l9", extra)], &[])).await;
    let snap = env.store.snapshot();
    assert!(snap.listeners.contains_key("extra") && snap.listeners.contains_key("out"));
}

#[tokio::test]
async fn repeated_nacks_of_one_version_are_paced() {
    let mut env = env().await;
    sync(&mut env).await;
    let s = &mut env.server;
    let bad = any(&regex_route_config("rc", "(unclosed", "pay"));
    let mut waits = Vec::new();
    for i in 0..4 {
        let nonce = format!("bad-{i}");
        let sent = std::time::Instant::now();
        assert!(s.respond_delta(delta_response(
            RDS,
            &nonce,
            vec![("r-bad", bad.clone())],
            &[]
        )));
        let nack = expect(s, RDS).await.request;
        assert_eq!(nack.response_nonce, nonce);
        assert!(nack.error_detail.is_some(), "{nack:?}");
        waits.push(sent.elapsed());
    }
    for (i, min_ms) in [(1, 100), (2, 200), (3, 400)] {
        assert!(
            waits[i] >= Duration::from_millis(min_ms),
            "NACK {i} after {:?}: {waits:?}",
            waits[i]
        );
    }
    // A new version of the resource resets the pacing (still paced, it would wait 800 ms).
    let sent = std::time::Instant::now();
    assert!(s.respond_delta(delta_response(RDS, "bad-x", vec![("r-bad-2", bad)], &[])));
    assert_eq!(expect(s, RDS).await.request.response_nonce, "bad-x");
    assert!(
        sent.elapsed() < Duration::from_millis(750),
        "{:?}",
        sent.elapsed()
    );
}

/// By default a control plane without delta gets state of the world, at once and for good.
#[tokio::test]
async fn by_default_an_unimplemented_delta_falls_back_to_sotw() {
    let mut env = env_on(AdsServer::start().await.unwrap(), None);
    let cds = env.server.next_of(CDS).await.expect("a SotW request");
    assert!(cds.request.node.is_some());
    assert_eq!(cds.authorization.as_deref(), Some("Bearer secret-token"));
    assert_eq!(env.server.calls_refused(), 1, "delta was tried once");
    // A later reconnect stays on state of the world.
    let addr = env.server.addr;
    env.server.stop().await;
    env.server = AdsServer::start_on(addr).await.unwrap();
    env.server.next_of(CDS).await.expect("a SotW request again");
    assert_eq!(env.server.calls_refused(), 0);
}

/// Asked for explicitly, delta is what the client speaks: it retries, never falls back.
#[tokio::test]
async fn an_explicit_delta_keeps_retrying_delta() {
    let env = env_on(AdsServer::start().await.unwrap(), Some(ApiType::DeltaGrpc));
    eventually("three refused delta calls", || async {
        (env.server.calls_refused() >= 3).then_some(())
    })
    .await;
    assert_eq!(env.server.streams_opened(), 0, "no SotW stream");
    assert!(!env.client.is_ready());
}
