#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The client against a hand-driven ADS server: ACKs, NACKs, subscriptions, reconnects.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchboard_proxy_xds::testing::resources::{
    eds_cluster, http_listener, load_assignment, redis_listener, regex_route_config, route_config,
};
use switchboard_proxy_xds::testing::{AdsServer, Received, response};
use switchboard_proxy_xds::{
    AdsConfig, ApiType, Bootstrap, ClientOptions, ConfigStore, XdsClient, XdsClientHandle,
};
use switchboard_runtime::eventually;
use switchboard_xds_proto::{Any, DiscoveryRequest, pack, type_url};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

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

async fn env() -> Env {
    let server = AdsServer::start().await.unwrap();
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "secret-token\n").unwrap();
    let bootstrap = Bootstrap {
        xds_address: server.url(),
        node_id: "tenants/acme/meshes/prod/nodes/p-1".to_owned(),
        metadata: [("role".to_owned(), "sidecar".to_owned())].into(),
        token_file: Some(token.path().to_owned()),
        xds_ca_file: None,
        xds_client_cert_file: None,
        xds_client_key_file: None,
        ads_config: AdsConfig {
            api_type: Some(ApiType::Grpc),
        },
    };
    let store = ConfigStore::new();
    let options = ClientOptions {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(1),
    };
    let client = XdsClient::new(bootstrap, &store, options).spawn();
    Env {
        server,
        store,
        client,
        _token: token,
    }
}

/// Counts the client's "xDS stream failed" warnings, one per failed (re)connect, so that a
/// test waits for the client to have retried instead of sleeping and hoping it has.
#[derive(Clone, Default)]
struct StreamFailures(Arc<AtomicUsize>);

impl StreamFailures {
    /// Counts the events of this thread (where the tests' current-thread runtime also runs
    /// the client) until the guard drops.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing_subscriber::registry()
            .with(self.clone())
            .set_default()
    }

    async fn wait_for(&self, n: usize) {
        eventually(&format!("{n} failed xDS streams"), || async {
            (self.0.load(Ordering::Relaxed) >= n).then_some(())
        })
        .await;
    }
}

impl<S: tracing::Subscriber> Layer<S> for StreamFailures {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Failed(bool);
        impl tracing::field::Visit for Failed {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}").starts_with("xDS stream failed");
                }
            }
        }
        let mut failed = Failed(false);
        event.record(&mut failed);
        if failed.0 {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn expect(server: &mut AdsServer, type_url: &str) -> Received {
    let r = server
        .next_request()
        .await
        .unwrap_or_else(|| panic!("no request of {type_url}"));
    assert_eq!(r.request.type_url, type_url, "{:?}", r.request);
    r
}

fn names(r: &DiscoveryRequest) -> Vec<&str> {
    r.resource_names.iter().map(String::as_str).collect()
}

fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
    pack(m)
}

fn assert_ack(r: &DiscoveryRequest, version: &str, nonce: &str) {
    assert_eq!(r.version_info, version, "{r:?}");
    assert_eq!(r.response_nonce, nonce, "{r:?}");
    assert!(r.error_detail.is_none(), "{r:?}");
}

/// Sends a response of `type_url` with `resources` and expects the client's ACK of it.
async fn respond_acked(
    server: &mut AdsServer,
    type_url: &str,
    version: &str,
    nonce: &str,
    resources: Vec<Any>,
) {
    assert!(server.respond(response(type_url, version, nonce, resources)));
    assert_ack(&expect(server, type_url).await.request, version, nonce);
}

/// Drives the initial sync: cluster `pay`, its endpoints, listener `out` and route `rc`.
async fn sync(env: &mut Env) {
    let s = &mut env.server;
    let cds = expect(s, CDS).await;
    assert!(
        cds.request.node.is_some(),
        "the node goes with the first request"
    );
    assert_eq!(cds.authorization.as_deref(), Some("Bearer secret-token"));
    assert!(names(&cds.request).is_empty(), "CDS is wildcard");
    let lds = expect(s, LDS).await;
    assert!(names(&lds.request).is_empty(), "LDS is wildcard");

    respond_acked(s, CDS, "c1", "n1", vec![any(&eds_cluster("pay"))]).await;
    let eds = expect(s, EDS).await;
    assert_eq!(names(&eds.request), ["pay"]);

    let cla = load_assignment("pay", &["10.0.0.1:8080".parse().unwrap()]);
    respond_acked(s, EDS, "e1", "n2", vec![any(&cla)]).await;

    respond_acked(
        s,
        LDS,
        "l1",
        "n3",
        vec![any(&http_listener("out", 15001, "rc"))],
    )
    .await;
    assert_eq!(names(&expect(s, RDS).await.request), ["rc"]);
    assert!(!env.client.is_ready(), "RDS is still missing");

    respond_acked(
        s,
        RDS,
        "r1",
        "n4",
        vec![any(&route_config("rc", "*", "pay"))],
    )
    .await;
    tokio::time::timeout(Duration::from_secs(5), env.client.ready())
        .await
        .expect("ready after the initial LDS, RDS, CDS and EDS");
}

#[tokio::test]
async fn initial_sync_acks_and_becomes_ready() {
    let mut env = env().await;
    sync(&mut env).await;
    let snap = env.store.snapshot();
    assert!(snap.listeners.contains_key("out"));
    assert!(snap.routes.contains_key("rc"));
    assert!(snap.clusters.contains_key("pay"));
    assert_eq!(snap.endpoints["pay"].localities[0].endpoints.len(), 1);
}

#[tokio::test]
async fn an_invalid_resource_is_nacked_and_the_valid_ones_apply() {
    let mut env = env().await;
    sync(&mut env).await;
    let s = &mut env.server;
    let redis = redis_listener("cache", 6379);
    let listeners = vec![
        any(&http_listener("out", 15001, "rc")),
        any(&redis),
        any(&http_listener("admin", 15002, "rc")),
    ];
    assert!(s.respond(response(LDS, "l2", "n5", listeners)));
    let nack = expect(s, LDS).await.request;
    assert_eq!(nack.version_info, "l1", "a NACK keeps the previous version");
    assert_eq!(nack.response_nonce, "n5");
    let detail = nack.error_detail.expect("error_detail").message;
    assert!(
        detail.contains(
            "cache: listener \"cache\": filter_chains[0].filters[0]: unsupported filter \
             envoy.filters.network.redis_proxy"
        ),
        "{detail}"
    );
    assert!(!detail.contains("admin"), "{detail}");
    let snap = env.store.snapshot();
    assert!(
        snap.listeners.contains_key("admin"),
        "the valid listener applied"
    );
    assert!(!snap.listeners.contains_key("cache"));

    // A bad regex rejects its route configuration; the previous one keeps serving.
    assert!(s.respond(response(
        RDS,
        "r2",
        "n6",
        vec![any(&regex_route_config("rc", "([a-z", "pay"))]
    )));
    let nack = expect(s, RDS).await.request;
    assert_eq!(nack.version_info, "r1");
    let detail = nack.error_detail.expect("error_detail").message;
    assert!(detail.starts_with("rc: route configuration \"rc\": virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex"), "{detail}");
    assert_eq!(
        env.store.snapshot().routes["rc"].virtual_hosts[0].domains,
        ["*"]
    );
}

#[tokio::test]
async fn rds_and_eds_subscriptions_follow_listeners_and_clusters() {
    let mut env = env().await;
    sync(&mut env).await;
    let s = &mut env.server;
    respond_acked(s, CDS, "c2", "n5", vec![any(&eds_cluster("web"))]).await;
    let eds = expect(s, EDS).await.request;
    assert_eq!(names(&eds), ["web"]);
    assert_eq!(eds.version_info, "e1");
    let snap = env.store.snapshot();
    assert!(
        !snap.clusters.contains_key("pay"),
        "absent from a CDS response: removed"
    );
    assert!(
        !snap.endpoints.contains_key("pay"),
        "no longer subscribed: dropped"
    );

    respond_acked(
        s,
        LDS,
        "l2",
        "n6",
        vec![any(&http_listener("out", 15001, "rc2"))],
    )
    .await;
    assert_eq!(names(&expect(s, RDS).await.request), ["rc2"]);
    assert!(!env.store.snapshot().routes.contains_key("rc"));
}

#[tokio::test]
async fn a_killed_server_leaves_the_config_and_a_restarted_one_resyncs() {
    let failures = StreamFailures::default();
    let _counting = failures.install();
    let mut env = env().await;
    sync(&mut env).await;
    let addr = env.server.addr;
    let before = env.store.snapshot();
    env.server.stop().await;
    // The client has failed and retried against the closed port a few times.
    failures.wait_for(3).await;
    let during = env.store.snapshot();
    assert_eq!(
        during.generation, before.generation,
        "nothing changed while away"
    );
    assert!(during.listeners.contains_key("out"));
    assert!(env.client.is_ready(), "still ready on the last good config");

    env.server = AdsServer::start_on(addr).await.unwrap();
    let s = &mut env.server;
    let cds = expect(s, CDS).await;
    assert!(cds.request.node.is_some());
    assert_eq!(cds.authorization.as_deref(), Some("Bearer secret-token"));
    assert_eq!(
        (
            cds.request.version_info.as_str(),
            cds.request.response_nonce.as_str()
        ),
        ("c1", "")
    );
    let lds = expect(s, LDS).await.request;
    assert_eq!(lds.version_info, "l1");
    let eds = expect(s, EDS).await.request;
    assert_eq!(
        (eds.version_info.as_str(), names(&eds)),
        ("e1", vec!["pay"])
    );
    let rds = expect(s, RDS).await.request;
    assert_eq!((rds.version_info.as_str(), names(&rds)), ("r1", vec!["rc"]));

    // The restarted server resyncs: a new listener set applies.
    respond_acked(
        s,
        LDS,
        "l9",
        "x1",
        vec![
            any(&http_listener("out", 15001, "rc")),
            any(&http_listener("extra", 15003, "rc")),
        ],
    )
    .await;
    assert!(env.store.snapshot().listeners.contains_key("extra"));
}

#[tokio::test]
async fn reconnects_back_off() {
    let failures = StreamFailures::default();
    let _counting = failures.install();
    let mut env = env().await;
    sync(&mut env).await;
    let addr = env.server.addr;
    env.server.stop().await;
    // With a 50 ms base doubling, five failed attempts bring the delay to its 400 ms cap;
    // the restarted server must see the client within one maximum backoff.
    failures.wait_for(5).await;
    let started = tokio::time::Instant::now();
    env.server = AdsServer::start_on(addr).await.unwrap();
    expect(&mut env.server, CDS).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(env.server.streams_opened(), 1);
}

/// A handler may refuse a resource after conversion (e.g. a port it cannot bind): that one
/// is NACKed, the rest of the response applies.
#[tokio::test]
async fn a_resource_the_handler_refuses_is_nacked() {
    use switchboard_proxy_xds::client::Handlers;
    use switchboard_proxy_xds::config::Listener;
    use switchboard_proxy_xds::{Handler, Rejected};

    struct NoLowPorts(ConfigStore);
    impl Handler<Listener> for NoLowPorts {
        fn apply(
            &mut self,
            updates: Vec<(String, Listener)>,
            removed: Vec<String>,
        ) -> Result<(), Vec<Rejected>> {
            let (low, ok): (Vec<_>, Vec<_>) = updates
                .into_iter()
                .partition(|(_, l)| l.address.port() < 1024);
            self.0.apply(ok, removed)?;
            let refused: Vec<Rejected> = low
                .into_iter()
                .map(|(n, _)| Rejected::new(n, "cannot bind a port below 1024 unprivileged"))
                .collect();
            if refused.is_empty() {
                Ok(())
            } else {
                Err(refused)
            }
        }
    }

    let mut server = AdsServer::start().await.unwrap();
    let store = ConfigStore::new();
    let mut handlers = Handlers::store(&store);
    handlers.listeners = Box::new(NoLowPorts(store.clone()));
    let bootstrap = Bootstrap {
        xds_address: server.url(),
        node_id: "n".to_owned(),
        metadata: Default::default(),
        token_file: None,
        xds_ca_file: None,
        xds_client_cert_file: None,
        xds_client_key_file: None,
        ads_config: AdsConfig {
            api_type: Some(ApiType::Grpc),
        },
    };
    let _client = XdsClient::with_handlers(bootstrap, handlers, ClientOptions::default()).spawn();
    let cds = expect(&mut server, CDS).await;
    assert_eq!(cds.authorization, None, "no token file, no token");
    expect(&mut server, LDS).await;
    let listeners = vec![
        any(&http_listener("web", 80, "rc")),
        any(&http_listener("out", 15001, "rc")),
    ];
    assert!(server.respond(response(LDS, "l1", "n1", listeners)));
    let nack = expect(&mut server, LDS).await.request;
    assert_eq!(nack.version_info, "");
    assert_eq!(
        nack.error_detail.unwrap().message,
        "web: cannot bind a port below 1024 unprivileged"
    );
    assert_eq!(names(&expect(&mut server, RDS).await.request), ["rc"]);
    let snap = store.snapshot();
    assert!(snap.listeners.contains_key("out") && !snap.listeners.contains_key("web"));
}

/// A server that answers each NACK by re-sending the same version (go-control-plane does)
/// gets the repeated NACKs paced, 100 ms doubling, instead of a tight loop; a different
/// version is answered at once.
#[tokio::test]
async fn repeated_nacks_of_one_version_are_paced() {
    let mut env = env().await;
    sync(&mut env).await;
    let s = &mut env.server;
    let bad = vec![any(&regex_route_config("rc", "(unclosed", "pay"))];
    let mut waits = Vec::new();
    for i in 0..5 {
        let nonce = format!("bad-{i}");
        let sent = std::time::Instant::now();
        assert!(s.respond(response(RDS, "r-bad", &nonce, bad.clone())));
        let nack = expect(s, RDS).await.request;
        assert_eq!(nack.response_nonce, nonce);
        assert!(nack.error_detail.is_some(), "{nack:?}");
        waits.push(sent.elapsed());
    }
    // 0, then at least 100, 200, 400 and 800 ms.
    for (i, min_ms) in [(1, 100), (2, 200), (3, 400), (4, 800)] {
        assert!(
            waits[i] >= Duration::from_millis(min_ms),
            "NACK {i} after {:?}: {waits:?}",
            waits[i]
        );
    }
    // A new version resets the pacing.
    let sent = std::time::Instant::now();
    assert!(s.respond(response(RDS, "r-bad-2", "bad-x", bad.clone())));
    let nack = expect(s, RDS).await.request;
    assert_eq!(nack.response_nonce, "bad-x");
    // Unpaced, it comes back at once; still paced, it would wait 1.6 s.
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "{:?}",
        sent.elapsed()
    );
}
