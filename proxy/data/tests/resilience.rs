#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Resilience over real sockets: ring hash, circuit breakers, retry budgets, outlier
//! detection (ejection, backoff, panic mode), request mirroring, `describe()` and the
//! upstream metrics; a proxy on 127.0.0.1 in front of scripted hyper backends.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use switchboard_proxy_data::ClusterManager;
use switchboard_proxy_data::cluster::{ClusterStatus, EndpointStatus, Threshold};
use switchboard_proxy_xds::config::cluster::{
    LbPolicy, OutlierDetection, RetryBudget, RingHashConfig, UpstreamProtocol,
};
use switchboard_proxy_xds::config::endpoint::{
    Endpoint, Health, LoadAssignment, Locality, LocalityEndpoints,
};
use switchboard_proxy_xds::config::route::{
    Action, Forward, HashOn, HashPolicy, Mirror, PathMatch, RetryPolicy, Route,
};
use switchboard_proxy_xds::{ConfigStore, Handler};
use switchboard_runtime::eventually;

use support::*;

/// A proxy serving `routes` (under domain `*`), with its cluster manager at hand.
struct Proxy {
    store: ConfigStore,
    addr: SocketAddr,
    clusters: Arc<ClusterManager>,
}

impl Proxy {
    async fn start(mut store: ConfigStore, routes: Vec<Route>) -> Self {
        set_routes(&mut store, vec![vhost("all", &["*"], routes)]);
        set_listener(&mut store);
        let clusters = Arc::new(ClusterManager::new());
        let addr = proxy_with(&store, clusters.clone()).await;
        Self {
            store,
            addr,
            clusters,
        }
    }

    fn cluster(&self, name: &str) -> ClusterStatus {
        self.clusters
            .describe(&self.store.snapshot())
            .into_iter()
            .find(|c| c.name == name)
            .expect("cluster in describe()")
    }

    fn endpoint(&self, cluster: &str, addr: SocketAddr) -> EndpointStatus {
        self.cluster(cluster)
            .endpoints
            .into_iter()
            .find(|e| e.address == addr)
            .expect("endpoint in describe()")
    }
}

fn prefix(name: &str, f: Forward) -> Route {
    route(
        name,
        PathMatch::Prefix(format!("/{name}")),
        Action::Forward(f),
    )
}

fn retry_5xx(num_retries: u32) -> RetryPolicy {
    RetryPolicy {
        retry_on: vec!["5xx".into()],
        num_retries,
        per_try_timeout: None,
        retriable_status_codes: vec![],
        base_interval: Duration::from_millis(1),
        max_interval: Duration::from_millis(5),
    }
}

fn outlier(consecutive_5xx: u32, base: Duration, max_ejection_percent: u32) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx,
        interval: Duration::from_secs(10),
        base_ejection_time: base,
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent,
        enforcing_consecutive_5xx: 100,
        always_eject_one_host: false,
    }
}

#[tokio::test]
async fn ring_hash_pins_a_key_to_one_endpoint_and_spreads_keys() {
    let (a, _) = scripted_backend("r1").await;
    let (b, _) = scripted_backend("r2").await;
    let (c, _) = scripted_backend("r3").await;
    let mut store = ConfigStore::new();
    set_cluster_with(&mut store, "ring", &[a, b, c], |c| {
        c.lb_policy = LbPolicy::RingHash(RingHashConfig::default());
    });
    let hashed = |on: HashOn| {
        let mut f = to("ring");
        f.hash_policy = vec![HashPolicy {
            on,
            terminal: false,
        }];
        f
    };
    let p = Proxy::start(
        store,
        vec![
            prefix("header", hashed(HashOn::Header("x-user".into()))),
            prefix("cookie", hashed(HashOn::Cookie("session".into()))),
            prefix("query", hashed(HashOn::QueryParameter("user".into()))),
            prefix("nohash", to("ring")),
        ],
    )
    .await;
    let client = h1_client();
    let deadline = Instant::now() + Duration::from_secs(60);

    let first = get(&client, p.addr, "svc", "/header", &[("x-user", "alice")]).await;
    assert_eq!(first.status.as_u16(), 200);
    for _ in 0..200 {
        assert!(Instant::now() < deadline, "load loop took too long");
        let got = get(&client, p.addr, "svc", "/header", &[("x-user", "alice")]).await;
        assert_eq!(got.body, first.body, "alice moved");
    }
    let mut endpoints = HashSet::new();
    for i in 0..50 {
        let user = format!("user-{i}");
        let got = get(&client, p.addr, "svc", "/header", &[("x-user", &user)]).await;
        endpoints.insert(got.body);
    }
    // 50 keys on one of three equal endpoints has odds 3^-49.
    assert!(endpoints.len() >= 2, "{endpoints:?}");

    for (path, headers) in [
        ("/cookie", vec![("cookie", "theme=dark; session=s-42")]),
        ("/query?user=bob&x=1", vec![]),
    ] {
        let first = get(&client, p.addr, "svc", path, &headers).await.body;
        for _ in 0..20 {
            let got = get(&client, p.addr, "svc", path, &headers).await;
            assert_eq!(got.body, first, "{path}");
        }
    }

    // No hash (no policy, or a missing header): random points of the ring.
    for path in ["/nohash", "/header"] {
        let mut spread = HashSet::new();
        for _ in 0..60 {
            spread.insert(get(&client, p.addr, "svc", path, &[]).await.body);
        }
        assert!(spread.len() >= 2, "{path}: {spread:?}");
    }
    let status = p.cluster("ring");
    assert!(matches!(status.lb_policy, LbPolicy::RingHash(_)));
    let total: u64 = status.endpoints.iter().map(|e| e.total_requests).sum();
    assert_eq!(total, 1 + 200 + 50 + 2 * 21 + 120);
}

#[tokio::test]
async fn max_requests_overflow_is_503_overloaded() {
    let (slow, script) = scripted_backend("slow").await;
    script.set_delay(Duration::from_millis(800));
    let mut store = ConfigStore::new();
    set_cluster_with(&mut store, "cb", &[slow], |c| {
        c.circuit_breakers.max_requests = 1;
    });
    let p = Proxy::start(store, vec![prefix("cb", to("cb"))]).await;
    let addr = p.addr;
    let first = tokio::spawn(async move { get(&h1_client(), addr, "svc", "/cb/1", &[]).await });
    eventually("the first request upstream", || async {
        (script.hits() == 1).then_some(())
    })
    .await;

    let second = get(&h1_client(), p.addr, "svc", "/cb/2", &[]).await;
    assert_eq!(second.status.as_u16(), 503, "{}", second.body);
    assert_eq!(second.headers["x-envoy-overloaded"], "true");
    assert!(second.body.contains("max_requests"), "{}", second.body);

    let first = first.await.unwrap();
    assert_eq!((first.status.as_u16(), first.body.as_str()), (200, "slow"));
    let status = p.cluster("cb");
    assert_eq!(status.overflows(Threshold::MaxRequests), 1);
    assert_eq!(status.circuit_breakers.active_requests, 0);
    // The slot is free again.
    let third = get(&h1_client(), p.addr, "svc", "/cb/3", &[]).await;
    assert_eq!(third.status.as_u16(), 200);
    assert_eq!(script.hits(), 2);
}

/// A raw HTTP/1.1 backend that answers every request on a connection with `ok` and keeps
/// the connection open; it counts the connections it accepted.
async fn counting_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // GET requests only: each ends at its blank line.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    use std::sync::atomic::Ordering;
    let (backend, accepted) = counting_backend().await;
    let mut store = ConfigStore::new();
    set_cluster_with(&mut store, "pooled", &[backend], |_| {});
    let p = Proxy::start(store, vec![prefix("pooled", to("pooled"))]).await;
    let client = h1_client();
    // One after another: each finds the previous one's connection back in the pool.
    for i in 0..20 {
        let got = get(&client, p.addr, "svc", &format!("/pooled/{i}"), &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "ok"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Four at once need up to four connections, and never more, however many batches.
    for _ in 0..3 {
        let batch: Vec<_> = (0..4)
            .map(|i| {
                let (client, addr) = (client.clone(), p.addr);
                tokio::spawn(async move {
                    get(&client, addr, "svc", &format!("/pooled/b{i}"), &[]).await
                })
            })
            .collect();
        for got in batch {
            assert_eq!(got.await.unwrap().status.as_u16(), 200);
        }
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!((1..=4).contains(&opened), "{opened} connections opened");
    assert_eq!(
        p.cluster("pooled").circuit_breakers.connections,
        opened as u64
    );
}

#[tokio::test]
async fn max_connections_queue_and_max_pending_overflow() {
    let (slow, script) = scripted_backend("slow").await;
    script.set_delay(Duration::from_millis(300));
    let mut store = ConfigStore::new();
    // The connect timeout (1 s) bounds the wait for a connection slot; the backend's
    // 300 ms is well within it.
    set_cluster_with(&mut store, "conn", &[slow], |c| {
        c.circuit_breakers.max_connections = 1;
        c.circuit_breakers.max_pending_requests = 1;
    });
    let p = Proxy::start(store, vec![prefix("conn", to("conn"))]).await;
    let addr = p.addr;
    let a = tokio::spawn(async move { get(&h1_client(), addr, "svc", "/conn/a", &[]).await });
    eventually("request a upstream", || async {
        (script.hits() == 1).then_some(())
    })
    .await;
    // b needs a second connection: it waits for one, as the one pending request.
    let b = tokio::spawn(async move { get(&h1_client(), addr, "svc", "/conn/b", &[]).await });
    eventually("request b pending", || async {
        (p.cluster("conn").circuit_breakers.pending_requests == 1).then_some(())
    })
    .await;
    let c = get(&h1_client(), p.addr, "svc", "/conn/c", &[]).await;
    assert_eq!(c.status.as_u16(), 503, "{}", c.body);
    assert_eq!(c.headers["x-envoy-overloaded"], "true");
    // a's connection goes back to the pool and serves b.
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
    let status = p.cluster("conn");
    assert_eq!(status.overflows(Threshold::MaxPendingRequests), 1);
    assert!(status.circuit_breakers.connections <= 1, "{status:?}");
    assert_eq!(script.hits(), 2);
}

#[tokio::test]
async fn retry_budget_caps_retries_and_passes_the_last_answer_on() {
    let (busy, script) = scripted_backend("busy").await;
    script.set_status(503);
    let (busy1, script1) = scripted_backend("busy1").await;
    script1.set_status(503);
    let (busy2, script2) = scripted_backend("busy2").await;
    script2.set_status(503);
    let mut store = ConfigStore::new();
    set_cluster_with(&mut store, "none", &[busy], |c| {
        c.circuit_breakers.retry_budget = Some(RetryBudget {
            budget_percent: 0.0,
            min_retry_concurrency: 0,
        });
    });
    set_cluster_with(&mut store, "one", &[busy1], |c| {
        c.circuit_breakers.retry_budget = Some(RetryBudget {
            budget_percent: 0.0,
            min_retry_concurrency: 1,
        });
    });
    set_cluster_with(&mut store, "fixed", &[busy2], |c| {
        c.circuit_breakers.max_retries = 0;
    });
    let retried = |cluster: &str| {
        let mut f = to(cluster);
        f.retry = Some(retry_5xx(5));
        f
    };
    let p = Proxy::start(
        store,
        vec![
            prefix("none", retried("none")),
            prefix("one", retried("one")),
            prefix("fixed", retried("fixed")),
        ],
    )
    .await;
    let client = h1_client();

    // A budget of nothing: no retry at all, and the upstream's own 503 comes back.
    for _ in 0..10 {
        let got = get(&client, p.addr, "svc", "/none", &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (503, "busy"));
        assert!(!got.headers.contains_key("x-envoy-overloaded"));
    }
    assert_eq!(script.hits(), 10);
    assert_eq!(p.cluster("none").overflows(Threshold::RetryBudget), 10);

    // Without a budget, max_retries (0 here) applies.
    for _ in 0..3 {
        let got = get(&client, p.addr, "svc", "/fixed", &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (503, "busy2"));
    }
    assert_eq!(script2.hits(), 3);
    assert_eq!(p.cluster("fixed").overflows(Threshold::MaxRetries), 3);

    // One retry at a time: alone, a request gets all 5 of its retries...
    let got = get(&client, p.addr, "svc", "/one", &[]).await;
    assert_eq!(got.status.as_u16(), 503);
    assert_eq!(script1.hits(), 6);
    // ...while of 4 requests failing together, the first to retry holds the only retry
    // slot through its 5 retries (500 ms each) and the other 3 answer after one attempt.
    script1.hits.store(0, std::sync::atomic::Ordering::SeqCst);
    script1.gate.store(4, std::sync::atomic::Ordering::SeqCst);
    script1.set_delay(Duration::from_millis(500));
    let addr = p.addr;
    let requests: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(&h1_client(), addr, "svc", "/one", &[]).await }))
        .collect();
    for r in requests {
        let got = r.await.unwrap();
        assert_eq!((got.status.as_u16(), got.body.as_str()), (503, "busy1"));
    }
    assert_eq!(script1.hits(), 4 + 5);
    assert_eq!(p.cluster("one").overflows(Threshold::RetryBudget), 3);
}

#[tokio::test]
async fn outlier_detection_ejects_backs_off_and_survives_config_swaps() {
    let (good, _) = scripted_backend("good").await;
    let (bad, bad_script) = scripted_backend("bad").await;
    bad_script.set_status(503);
    let base = Duration::from_secs(1);
    let edit = |c: &mut switchboard_proxy_xds::config::cluster::Cluster| {
        c.outlier_detection = Some(outlier(3, base, 50));
    };
    let mut store = ConfigStore::new();
    set_cluster_with(&mut store, "od", &[good, bad], edit);
    let mut p = Proxy::start(store, vec![prefix("od", to("od"))]).await;
    let client = h1_client();

    // Round robin alternates: the bad endpoint's third 503 ejects it.
    let mut failures = 0;
    for _ in 0..20 {
        let got = get(&client, p.addr, "svc", "/od", &[]).await;
        if got.status.as_u16() == 503 {
            assert_eq!(got.body, "bad");
            failures += 1;
        }
        if p.endpoint("od", bad).ejected {
            break;
        }
    }
    assert_eq!(failures, 3);
    let ejected = p.endpoint("od", bad);
    assert_eq!(
        (
            ejected.failures,
            ejected.total_requests,
            ejected.times_ejected
        ),
        (3, 3, 1)
    );
    assert_eq!(ejected.health_flags(), "/failed_outlier_check");
    let until = ejected.ejected_until.expect("ejected until");
    let healthy = p.endpoint("od", good);
    assert!(!healthy.ejected && healthy.ejected_until.is_none());
    assert_eq!(healthy.health_flags(), "healthy");

    // Ejected: every request goes to the good endpoint (those sent before the ejection
    // ends, which is all of them unless this machine is very slow).
    let hits = bad_script.hits();
    for _ in 0..100 {
        let sent = SystemTime::now();
        let got = get(&client, p.addr, "svc", "/od", &[]).await;
        if sent + Duration::from_millis(50) < until {
            assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "good"));
        }
    }
    // A config swap that keeps the endpoints (a new cluster resource and a new load
    // assignment with the same addresses) keeps the ejection.
    set_cluster_with(&mut p.store, "od", &[good, bad], |c| {
        edit(c);
        c.connect_timeout = Duration::from_secs(2);
    });
    if SystemTime::now() + Duration::from_millis(50) < until {
        let got = get(&client, p.addr, "svc", "/od", &[]).await;
        assert_eq!(got.body, "good");
        assert!(p.endpoint("od", bad).ejected);
    }

    // Back after base_ejection_time.
    let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    assert!(!p.endpoint("od", bad).ejected);
    let mut saw_bad = false;
    for _ in 0..10 {
        if get(&client, p.addr, "svc", "/od", &[]).await.body == "bad" {
            saw_bad = true;
            break;
        }
    }
    assert!(saw_bad, "the ejected endpoint never came back");
    assert!(bad_script.hits() > hits);

    // Three more 503s eject it again, for twice the base time.
    for _ in 0..20 {
        if p.endpoint("od", bad).ejected {
            break;
        }
        get(&client, p.addr, "svc", "/od", &[]).await;
    }
    let again = p.endpoint("od", bad);
    assert_eq!(again.times_ejected, 2);
    let left = again
        .ejected_until
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(left > base + base / 5, "ejected for {left:?} only");
}

#[tokio::test]
async fn panic_mode_balances_over_ejected_and_unhealthy_endpoints() {
    let (bad1, s1) = scripted_backend("bad1").await;
    let (bad2, s2) = scripted_backend("bad2").await;
    s1.set_status(503);
    s2.set_status(503);
    let (sick, _) = scripted_backend("sick").await;
    let mut store = ConfigStore::new();
    set_cluster_with(&mut store, "panic", &[bad1, bad2], |c| {
        c.outlier_detection = Some(outlier(1, Duration::from_secs(30), 100));
    });
    // Every endpoint unhealthy per EDS.
    set_cluster(&mut store, "sick", UpstreamProtocol::Http1, &[sick]);
    let la = LoadAssignment {
        cluster_name: "sick".into(),
        localities: vec![LocalityEndpoints {
            locality: Locality::default(),
            priority: 0,
            weight: None,
            endpoints: vec![Endpoint {
                address: sick,
                weight: 1,
                health: Health::Unhealthy,
                transport_labels: Default::default(),
            }],
        }],
    };
    Handler::<LoadAssignment>::apply(&mut store, vec![("sick".into(), la)], vec![]).unwrap();
    let p = Proxy::start(
        store,
        vec![prefix("panic", to("panic")), prefix("sick", to("sick"))],
    )
    .await;
    let client = h1_client();
    get(&client, p.addr, "svc", "/panic", &[]).await;
    get(&client, p.addr, "svc", "/panic", &[]).await;
    let status = p.cluster("panic");
    assert!(status.endpoints.iter().all(|e| e.ejected), "{status:?}");

    // All ejected: traffic still reaches both (their own 503s, not a local "no healthy
    // endpoint").
    let (h1, h2) = (s1.hits(), s2.hits());
    for _ in 0..20 {
        let got = get(&client, p.addr, "svc", "/panic", &[]).await;
        assert_eq!(got.status.as_u16(), 503);
        assert!(got.headers.contains_key("x-backend"), "{}", got.body);
    }
    assert!(s1.hits() > h1 && s2.hits() > h2);

    let got = get(&client, p.addr, "svc", "/sick", &[]).await;
    assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "sick"));
    let sick_status = p.endpoint("sick", sick);
    assert_eq!(sick_status.health_flags(), "/failed_eds_health");
    assert_eq!(sick_status.total_requests, 1);
}

#[tokio::test]
async fn mirrors_get_copies_and_never_affect_the_main_request() {
    let (main, main_script) = scripted_backend("main").await;
    let (shadow, shadow_script) = scripted_backend("shadow").await;
    let (slow, slow_script) = scripted_backend("slow-shadow").await;
    slow_script.set_delay(Duration::from_secs(3));
    let dead = closed_port().await;
    let mut store = ConfigStore::new();
    for (name, addr) in [
        ("main", main),
        ("shadow", shadow),
        ("slowshadow", slow),
        ("dead", dead),
    ] {
        set_cluster(&mut store, name, UpstreamProtocol::Http1, &[addr]);
    }
    let mirrored = |cluster: &str, per_million: u32| {
        let mut f = to("main");
        f.mirrors = vec![Mirror {
            cluster: cluster.into(),
            per_million,
        }];
        f
    };
    let p = Proxy::start(
        store,
        vec![
            prefix("mirror", mirrored("shadow", 1_000_000)),
            prefix("slowmirror", mirrored("slowshadow", 1_000_000)),
            prefix("deadmirror", mirrored("dead", 1_000_000)),
            prefix("nomirror", mirrored("shadow", 0)),
            prefix("missingmirror", mirrored("nope", 1_000_000)),
        ],
    )
    .await;
    let client = h1_client();

    for i in 0..20 {
        let got = get(&client, p.addr, "svc", &format!("/mirror/{i}"), &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "main"));
    }
    eventually("20 mirrored requests", || async {
        (shadow_script.hits() == 20).then_some(())
    })
    .await;
    let seen = shadow_script.seen();
    assert!(seen.iter().all(|s| s.host == "svc-shadow"), "{seen:?}");
    let paths: HashSet<_> = seen.iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths.len(), 20);

    // Bodies up to 64 KiB are copied; the host suffix goes before a port.
    let got = send(
        &client,
        p.addr,
        "POST",
        "svc:8080",
        "/mirror/post",
        &[],
        "hello",
    )
    .await;
    assert_eq!(got.status.as_u16(), 200);
    eventually("the mirrored POST", || async {
        shadow_script
            .seen()
            .iter()
            .any(|s| s.path == "/mirror/post" && s.method == "POST" && s.body == b"hello")
            .then_some(())
    })
    .await;
    assert!(
        shadow_script
            .seen()
            .iter()
            .any(|s| s.path == "/mirror/post" && s.host == "svc-shadow:8080")
    );
    // Larger bodies go to the main cluster only.
    let big = vec![b'x'; 100 * 1024];
    let got = send(&client, p.addr, "POST", "svc", "/mirror/big", &[], big).await;
    assert_eq!(got.status.as_u16(), 200);
    assert!(
        main_script
            .seen()
            .iter()
            .any(|s| s.path == "/mirror/big" && s.body.len() == 100 * 1024)
    );
    // Not sampled: never mirrored.
    for _ in 0..5 {
        get(&client, p.addr, "svc", "/nomirror", &[]).await;
    }
    get(&client, p.addr, "svc", "/mirror/marker", &[]).await;
    eventually("the marker", || async {
        shadow_script
            .seen()
            .iter()
            .any(|s| s.path == "/mirror/marker")
            .then_some(())
    })
    .await;
    let seen = shadow_script.seen();
    assert!(!seen.iter().any(|s| s.path == "/mirror/big"));
    assert!(!seen.iter().any(|s| s.path.starts_with("/nomirror")));

    // A slow mirror does not hold the main response (it takes 3 s to answer).
    let started = Instant::now();
    let got = get(&client, p.addr, "svc", "/slowmirror", &[]).await;
    assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "main"));
    assert!(started.elapsed() < Duration::from_millis(2_500));
    eventually("the slow mirror's copy", || async {
        (slow_script.hits() == 1).then_some(())
    })
    .await;

    // Dead or missing mirror clusters do not fail requests.
    for path in ["/deadmirror", "/missingmirror"] {
        for _ in 0..10 {
            let got = get(&client, p.addr, "svc", path, &[]).await;
            assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "main"));
        }
    }
    eventually("the dead mirror's failures counted", || async {
        (p.endpoint("dead", dead).failures == 10).then_some(())
    })
    .await;
    assert_eq!(p.endpoint("dead", dead).active_requests, 0);
}

#[tokio::test]
async fn describe_lists_clusters_before_and_after_traffic() {
    let (a, _) = scripted_backend("a").await;
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "idle", UpstreamProtocol::Http1, &[a]);
    set_cluster(&mut store, "busy", UpstreamProtocol::Http1, &[a]);
    let p = Proxy::start(store, vec![prefix("busy", to("busy"))]).await;
    let idle = p.endpoint("idle", a);
    assert_eq!(
        (idle.total_requests, idle.failures, idle.ejected),
        (0, 0, false)
    );
    assert_eq!(idle.priority, 0);
    assert_eq!(idle.weight, 1);
    let client = h1_client();
    for _ in 0..5 {
        get(&client, p.addr, "svc", "/busy", &[]).await;
    }
    let busy = p.endpoint("busy", a);
    assert_eq!((busy.total_requests, busy.active_requests), (5, 0));
    let names: Vec<_> = p
        .clusters
        .describe(&p.store.snapshot())
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["busy", "idle"]);
}

/// The process-wide Prometheus recorder of this test binary.
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap()
    })
}

/// The value of `name` with every one of `labels` in a Prometheus rendering.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[tokio::test]
async fn upstream_metrics_are_recorded() {
    let handle = prometheus();
    let (good, _) = scripted_backend("m-good").await;
    let (bad, bad_script) = scripted_backend("m-bad").await;
    bad_script.set_status(503);
    let (copy, _) = scripted_backend("m-copy").await;
    let mut store = ConfigStore::new();
    set_cluster_with(&mut store, "metered", &[good, bad], |c| {
        c.outlier_detection = Some(outlier(1, Duration::from_secs(30), 50));
    });
    set_cluster_with(&mut store, "metered-full", &[good], |c| {
        c.circuit_breakers.max_requests = 0;
    });
    set_cluster(&mut store, "metered-copy", UpstreamProtocol::Http1, &[copy]);
    let mut f = to("metered");
    f.retry = Some(retry_5xx(1));
    f.mirrors = vec![Mirror {
        cluster: "metered-copy".into(),
        per_million: 1_000_000,
    }];
    let p = Proxy::start(
        store,
        vec![prefix("metered", f), prefix("full", to("metered-full"))],
    )
    .await;
    let client = h1_client();
    for _ in 0..10 {
        let got = get(&client, p.addr, "svc", "/metered", &[]).await;
        assert_eq!(got.status.as_u16(), 200);
    }
    let got = get(&client, p.addr, "svc", "/full", &[]).await;
    assert_eq!(got.status.as_u16(), 503);

    let c = ("cluster", "metered");
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        let text = handle.render();
        let got = sample(&text, name, labels);
        assert_eq!(got, Some(want), "{name} {labels:?} in\n{text}");
    };
    // The bad endpoint answers once (ejected at its first 503, retried on the good one).
    expect(
        "switchboard_proxy_upstream_requests_total",
        &[c, ("outcome", "5xx")],
        1.0,
    );
    expect(
        "switchboard_proxy_upstream_requests_total",
        &[c, ("outcome", "2xx")],
        10.0,
    );
    expect("switchboard_proxy_upstream_retries_total", &[c], 1.0);
    expect("switchboard_proxy_outlier_ejections_total", &[c], 1.0);
    expect("switchboard_proxy_outlier_ejected_endpoints", &[c], 1.0);
    expect("switchboard_proxy_upstream_active_requests", &[c], 0.0);
    expect(
        "switchboard_proxy_circuit_breaker_overflows_total",
        &[("cluster", "metered-full"), ("threshold", "max_requests")],
        1.0,
    );
    expect(
        "switchboard_proxy_mirrored_requests_total",
        &[("cluster", "metered-copy")],
        10.0,
    );
}
