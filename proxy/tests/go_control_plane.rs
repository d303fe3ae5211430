#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Interop with go-control-plane: the built `switchboard-proxy`, given a bootstrap file, takes
//! its listener, routes, clusters and endpoints from an xDS server made of go-control-plane's
//! own snapshot cache and ADS server (`tests/go-control-plane/`), and routes by them: so the
//! proxy speaks standard xDS, not a dialect of Switchboard's server.
//!
//! Checked: `/a` goes to backend a, `x-pick: b` to b, `/` is split over both; a new snapshot
//! (`v2` on the Go program's stdin) is ACKed within 5 s, after which every `/` goes to b; the
//! Go server saw no NACK and the proxy's `/config_dump` shows no refused resource. Run once
//! per ADS protocol (`--xds-protocol delta` and `sotw`), each checked to be the only one the
//! Go server saw.
//!
//! The Go program is built by `scripts/lib/peers.sh` (run by `scripts/test`), which exports
//! `SWITCHBOARD_GO_XDS_SERVER`. Without it the test skips, unless `SWITCHBOARD_REQUIRE_PEERS=1`
//! (then it fails).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::{Protocol, backend, free_port};

const NODE_ID: &str = "gocp-interop-proxy";
const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// The Go server's path, or `None` (after saying why) when the test should skip.
fn go_server() -> Option<PathBuf> {
    let required = std::env::var("SWITCHBOARD_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    match std::env::var_os("SWITCHBOARD_GO_XDS_SERVER").filter(|v| !v.is_empty()) {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            let msg = "SWITCHBOARD_GO_XDS_SERVER unset: skipping the go-control-plane interop \
                       test (scripts/test builds the server; see scripts/lib/peers.sh)";
            assert!(!required, "SWITCHBOARD_REQUIRE_PEERS=1 but {msg}");
            eprintln!("{msg}");
            None
        }
    }
}

/// A child process whose output lines are kept (and echoed to the test's captured stderr).
struct Proc {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command) -> (Self, Option<std::process::ChildStdout>) {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        collect(name, stderr, lines.clone());
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        (
            Proc {
                name,
                child,
                stdin,
                lines,
            },
            stdout,
        )
    }

    fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The last `n` lines, for failure messages (the proxy logs every request).
    fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// The first few NACKs the Go server logged (a NACKed snapshot is resent at once, so
    /// there may be many).
    fn nacks(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.starts_with("NACK "))
            .take(5)
            .cloned()
            .collect()
    }

    fn has_line(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.lines.lock().unwrap().iter().any(|l| pred(l))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        eprintln!("{} stopped", self.name);
        // Everything it logged holds no secret (`switchboard_runtime::leaks`).
        let leaks = switchboard_runtime::leaks::find_leaks(&self.log().join("\n"));
        if !leaks.is_empty() {
            let message = format!("{}'s log holds secrets: {leaks:?}", self.name);
            if std::thread::panicking() {
                eprintln!("{message}");
            } else {
                panic!("{message}");
            }
        }
    }
}

fn collect(name: &'static str, from: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{name}] {line}");
            into.lock().unwrap().push(line);
        }
    });
}

/// The body of a request through the proxy (which must answer 200).
async fn get(http: &reqwest::Client, url: &str, pick: Option<&str>) -> String {
    let mut req = http.get(url);
    if let Some(p) = pick {
        req = req.header("x-pick", p);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "GET {url} (x-pick {pick:?}): {body}");
    body
}

/// Every `error_state` (a refused resource) in a config dump.
fn refused(dump: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for section in dump["configs"].as_array().into_iter().flatten() {
        for list in section.as_object().into_iter().flat_map(|o| o.values()) {
            for entry in list.as_array().into_iter().flatten() {
                if let Some(err) = entry.get("error_state") {
                    out.push(format!("{}: {}", entry["name"], err["details"]));
                }
            }
        }
    }
    out
}

fn route_version(dump: &Value) -> Option<String> {
    dump["configs"]
        .as_array()?
        .iter()
        .filter_map(|s| s["dynamic_route_configs"].as_array())
        .flatten()
        .find(|e| e["name"] == "ingress-routes")
        .and_then(|e| e["active_state"]["version_info"].as_str())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_delta_the_proxy_takes_its_config_from_go_control_plane_and_routes() {
    takes_its_config_and_routes("delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_sotw_the_proxy_takes_its_config_from_go_control_plane_and_routes() {
    takes_its_config_and_routes("sotw").await;
}

/// Whether a line of the Go server's log is about a delta stream (`DELTA ...`) or a
/// state-of-the-world one (`STREAM ...`, `REQUEST ...`, `RESPONSE ...`).
fn spoke(line: &str, protocol: &str) -> bool {
    match protocol {
        "delta" => line.starts_with("DELTA "),
        _ => ["STREAM ", "REQUEST ", "RESPONSE "]
            .iter()
            .any(|p| line.starts_with(p)),
    }
}

async fn takes_its_config_and_routes(protocol: &str) {
    let Some(gocp_path) = go_server() else {
        return;
    };
    let a = backend("a", Protocol::Http1).await;
    let b = backend("b", Protocol::Http1).await;
    let listener_port = free_port();

    // The Go server: prints "listening 127.0.0.1:PORT" once serving.
    let (mut gocp, stdout) = Proc::spawn(
        "gocp",
        Command::new(&gocp_path)
            .arg("-listener-port")
            .arg(listener_port.to_string())
            .arg("-backend-a")
            .arg(a.addr.to_string())
            .arg("-backend-b")
            .arg(b.addr.to_string())
            .arg("-node-id")
            .arg(NODE_ID)
            .stdout(Stdio::piped()),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = stdout.unwrap();
    std::thread::spawn(move || {
        let mut first = String::new();
        let mut reader = BufReader::new(stdout);
        let _ = reader.read_line(&mut first);
        let _ = tx.send(first);
        // Keep draining so the Go program never blocks on a full pipe.
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("the Go server did not start: {:#?}", gocp.log()));
    let xds: SocketAddr = first
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}: {:#?}", gocp.log()));

    // The proxy, from a bootstrap file alone (plus its admin address).
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap.yaml");
    std::fs::write(
        &bootstrap,
        format!("xds_address: http://{xds}\nnode_id: {NODE_ID}\nmetadata: {{role: gateway}}\n"),
    )
    .unwrap();
    let admin_port = free_port();
    let (proxy, _) = Proc::spawn(
        "proxy",
        Command::new(env!("CARGO_BIN_EXE_switchboard-proxy"))
            .arg("--bootstrap")
            .arg(&bootstrap)
            .arg("--admin-address")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--xds-protocol")
            .arg(protocol)
            .env_remove("SWITCHBOARD_PROXY_BOOTSTRAP")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", support::LOG_LEVEL)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null()),
    );

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = http
            .get(format!("{admin}/ready"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string());
        if status == Ok(200) {
            break;
        }
        let dump = match http.get(format!("{admin}/config_dump")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "the proxy was not ready within 20 s (last /ready: {status:?})\nconfig_dump: {dump}\n\
             NACKs: {:#?}\nproxy: {:#?}",
            gocp.nacks(),
            proxy.tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let other = if protocol == "delta" { "sotw" } else { "delta" };
    assert!(
        gocp.has_line(|l| spoke(l, protocol)) && !gocp.has_line(|l| spoke(l, other)),
        "the proxy spoke {protocol} only\ngocp: {:#?}",
        gocp.tail(30)
    );
    let dump_at_v1: Value = http
        .get(format!("{admin}/config_dump"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let v1 = route_version(&dump_at_v1);
    assert!(v1.is_some(), "{dump_at_v1:#}");

    let base = format!("http://127.0.0.1:{listener_port}");
    for _ in 0..10 {
        assert_eq!(get(&http, &format!("{base}/a"), None).await, "a");
        assert_eq!(get(&http, &format!("{base}/a/deeper"), None).await, "a");
        assert_eq!(get(&http, &format!("{base}/"), Some("b")).await, "b");
        assert_eq!(get(&http, &format!("{base}/x"), Some("b")).await, "b");
    }
    let (mut to_a, mut to_b) = (0, 0);
    for _ in 0..200 {
        match get(&http, &format!("{base}/"), None).await.as_str() {
            "a" => to_a += 1,
            "b" => to_b += 1,
            other => panic!("unexpected backend {other:?}"),
        }
    }
    assert!(
        to_a > 0 && to_b > 0,
        "the 50/50 split of / sent {to_a} to a and {to_b} to b"
    );

    // A new snapshot: every "/" to svc-b, applied without a restart.
    let stdin = gocp.stdin.as_mut().unwrap();
    stdin.write_all(b"v2\n").unwrap();
    stdin.flush().unwrap();
    // The proxy ACKs only what it has applied: once go-control-plane sees the v2 routes
    // ACKed, every "/" goes to b.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gocp.has_line(|l| l.starts_with(&format!("ACK {ROUTE_TYPE} v2 "))) {
        assert!(
            Instant::now() < deadline,
            "the v2 routes were not ACKed within 5 s\nNACKs: {:#?}\ngocp: {:#?}\nproxy: {:#?}",
            gocp.nacks(),
            gocp.tail(30),
            proxy.tail(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..50 {
        assert_eq!(get(&http, &format!("{base}/"), None).await, "b");
    }
    assert_eq!(get(&http, &format!("{base}/"), Some("b")).await, "b");
    assert_eq!(get(&http, &format!("{base}/a"), None).await, "a");

    let dump: Value = http
        .get(format!("{admin}/config_dump"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // State of the world versions a type as a whole (the snapshot's); delta, each resource
    // (go-control-plane hashes it).
    let v2 = route_version(&dump);
    if protocol == "sotw" {
        assert_eq!(v2.as_deref(), Some("v2"), "{dump:#}");
    } else {
        assert!(v2.is_some() && v2 != v1, "{v1:?} then {v2:?}: {dump:#}");
    }
    assert_eq!(refused(&dump), Vec::<String>::new(), "{dump:#}");
    let nacks = gocp.nacks();
    assert!(nacks.is_empty(), "the proxy NACKed: {nacks:#?}");

    drop(proxy);
    drop(gocp);
}
