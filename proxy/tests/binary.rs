//! The `switchboard-proxy` binary against a hand-driven ADS server: readiness, listener
//! lifecycle (kept sockets, NACKed binds, draining), the control plane going away and coming
//! back while traffic runs, the admin port, and its command line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchboard_proxy_xds::testing::resources::{
    eds_cluster, http_listener, load_assignment, route_config,
};
use switchboard_proxy_xds::testing::{AdsServer, response};
use switchboard_runtime::eventually;
use switchboard_xds_proto::{Any, pack, type_url};

use support::{Backend, PROXY, Protocol, backend, free_port, tail};

const LDS: &str = type_url::LISTENER;
const RDS: &str = type_url::ROUTE_CONFIGURATION;
const CDS: &str = type_url::CLUSTER;
const EDS: &str = type_url::CLUSTER_LOAD_ASSIGNMENT;

/// A proxy process pointed at a hand-driven server, killed on drop.
struct Running {
    child: std::process::Child,
    admin: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    /// Stops the proxy, then scans its whole log for secrets.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        switchboard_runtime::leaks::assert_no_leaks(&self.log);
    }
}

impl Running {
    fn start(server: &AdsServer) -> Running {
        Self::start_with(server, &[])
    }

    fn start_with(server: &AdsServer, extra: &[&str]) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let admin = free_port();
        let log = dir.path().join("proxy.log");
        let child = Command::new(PROXY)
            .args(["--xds-address", &server.url()])
            .args(["--node-id", "tenants/acme/meshes/prod/nodes/p-1"])
            .args(["--metadata", "role=gateway", "--metadata", "gateway=edge"])
            .args(["--admin-address", &format!("127.0.0.1:{admin}")])
            .args(["--drain-timeout", "5s"])
            // The hand-driven server speaks state of the world.
            .args(["--xds-protocol", "sotw"])
            .args(extra)
            .env("RUST_LOG", support::LOG_LEVEL)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        Running {
            child,
            admin: format!("http://127.0.0.1:{admin}"),
            log,
            _dir: dir,
        }
    }

    async fn admin(&self, path: &str) -> (u16, String) {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.get(format!("{}{path}", self.admin)).send().await {
                Ok(r) => return (r.status().as_u16(), r.text().await.unwrap()),
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "admin port: {e}\n{}",
                        self.logs()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.admin("/ready").await.0 != 200 {
            assert!(Instant::now() < deadline, "never ready\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logs(&self) -> String {
        tail(&self.log, 4000)
    }

    /// Waits for the proxy's log to contain `text`.
    async fn wait_for_log(&self, text: &str) {
        eventually(&format!("{text:?} in the proxy's log"), || async {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            log.contains(text).then_some(())
        })
        .await;
    }
}

/// Waits until `backend` has received more than `before` requests: a request sent since is
/// in flight through the proxy.
async fn wait_for_hits(backend: &Backend, before: usize) {
    eventually("the request reaching the backend", || async {
        (backend.hits.load(Ordering::Relaxed) > before).then_some(())
    })
    .await;
}

/// Answers the first request of each type with `resources[type]`, until all four are sent.
async fn serve_initial(server: &mut AdsServer, resources: &[(&str, Vec<Any>)]) {
    let mut pending: Vec<&str> = resources.iter().map(|(t, _)| *t).collect();
    while !pending.is_empty() {
        let r = server.next_request().await.expect("a request");
        let t = r.request.type_url.as_str();
        if let Some(i) = pending.iter().position(|p| *p == t) {
            pending.remove(i);
            let (_, res) = resources.iter().find(|(rt, _)| *rt == t).unwrap();
            assert!(server.respond(response(t, "v1", &format!("{t}-1"), res.clone())));
        }
    }
}

fn initial(port: u16, backend: SocketAddr) -> Vec<(&'static str, Vec<Any>)> {
    vec![
        (CDS, vec![pack(&eds_cluster("web"))]),
        (EDS, vec![pack(&load_assignment("web", &[backend]))]),
        (LDS, vec![pack(&http_listener("edge", port, "rc"))]),
        (RDS, vec![pack(&route_config("rc", "*", "web"))]),
    ]
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn backend_of(c: &reqwest::Client, url: &str) -> Result<String, String> {
    let r = c.get(url).send().await.map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    Ok(r.headers()["x-backend"].to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_after_the_initial_config_then_serves() {
    let web = backend("web", Protocol::Http1).await;
    let mut server = AdsServer::start().await.unwrap();
    let format =
        "ACCESS %DOWNSTREAM_REMOTE_ADDRESS% %REQ(:METHOD)% %RESPONSE_CODE% %UPSTREAM_HOST%";
    let proxy = Running::start_with(&server, &["--access-log-format", format]);
    assert_eq!(
        proxy.admin("/ready").await.0,
        503,
        "ready before any config"
    );
    let port = free_port();
    serve_initial(&mut server, &initial(port, web.addr)).await;
    proxy.wait_ready().await;
    let c = client();
    assert_eq!(
        backend_of(&c, &format!("http://127.0.0.1:{port}/")).await,
        Ok("web".to_owned())
    );
    let (_, dump) = proxy.admin("/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let listeners = &dump["configs"][1]["dynamic_listeners"];
    assert_eq!(listeners[0]["name"], "edge", "{dump}");
    assert_eq!(listeners[0]["active_state"]["version_info"], "v1");
    assert_eq!(
        listeners[0]["active_state"]["listener"]["@type"],
        type_url::LISTENER
    );
    let (_, stats) = proxy.admin("/stats").await;
    assert!(
        stats.contains("switchboard_proxy_requests_total"),
        "{stats}"
    );
    let (_, clusters) = proxy.admin("/clusters").await;
    assert!(clusters.contains(&web.addr.to_string()), "{clusters}");
    // The access log, in the format given on the command line.
    let deadline = Instant::now() + Duration::from_secs(5);
    let expected = format!("GET 200 {}", web.addr);
    loop {
        let log = std::fs::read_to_string(&proxy.log).unwrap();
        if let Some(line) = log.lines().find(|l| l.contains("ACCESS ")) {
            assert!(line.contains("ACCESS 127.0.0.1:"), "{line}");
            assert!(line.contains(&expected), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no access log line\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A listener whose port is taken is NACKed with the OS error; the others apply and the
/// refusal shows in `/config_dump`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbindable_listener_is_nacked_and_shown() {
    let web = backend("web", Protocol::Http1).await;
    let mut server = AdsServer::start().await.unwrap();
    let proxy = Running::start(&server);
    let port = free_port();
    serve_initial(&mut server, &initial(port, web.addr)).await;
    proxy.wait_ready().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let lds = vec![
        pack(&http_listener("edge", port, "rc")),
        pack(&http_listener("blocked", taken_port, "rc")),
    ];
    assert!(server.respond(response(LDS, "v2", "lds-2", lds)));
    let nack = loop {
        let r = server.next_of(LDS).await.expect("an LDS reply");
        if r.request.response_nonce == "lds-2" {
            break r.request;
        }
    };
    assert_eq!(nack.version_info, "v1", "a NACK keeps the previous version");
    let detail = nack.error_detail.expect("error_detail").message;
    assert!(
        detail.contains("blocked") && detail.contains("cannot bind"),
        "{detail}"
    );
    let (_, dump) = proxy.admin("/config_dump").await;
    assert!(
        dump.contains("error_state") && dump.contains("cannot bind"),
        "{dump}"
    );
    assert_eq!(
        backend_of(&client(), &format!("http://127.0.0.1:{port}/")).await,
        Ok("web".to_owned()),
        "the valid listener still serves"
    );
}

/// A listener whose address is unchanged keeps its socket and open connections across an
/// update; a removed one drains: in-flight requests finish, new connections are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_keep_their_sockets_and_removed_ones_drain() {
    let web = backend("web", Protocol::Http1).await;
    let other = backend("other", Protocol::Http1).await;
    let mut server = AdsServer::start().await.unwrap();
    let proxy = Running::start(&server);
    let port = free_port();
    let mut resources = initial(port, web.addr);
    resources[0].1.push(pack(&eds_cluster("other")));
    resources[1]
        .1
        .push(pack(&load_assignment("other", &[other.addr])));
    serve_initial(&mut server, &resources).await;
    proxy.wait_ready().await;

    // One keep-alive connection, used before and after a route change.
    let c = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .http1_only()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(backend_of(&c, &url).await, Ok("web".to_owned()));
    assert!(server.respond(response(
        RDS,
        "v2",
        "rds-2",
        vec![pack(&route_config("rc", "*", "other"))]
    )));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match backend_of(&c, &url).await {
            Ok(b) if b == "other" => break,
            Ok(_) => {}
            Err(e) => panic!("the kept listener failed a request: {e}\n{}", proxy.logs()),
        }
        assert!(Instant::now() < deadline, "the route change never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A slow request in flight, then the listener is removed.
    let before = other.hits.load(Ordering::Relaxed);
    let slow = tokio::spawn({
        let c = c.clone();
        let url = format!("{url}slow");
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    wait_for_hits(&other, before).await;
    assert!(server.respond(response(LDS, "v3", "lds-3", vec![])));
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the removed listener still accepts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        slow.await.unwrap().map_err(|e| e.to_string()),
        Ok(200),
        "the in-flight request finished during the drain\n{}",
        proxy.logs()
    );
}

/// The control plane killed: traffic continues untouched; restarted: the proxy resyncs with
/// the versions it holds, and new configuration applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_the_control_plane_and_resyncs() {
    let web = backend("web", Protocol::Http1).await;
    let other = backend("other", Protocol::Http1).await;
    let mut server = AdsServer::start().await.unwrap();
    let addr = server.addr;
    let proxy = Running::start(&server);
    let port = free_port();
    serve_initial(&mut server, &initial(port, web.addr)).await;
    proxy.wait_ready().await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = format!("http://127.0.0.1:{port}/");
        async move {
            let c = client();
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match backend_of(&c, &url).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });
    eventually("traffic through the proxy", || async {
        (ok.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    server.stop().await;
    // The proxy notices (its first reconnect fails), and traffic goes on regardless.
    proxy.wait_for_log("xDS stream failed").await;
    let served = ok.load(Ordering::Relaxed);
    eventually("traffic while the control plane is away", || async {
        (ok.load(Ordering::Relaxed) >= served + 20).then_some(())
    })
    .await;
    assert_eq!(
        proxy.admin("/ready").await.0,
        200,
        "still ready on the last good config"
    );
    let mut server = AdsServer::start_on(addr).await.unwrap();
    let mut versions = std::collections::BTreeMap::new();
    while versions.len() < 4 {
        let r = server
            .next_request_within(Duration::from_secs(40))
            .await
            .expect("the proxy reconnected");
        versions.insert(r.request.type_url.clone(), r.request.version_info.clone());
    }
    assert!(versions.values().all(|v| v == "v1"), "{versions:?}");
    // Resync: the restarted server moves traffic to another backend.
    assert!(server.respond(response(
        CDS,
        "v2",
        "c2",
        vec![pack(&eds_cluster("web")), pack(&eds_cluster("other"))]
    )));
    assert!(server.respond(response(
        EDS,
        "v2",
        "e2",
        vec![
            pack(&load_assignment("web", &[web.addr])),
            pack(&load_assignment("other", &[other.addr]))
        ]
    )));
    assert!(server.respond(response(
        RDS,
        "v2",
        "r2",
        vec![pack(&route_config("rc", "*", "other"))]
    )));
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend_of(&c, &format!("http://127.0.0.1:{port}/")).await != Ok("other".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "never resynced\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    // Traffic ran before, during (at least 20, checked above) and after the outage; how many
    // requests that makes depends on the machine's speed, so no count beyond that is asserted.
    assert!(ok >= served + 20, "only {ok} requests ran");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed while the control plane was away",
        ok + failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let web: Backend = backend("web", Protocol::Http1).await;
    let mut server = AdsServer::start().await.unwrap();
    let mut proxy = Running::start(&server);
    let port = free_port();
    serve_initial(&mut server, &initial(port, web.addr)).await;
    proxy.wait_ready().await;
    let before = web.hits.load(Ordering::Relaxed);
    let slow = tokio::spawn(async move {
        client()
            .get(format!("http://127.0.0.1:{port}/slow"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    });
    wait_for_hits(&web, before).await;
    let pid = proxy.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        slow.await.unwrap(),
        Ok(200),
        "in-flight request finished\n{}",
        proxy.logs()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = proxy.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}\n{}", proxy.logs());
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("draining listeners") && l.contains("SIGTERM")),
        "the drain names the signal\n{log}"
    );
}

#[test]
fn bad_command_lines_exit_2_naming_the_problem() {
    let out = Command::new(PROXY)
        .args(["--node-id", "n"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--xds-address"), "{err}");

    let out = Command::new(PROXY)
        .args(["--bootstrap", "/nonexistent/bootstrap.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/bootstrap.yaml"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("b.yaml");
    std::fs::write(
        &bad,
        "xds_address: http://127.0.0.1:1\nnode_id: n\nsurprise: 1\n",
    )
    .unwrap();
    let out = Command::new(PROXY)
        .args(["--bootstrap", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("surprise"));
}
