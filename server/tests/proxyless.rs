//! End to end with real, independently written xDS clients: grpcio's built-in xDS client
//! (Python) and @grpc/grpc-js-xds (Node), each proxyless (`xds:///payments:8080`), calling real
//! gRPC backends (tests/peers/backend.py) through the built `switchboard` binary.
//!
//! For each client: a weighted route 80/20 set through REST splits 1,000 calls within ±5
//! points; a header-matched rule sends only the matching calls to a third backend; a change to
//! 0/100 through REST moves every call to the second backend within 2 s; and the server records
//! no NACK from the client.
//!
//! The peers come from `scripts/lib/peers.sh` (run by `scripts/test`), which exports
//! `SWITCHBOARD_TEST_PYTHON` (a venv with grpcio) and `SWITCHBOARD_TEST_NODE_MODULES`. Without
//! them these tests skip, unless `SWITCHBOARD_REQUIRE_PEERS=1` (then they fail).
//!
//! Set `SWITCHBOARD_TEST_PEER_TRACE=1` to have the clients log their xDS traffic (GRPC_TRACE)
//! into the logs that a failure prints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const ADMIN: &str = "proxyless-test-admin-token";
const TENANT: &str = "acme";
const MESH: &str = "prod";
const HOST: &str = "payments:8080";
/// How long one client command (a batch of calls) may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// What the issue asks of a route change: every call on the new backend within this.
const SWITCH_LIMIT: Duration = Duration::from_secs(2);

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

// --- the control plane ----------------------------------------------------------------------

mod common;

use common::{Server, tail};

/// `switchboard serve` with JSON trace logs in `dir/switchboard.log`, on the embedded default.
async fn start_server(dir: &Path) -> Server {
    let data = dir.join("data");
    let flags = [
        "--admin-token",
        ADMIN,
        "--data-dir",
        data.to_str().unwrap(),
        "--log-format",
        "json",
    ];
    let flags: Vec<&str> = flags
        .into_iter()
        .chain(["--log-level", common::LOG_LEVEL])
        .collect();
    common::start(dir, &flags, Some(&dir.join("switchboard.log"))).await
}

async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    common::call(c, method, url, ADMIN, body, None).await
}

async fn put(c: &reqwest::Client, url: &str, body: Value) {
    let (s, r) = call(c, reqwest::Method::PUT, url, Some(body)).await;
    assert_eq!(s, 200, "PUT {url}: {r}");
}

fn route(v1: u32, v2: u32) -> Value {
    json!({"spec": {"hostnames": [HOST], "rules": [
        {"matches": [{"headers": [{"name": "x-canary", "type": "exact", "value": "yes"}]}],
         "backends": [{"service": "canary"}]},
        {"backends": [{"service": "v1", "weight": v1}, {"service": "v2", "weight": v2}]},
    ]}})
}

// --- peers ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Peer {
    Python,
    Node,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Python => "python",
            Peer::Node => "node",
        }
    }
}

/// Where the peers' runtimes are, or `None` (after saying why) when this test should skip.
struct Toolchain {
    python: PathBuf,
    node_modules: Option<PathBuf>,
}

fn toolchain(peer: Peer) -> Option<Toolchain> {
    let required = std::env::var("SWITCHBOARD_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut missing = Vec::new();
    let python = var("SWITCHBOARD_TEST_PYTHON");
    if python.is_none() {
        missing.push("SWITCHBOARD_TEST_PYTHON");
    }
    let node_modules = var("SWITCHBOARD_TEST_NODE_MODULES");
    if matches!(peer, Peer::Node) && node_modules.is_none() {
        missing.push("SWITCHBOARD_TEST_NODE_MODULES");
    }
    if !missing.is_empty() {
        let msg = format!(
            "{} unset: skipping the {} proxyless test (scripts/test installs the peers; see scripts/lib/peers.sh)",
            missing.join(" and "),
            peer.name()
        );
        assert!(!required, "SWITCHBOARD_REQUIRE_PEERS=1 but {msg}");
        eprintln!("{msg}");
        return None;
    }
    Some(Toolchain {
        python: python.unwrap(),
        node_modules,
    })
}

/// A gRPC backend answering `/echo.Echo/Who` with its name; it exits when its stdin closes
/// (and is killed on drop anyway).
struct Backend {
    _child: Child,
    _stdin: ChildStdin,
    port: u16,
}

async fn start_backend(tc: &Toolchain, name: &str, dir: &Path) -> Backend {
    let log = dir.join(format!("backend-{name}.log"));
    let mut child = Command::new(&tc.python)
        .arg(peers_dir().join("backend.py"))
        .arg(name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    let port = match line {
        Ok(Ok(Some(ref l))) => l.trim().parse().ok(),
        _ => None,
    };
    let port = port.unwrap_or_else(|| {
        panic!(
            "backend {name} did not print its port ({line:?})\n{}",
            tail(&log, 4000)
        )
    });
    Backend {
        _child: child,
        _stdin: stdin,
        port,
    }
}

/// What a client answered to `call N …`.
#[derive(Debug, Default)]
struct Calls {
    counts: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Calls {
    fn get(&self, backend: &str) -> u64 {
        self.counts.get(backend).copied().unwrap_or(0)
    }
    fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// A running proxyless client (tests/peers/client.{py,js}), driven through its stdin.
struct Client {
    peer: Peer,
    node_id: String,
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

async fn start_client(peer: Peer, tc: &Toolchain, server: &Server, dir: &Path) -> Client {
    let node_name = format!("{}-client", peer.name());
    let node_id = format!("tenants/{TENANT}/meshes/{MESH}/nodes/{node_name}");
    // No per-call credentials in a gRPC bootstrap: the mesh admits unauthenticated xDS.
    // grpc-js-xds insists on node.locality.
    let bootstrap = json!({
        "xds_servers": [{"server_uri": server.xds_addr, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": node_id, "locality": {}, "metadata": {"client": peer.name()}},
    });
    let bootstrap_path = dir.join(format!("bootstrap-{}.json", peer.name()));
    std::fs::write(
        &bootstrap_path,
        serde_json::to_vec_pretty(&bootstrap).unwrap(),
    )
    .unwrap();
    let log = dir.join(format!("client-{}.log", peer.name()));
    let mut cmd = match peer {
        Peer::Python => {
            let mut c = Command::new(&tc.python);
            c.arg(peers_dir().join("client.py"));
            c
        }
        Peer::Node => {
            let mut c = Command::new("node");
            c.arg(peers_dir().join("client.js"))
                .env("NODE_PATH", tc.node_modules.as_ref().unwrap());
            c
        }
    };
    cmd.arg(format!("xds:///{HOST}"))
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap_path);
    if std::env::var("SWITCHBOARD_TEST_PEER_TRACE").is_ok_and(|v| v == "1") {
        let verbosity = match peer {
            Peer::Python => "debug",
            Peer::Node => "DEBUG",
        };
        cmd.env("GRPC_TRACE", "xds_client,xds_resolver")
            .env("GRPC_VERBOSITY", verbosity);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {} client: {e}", peer.name()));
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    Client {
        peer,
        node_id,
        _child: child,
        stdin,
        stdout,
        log,
    }
}

impl Client {
    /// Makes `n` calls, sending `header` (`name=value`) if given, and returns where they went.
    async fn calls(&mut self, n: u32, header: Option<&str>) -> Calls {
        let cmd = match header {
            Some(h) => format!("call {n} {h}\n"),
            None => format!("call {n}\n"),
        };
        self.stdin.write_all(cmd.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        let line = tokio::time::timeout(COMMAND_TIMEOUT, self.stdout.next_line()).await;
        let line = match line {
            Ok(Ok(Some(l))) => l,
            other => panic!(
                "the {} client did not answer `{}`: {other:?}\n{}",
                self.peer.name(),
                cmd.trim(),
                tail(&self.log, 8000)
            ),
        };
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"));
        let map = |v: &Value| -> BTreeMap<String, u64> {
            v.as_object()
                .unwrap()
                .iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
                .collect()
        };
        Calls {
            counts: map(&v["counts"]),
            errors: map(&v["errors"]),
        }
    }
}

// --- the test -------------------------------------------------------------------------------

/// Everything a failure should show: the client's and the server's logs and what the server
/// says it sent and was acknowledged.
async fn diagnostics(c: &reqwest::Client, server: &Server, client: &Client) -> String {
    // Never panics itself: a failure must keep its own message.
    async fn get(c: &reqwest::Client, url: &str) -> String {
        let resp = match c.get(url).bearer_auth(ADMIN).send().await {
            Ok(r) => r,
            Err(e) => return format!("<{e}>"),
        };
        let status = resp.status();
        let body = resp.text().await.unwrap_or_else(|e| format!("<{e}>"));
        format!("{status} {body}")
    }
    let m = format!("{}/v1/tenants/{TENANT}/meshes/{MESH}", server.rest);
    let node = client.node_id.rsplit('/').next().unwrap_or_default();
    let proxies = get(c, &format!("{m}/proxies")).await;
    let config = get(c, &format!("{m}/proxies/{node}/config")).await;
    format!(
        "GET …/proxies: {proxies}\nGET …/proxies/{node}/config: {config}\n{}\n{}",
        tail(&client.log, 12000),
        server
            .log
            .as_deref()
            .map(|p| tail(p, 12000))
            .unwrap_or_default()
    )
}

/// Panics with a message and the [`diagnostics`].
macro_rules! fail {
    ($c:expr, $server:expr, $client:expr, $($msg:tt)+) => {
        panic!("{} client: {}\n{}", $client.peer.name(), format!($($msg)+), diagnostics($c, $server, $client).await)
    };
}

/// The server's `switchboard_xds_nacks_total` for the tenant, summed over types.
async fn nacks_in_metrics(c: &reqwest::Client, server: &Server) -> (f64, String) {
    let text = common::metrics(c, server).await;
    let tenant = format!("tenant=\"{TENANT}\"");
    let total = text
        .lines()
        .filter(|l| l.starts_with("switchboard_xds_nacks_total") && l.contains(&tenant))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let xds: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchboard_xds_"))
        .collect();
    (total, xds.join("\n"))
}

async fn proxyless(peer: Peer) {
    let Some(tc) = toolchain(peer) else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let c = reqwest::Client::new();
    let v1 = format!("{}/v1", server.rest);
    let (s, r) = call(
        &c,
        reqwest::Method::POST,
        &format!("{v1}/tenants"),
        Some(json!({"name": TENANT})),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let m = format!("{v1}/tenants/{TENANT}/meshes/{MESH}");
    put(&c, &m, json!({"spec": {"allowUnauthenticatedXds": true}})).await;

    let mut backends = Vec::new();
    for name in ["v1", "v2", "canary"] {
        let b = start_backend(&tc, name, dir.path()).await;
        put(
            &c,
            &format!("{m}/services/{name}"),
            json!({"spec": {"protocol": "grpc", "port": 8080}}),
        )
        .await;
        let ep = json!({"spec": {"service": name, "address": "127.0.0.1", "port": b.port}});
        put(&c, &format!("{m}/endpoints/{name}"), ep).await;
        backends.push(b);
    }
    put(&c, &format!("{m}/routes/payments"), route(80, 20)).await;

    let mut client = start_client(peer, &tc, &server, dir.path()).await;
    let who = peer.name();

    // 80/20 over 1,000 calls, within ±5 points; nothing to the canary without the header.
    let split = client.calls(1000, None).await;
    let (a, b) = (split.get("v1"), split.get("v2"));
    eprintln!(
        "{who}: 1,000 calls at 80/20 → v1 {a}, v2 {b} (all: {:?}, errors: {:?})",
        split.counts, split.errors
    );
    if !split.errors.is_empty()
        || split.total() != 1000
        || !(750..=850).contains(&a)
        || !(150..=250).contains(&b)
    {
        fail!(
            &c,
            &server,
            &client,
            "1,000 calls at 80/20 gave {split:?}: want v1 800±50, v2 200±50, no errors"
        );
    }

    // The header-matched rule takes exactly the matching calls.
    let canary = client.calls(100, Some("x-canary=yes")).await;
    eprintln!(
        "{who}: 100 calls with x-canary: yes → {:?}, errors {:?}",
        canary.counts, canary.errors
    );
    if !canary.errors.is_empty() || canary.get("canary") != 100 {
        fail!(
            &c,
            &server,
            &client,
            "100 calls with x-canary: yes gave {canary:?}: want all on canary"
        );
    }
    let other = client.calls(50, Some("x-canary=no")).await;
    if !other.errors.is_empty() || other.get("canary") != 0 || other.total() != 50 {
        fail!(
            &c,
            &server,
            &client,
            "50 calls with x-canary: no gave {other:?}: want none on canary"
        );
    }

    // 0/100: every call on v2 within 2 s of the PUT's response.
    put(&c, &format!("{m}/routes/payments"), route(0, 100)).await;
    let changed = Instant::now();
    let mut batches = 0;
    let switched = loop {
        let batch = client.calls(10, None).await;
        batches += 1;
        if !batch.errors.is_empty() {
            fail!(
                &c,
                &server,
                &client,
                "calls failed while the route changed: {batch:?}"
            );
        }
        if batch.get("v2") == 10 {
            break changed.elapsed();
        }
        if changed.elapsed() > Duration::from_secs(15) {
            fail!(
                &c,
                &server,
                &client,
                "calls still reach {:?} 15 s after the route went 0/100",
                batch.counts
            );
        }
    };
    eprintln!("{who}: all calls on v2 {switched:?} after the PUT ({batches} batches of 10)");
    if switched > SWITCH_LIMIT {
        fail!(
            &c,
            &server,
            &client,
            "the switch to 0/100 took {switched:?} (limit {SWITCH_LIMIT:?})"
        );
    }
    let after = client.calls(200, None).await;
    if !after.errors.is_empty() || after.get("v2") != 200 {
        fail!(
            &c,
            &server,
            &client,
            "after the switch, 200 calls gave {after:?}: want all on v2"
        );
    }
    let canary = client.calls(20, Some("x-canary=yes")).await;
    if !canary.errors.is_empty() || canary.get("canary") != 20 {
        fail!(
            &c,
            &server,
            &client,
            "after the switch, 20 calls with x-canary: yes gave {canary:?}"
        );
    }

    // No NACK: per-proxy status lists the client with every type ACKed and none NACKed.
    let (nacks, xds_metrics) = nacks_in_metrics(&c, &server).await;
    if nacks != 0.0 {
        fail!(
            &c,
            &server,
            &client,
            "the server counted {nacks} NACKs:\n{xds_metrics}"
        );
    }
    let (s, proxies) = call(&c, reqwest::Method::GET, &format!("{m}/proxies"), None).await;
    assert_eq!(s, 200, "GET …/proxies: {proxies}");
    let Some(me) = proxies["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["nodeId"] == json!(client.node_id)))
    else {
        fail!(
            &c,
            &server,
            &client,
            "GET …/proxies does not list {}: {proxies}",
            client.node_id
        )
    };
    let types = me["types"].as_array().cloned().unwrap_or_default();
    for t in &types {
        if !t["nack"].is_null() || t["state"] == json!("NACKED") {
            fail!(&c, &server, &client, "the server recorded a NACK: {t}");
        }
    }
    for want in ["LDS", "RDS", "CDS", "EDS"] {
        let acked = |t: &Value| {
            let version = t["acked"]["version"]
                .as_str()
                .or(t["ackedVersion"].as_str());
            t["type"] == json!(want) && version.is_some_and(|v| !v.is_empty())
        };
        if !types.iter().any(acked) {
            fail!(&c, &server, &client, "{want} is not ACKed in {me}");
        }
    }
    drop(client);
    drop(backends);
}

#[tokio::test]
async fn grpcio_xds_client_follows_weights_headers_and_changes() {
    proxyless(Peer::Python).await;
}

#[tokio::test]
async fn grpc_js_xds_client_follows_weights_headers_and_changes() {
    proxyless(Peer::Node).await;
}
