//! End to end: the real control plane, a client sidecar and two server sidecars
//! (`switchboard-proxy` processes), and real HTTP/1.1, HTTP/2 and gRPC backends, all on
//! 127.0.0.1. The server sidecars register themselves as endpoints of their services. The
//! application side talks to its sidecar as apps do: `HTTP_PROXY` style
//! (absolute URIs) or with a `Host` header, and gRPC with an `:authority`.
//!
//! ```text
//! test (app) ──► client sidecar :outbound ──► web-server sidecar :inbound ──► web-v1 (HTTP/1.1)
//!                                        ├──► web-v2, pool-a, pool-b (HTTP/1.1), h2 (h2c)
//!                                        └──► grpc-server sidecar :inbound ──► gRPC health
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Backend, ControlPlane, Protocol, Proxy, backend, free_port, grpc_backend, tail};

struct Mesh {
    cp: ControlPlane,
    client: Proxy,
    web_server: Proxy,
    _grpc_server: Proxy,
    /// 127.0.0.1:port of the client sidecar's outbound listener.
    outbound: u16,
    web_v2: Backend,
    pool_b: Backend,
    _backends: Vec<Backend>,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// An HTTP client that uses the client sidecar as its HTTP proxy (`HTTP_PROXY`).
    fn app(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(format!("http://127.0.0.1:{}", self.outbound)).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    fn logs(&self) -> String {
        [&self.cp.log, &self.client.log, &self.web_server.log]
            .iter()
            .map(|p| tail(p, 3000))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn mesh() -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let token = cp.tenant(dir.path()).await;

    let web_v1 = backend("web-v1", Protocol::Http1).await;
    let web_v2 = backend("web-v2", Protocol::Http1).await;
    let h2 = backend("h2", Protocol::Http2).await;
    let pool_a = backend("pool-a", Protocol::Http1).await;
    let pool_b = backend("pool-b", Protocol::Http1).await;
    let grpc = grpc_backend("e2e").await;

    let http = |port: u32| json!({"protocol": "http", "port": port});
    cp.put("services", "web", http(80)).await;
    cp.put("services", "web-v2", http(80)).await;
    cp.put("services", "client", http(80)).await;
    cp.put("services", "h2", json!({"protocol": "http2", "port": 80}))
        .await;
    cp.put(
        "services",
        "grpc",
        json!({"protocol": "grpc", "port": 9000}),
    )
    .await;
    cp.put(
        "services",
        "pool",
        json!({"protocol": "http", "port": 80,
               "outlierDetection": {"consecutive5xx": 3, "interval": "1s",
                                    "baseEjectionTime": "30s", "maxEjectionPercent": 50}}),
    )
    .await;

    // The server sidecars, in front of web-v1 and the gRPC backend.
    let web_inbound = free_port();
    let grpc_inbound = free_port();
    let sidecar = |service: &str, app: u16, inbound: u16| {
        vec![
            ("role", "sidecar".to_owned()),
            ("service", service.to_owned()),
            ("app_port", app.to_string()),
            ("inbound_port", inbound.to_string()),
            ("outbound_port", free_port().to_string()),
        ]
    };
    let endpoint = |service: &str, port: u16| json!({"service": service, "address": "127.0.0.1", "port": port});
    cp.put("endpoints", "web-v2-1", endpoint("web-v2", web_v2.port()))
        .await;
    cp.put("endpoints", "h2-1", endpoint("h2", h2.port())).await;
    cp.put("endpoints", "pool-a", endpoint("pool", pool_a.port()))
        .await;
    cp.put("endpoints", "pool-b", endpoint("pool", pool_b.port()))
        .await;

    cp.put(
        "routes",
        "web",
        json!({"hostnames": ["web"], "rules": [
            {"matches": [{"path": {"type": "prefix", "value": "/v2"}}],
             "backends": [{"service": "web-v2"}]},
            {"matches": [{"headers": [{"name": "x-version", "value": "v2"}]}],
             "backends": [{"service": "web-v2"}]},
            {"matches": [{"path": {"type": "prefix", "value": "/flaky"}}],
             "backends": [{"service": "web-v2"}],
             "retries": {"attempts": 2, "retryOn": ["5xx"]}},
            {"matches": [{"path": {"type": "prefix", "value": "/slow"}}],
             "backends": [{"service": "web"}], "timeout": "300ms"},
            {"backends": [{"service": "web"}]},
        ]}),
    )
    .await;
    cp.put(
        "routes",
        "split",
        json!({"hostnames": ["split"], "rules": [{"backends": [
            {"service": "web", "weight": 80}, {"service": "web-v2", "weight": 20}]}]}),
    )
    .await;
    cp.put(
        "routes",
        "switch",
        json!({"hostnames": ["switch"], "rules": [{"backends": [{"service": "web"}]}]}),
    )
    .await;
    cp.put(
        "routes",
        "pool",
        json!({"hostnames": ["pool"], "rules": [{"backends": [{"service": "pool"}],
               "retries": {"attempts": 2, "retryOn": ["connect-failure", "reset"]}}]}),
    )
    .await;

    let web_server = Proxy::start(
        &cp,
        dir.path(),
        &token,
        "web-server",
        &sidecar("web", web_v1.port(), web_inbound),
    )
    .await;
    let grpc_server = Proxy::start(
        &cp,
        dir.path(),
        &token,
        "grpc-server",
        &sidecar("grpc", grpc.port(), grpc_inbound),
    )
    .await;
    // The server sidecars registered themselves as endpoints of their services.
    for (service, node, port) in [
        ("web", "web-server", web_inbound),
        ("grpc", "grpc-server", grpc_inbound),
    ] {
        let path = format!("/v1/tenants/acme/meshes/prod/endpoints/sidecar-{node}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let e = loop {
            let (s, e) = cp.call(reqwest::Method::GET, &path, None).await;
            if s == 200 {
                break e;
            }
            assert!(
                Instant::now() < deadline,
                "{node} did not register: {s} {e}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(e["spec"]["service"], service);
        assert_eq!(e["spec"]["port"], port);
        // A sidecar's endpoint speaks mesh mTLS (the default mode is permissive), and the
        // sidecar holds a workload certificate for its service's SPIFFE ID from the mesh CA.
        assert_eq!(e["spec"]["mtls"], true, "{e}");
        let identity =
            format!("\"spiffeId\":\"spiffe://acme.switchboard.local/mesh/prod/service/{service}\"");
        let path = format!("/v1/tenants/acme/meshes/prod/proxies/{node}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, status) = cp.call(reqwest::Method::GET, &path, None).await;
            if s == 200 && status.to_string().contains(&identity) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{node} shows no certificate for {service}: {s} {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let outbound = free_port();
    let mut client_meta = sidecar("client", free_port(), free_port());
    client_meta.retain(|(k, _)| *k != "outbound_port");
    client_meta.push(("outbound_port", outbound.to_string()));
    let client = Proxy::start(&cp, dir.path(), &token, "client", &client_meta).await;

    Mesh {
        cp,
        client,
        web_server,
        _grpc_server: grpc_server,
        outbound,
        web_v2,
        pool_b,
        _backends: vec![web_v1, h2, pool_a],
        _dir: dir,
    }
}

async fn get(app: &reqwest::Client, url: &str) -> (u16, String) {
    match app.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let backend = r
                .headers()
                .get("x-backend")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let _ = r.bytes().await;
            (status, backend)
        }
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecars_route_split_retry_and_eject() {
    let m = mesh().await;
    let app = m.app();

    // No privileges: no capabilities at all, and (under root) another user.
    for proxy in [&m.client, &m.web_server] {
        assert_eq!(
            support::proc_status(proxy.pid(), "CapEff"),
            "0000000000000000"
        );
        if support::running_as_root() {
            let uid = support::proc_status(proxy.pid(), "Uid");
            assert!(uid.starts_with(&support::NOBODY.to_string()), "uid {uid}");
        }
    }

    // Path and header routing, through both sidecars to web-v1 and straight to web-v2.
    assert_eq!(
        get(&app, "http://web/").await,
        (200, "web-v1".to_owned()),
        "{}",
        m.logs()
    );
    assert_eq!(
        get(&app, "http://web/v2/x").await,
        (200, "web-v2".to_owned())
    );
    let r = app
        .get("http://web/")
        .header("x-version", "v2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-backend"], "web-v2");

    // Without HTTP_PROXY: a plain request to the outbound port with a Host header.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{}/", m.outbound))
        .header("host", "web")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backend"], "web-v1");

    // HTTP/2 upstream: the sidecar speaks h2c to the h2 service.
    let r = app.get("http://h2/").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", m.logs());
    assert_eq!(r.headers()["x-http-version"], "HTTP/2.0");

    // gRPC through both sidecars, trailers and all.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", m.outbound))
            .unwrap()
            .origin("http://grpc:9000".parse().unwrap())
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..20 {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "e2e".to_owned(),
            })
            .await
            .unwrap();
        assert_eq!(reply.into_inner().status, 1, "SERVING");
    }
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "nope".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        unknown.code(),
        tonic::Code::NotFound,
        "grpc-status trailer passed through"
    );

    // 80/20 over 2,000 requests, within ±5 points.
    let mut v1 = 0;
    for _ in 0..2000 {
        let (status, backend) = get(&app, "http://split/").await;
        assert_eq!(status, 200, "{backend}");
        if backend == "web-v1" {
            v1 += 1;
        }
    }
    let share = f64::from(v1) / 20.0;
    assert!(
        (75.0..=85.0).contains(&share),
        "web-v1 got {share}% of the split"
    );

    // Retries turn the backend's every-other 503 into successes.
    for _ in 0..20 {
        assert_eq!(
            get(&app, "http://web/flaky").await,
            (200, "web-v2".to_owned())
        );
    }
    let stats = m.client.admin_get("/stats").await;
    assert!(
        stats.lines().any(
            |l| l.starts_with("switchboard_proxy_upstream_retries_total") && !l.ends_with(" 0")
        ),
        "no retries counted:\n{stats}"
    );

    // The route timeout (300 ms) cuts a 3 s response with 504.
    let started = Instant::now();
    let (status, _) = get(&app, "http://web/slow").await;
    assert_eq!(status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );

    route_change_under_load(&m, &app).await;
    endpoint_killed_under_load(&m, &app).await;

    // The admin port shows what was applied.
    let dump = m.client.admin_get("/config_dump").await;
    assert!(dump.contains("sidecar/outbound"), "{dump}");
    assert!(
        !dump.contains("error_state"),
        "a resource was refused:\n{dump}"
    );
}

/// A REST route change applies within 1 s while requests run, and none of them fails.
async fn route_change_under_load(m: &Mesh, app: &reqwest::Client) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (app, stop) = (app.clone(), stop.clone());
        workers.spawn(async move {
            let mut seen = Vec::new();
            // Bounded: the test stops the workers; 20,000 requests is far above that.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let start = t0.elapsed();
                let (status, backend) = get(&app, "http://switch/").await;
                seen.push((start, status, backend));
            }
            seen
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.cp.put(
        "routes",
        "switch",
        json!({"hostnames": ["switch"], "rules": [{"backends": [{"service": "web-v2"}]}]}),
    )
    .await;
    let written = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    while let Some(seen) = workers.join_next().await {
        all.extend(seen.unwrap());
    }
    let failed: Vec<_> = all.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let last_v1 = all
        .iter()
        .filter(|(_, _, b)| b == "web-v1")
        .map(|(t, _, _)| *t)
        .max()
        .unwrap();
    assert!(
        all.iter().any(|(t, _, b)| b == "web-v2" && *t > written),
        "never switched"
    );
    let lag = last_v1.saturating_sub(written);
    assert!(
        lag < Duration::from_secs(1),
        "a request started {lag:?} after the write still reached web-v1"
    );
    eprintln!(
        "route change: {} requests, none failed; last web-v1 request started {lag:?} after the PUT returned",
        all.len()
    );
}

/// One of two endpoints killed under load: ejected, with under 1% failed requests.
async fn endpoint_killed_under_load(m: &Mesh, app: &reqwest::Client) {
    const TOTAL: usize = 3000;
    const KILL_AT: usize = 1000;
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (app, done, failed) = (app.clone(), done.clone(), failed.clone());
        workers.spawn(async move {
            while done.fetch_add(1, Ordering::Relaxed) < TOTAL {
                let (status, _) = get(&app, "http://pool/").await;
                if status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < KILL_AT && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    m.pool_b.stop();
    while workers.join_next().await.is_some() {}
    let failed = failed.load(Ordering::Relaxed);
    assert!(failed * 100 < TOTAL, "{failed} of {TOTAL} requests failed");
    let clusters = m.client.admin_get("/clusters?format=text").await;
    let b = format!("pool::127.0.0.1:{}::health_flags::", m.pool_b.addr.port());
    let flags = clusters
        .lines()
        .find_map(|l| l.strip_prefix(&b))
        .unwrap_or_else(|| panic!("pool-b missing from /clusters:\n{clusters}"));
    assert!(
        flags.contains("failed_outlier_check"),
        "pool-b not ejected: {flags}\n{clusters}"
    );
    eprintln!("endpoint killed: {failed} of {TOTAL} requests failed");
    let _ = &m.web_v2;
}
