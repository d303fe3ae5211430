//! End-to-end fixtures: the real `switchboard` control plane and `switchboard-proxy`
//! processes on loopback (killed on drop), and real backends: HTTP/1.1, HTTP/2 (h2c) and gRPC.
//! Both binaries log at trace level into a file that is scanned for secrets when the process
//! wrapper drops (`switchboard_runtime::leaks`): a secret in any line fails the test.
//!
//! The proxies speak the ADS protocol `SWITCHBOARD_PROXY_XDS_PROTOCOL` names (`delta` or
//! `sotw`, passed as `--xds-protocol`, so exactly that one), else the proxy's default (delta,
//! falling back to sotw when the control plane does not serve delta); see [`xds_protocol`].

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use switchboard_runtime::leaks;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const PROXY: &str = env!("CARGO_BIN_EXE_switchboard-proxy");
pub const ADMIN_TOKEN: &str = "proxy-e2e-admin-token-0123456789";

/// The protocol the suite's proxies are told to speak, from `SWITCHBOARD_PROXY_XDS_PROTOCOL`;
/// `None`: the proxy's default.
pub fn xds_protocol() -> Option<&'static str> {
    match std::env::var("SWITCHBOARD_PROXY_XDS_PROTOCOL").as_deref() {
        Err(_) | Ok("") => None,
        Ok("delta") => Some("delta"),
        Ok("sotw") => Some("sotw"),
        Ok(other) => panic!("SWITCHBOARD_PROXY_XDS_PROTOCOL={other:?}: use delta or sotw"),
    }
}

pub use switchboard_runtime::ports::free_port;

/// The last `max` bytes of a log file, for failure messages.
pub fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    format!("--- {} ---\n{}", path.display(), &text[start..])
}

/// The last `n` lines of a proxy's log about its xDS stream (opened, failed, fallen back),
/// which trace-level noise would push out of a plain tail.
pub fn xds_stream_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("xDS stream") || l.contains("delta xDS"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `switchboard` binary: built beside this package's binary by `cargo test --workspace`
/// (scripts/test); built here when this package's tests run alone.
pub fn control_plane_binary() -> PathBuf {
    let dir = Path::new(PROXY).parent().unwrap();
    let bin = dir.join("switchboard");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "-p", "switchboard", "--bin", "switchboard"])
            .status()
            .unwrap();
        assert!(status.success(), "building the switchboard binary failed");
    }
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The level both binaries log at in these tests: everything, so that the secret scan sees
/// every line a user could turn on.
pub const LOG_LEVEL: &str = "trace";

/// A log file for a child's stdout and stderr both (appended to, so nothing written
/// beside the child is overwritten).
fn log_stdio(log: &Path) -> (Stdio, Stdio) {
    std::fs::File::create(log).unwrap();
    let file = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
}

/// A running `switchboard serve` on SQLite in a temp dir.
pub struct ControlPlane {
    _child: Killed,
    /// Its data_dir, where it keeps the generated CA key and JWT key.
    pub data: PathBuf,
    pub rest: String,
    pub xds: String,
    pub log: PathBuf,
    pub client: reqwest::Client,
}

impl ControlPlane {
    pub async fn start(dir: &Path) -> ControlPlane {
        let (rest, xds, admin) = (free_port(), free_port(), free_port());
        let log = dir.join("switchboard.log");
        let data = dir.join("data");
        let (stdout, stderr) = log_stdio(&log);
        leaks::remember("admin token", ADMIN_TOKEN);
        let child = Command::new(control_plane_binary())
            .current_dir(dir)
            .args(["serve", "--rest-addr", &format!("127.0.0.1:{rest}")])
            .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--admin-token", ADMIN_TOKEN])
            .args(["--data-dir", data.to_str().unwrap()])
            .args(["--log-level", LOG_LEVEL])
            .env_remove("SWITCHBOARD_DATABASE_URL")
            .env_remove("SWITCHBOARD_LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let cp = ControlPlane {
            _child: Killed(child),
            data,
            rest: format!("http://127.0.0.1:{rest}"),
            xds: format!("http://127.0.0.1:{xds}"),
            log,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = format!("http://127.0.0.1:{admin}/readyz");
        loop {
            if let Ok(r) = cp.client.get(&ready).send().await
                && r.status() == 200
            {
                return cp;
            }
            assert!(
                Instant::now() < deadline,
                "switchboard did not become ready\n{}",
                tail(&cp.log, 4000)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A REST call as the platform admin; the parsed JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.rest))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// PUT (create or replace) a resource of mesh `acme/prod`; asserts success.
    pub async fn put(&self, kind: &str, name: &str, spec: Value) {
        let path = format!("/v1/tenants/acme/meshes/prod/{kind}/{name}");
        let (s, body) = self
            .call(reqwest::Method::PUT, &path, Some(json!({ "spec": spec })))
            .await;
        assert!(s == 200 || s == 201, "PUT {path}: {s} {body}");
    }

    /// Tenant `acme`, mesh `prod`, and a proxy token written to `dir/token`.
    pub async fn tenant(&self, dir: &Path) -> PathBuf {
        let (s, b) = self
            .call(
                reqwest::Method::POST,
                "/v1/tenants",
                Some(json!({"name": "acme"})),
            )
            .await;
        assert!(s == 201 || s == 200, "create tenant: {s} {b}");
        let (s, b) = self
            .call(
                reqwest::Method::PUT,
                "/v1/tenants/acme/meshes/prod",
                Some(json!({"spec": {}})),
            )
            .await;
        assert!(s == 201 || s == 200, "create mesh: {s} {b}");
        let (s, b) = self
            .call(
                reqwest::Method::POST,
                "/v1/tenants/acme/proxy-tokens",
                Some(json!({"description": "e2e", "mesh": "prod"})),
            )
            .await;
        assert!(s == 201 || s == 200, "create proxy token: {s} {b}");
        let token = dir.join("token");
        let secret = b["secret"].as_str().unwrap();
        leaks::remember("proxy token", secret);
        std::fs::write(&token, secret).unwrap();
        token
    }
}

impl ControlPlane {
    /// Another proxy token of mesh `acme/prod`, `opaque` or `jwt`, written to `dir/{file}`.
    pub async fn proxy_token(&self, dir: &Path, file: &str, format: &str) -> PathBuf {
        let (s, b) = self
            .call(
                reqwest::Method::POST,
                "/v1/tenants/acme/proxy-tokens",
                Some(json!({"description": file, "mesh": "prod", "format": format})),
            )
            .await;
        assert!(
            s == 201 || s == 200,
            "create a {format} proxy token: {s} {b}"
        );
        let secret = b["secret"].as_str().unwrap();
        leaks::remember(&format!("{format} proxy token"), secret);
        let path = dir.join(file);
        std::fs::write(&path, secret).unwrap();
        path
    }
}

impl Drop for ControlPlane {
    /// Stops the process, then scans its whole log for secrets: the token and keys it was
    /// given or generated, and every pattern `leaks` knows.
    fn drop(&mut self) {
        let _ = self._child.0.kill();
        let _ = self._child.0.wait();
        for (what, file) in [
            ("CA key-encryption key", "ca-key"),
            ("proxy JWT signing key", "proxy-jwt-key"),
            ("admin token", "admin-token"),
        ] {
            if let Ok(text) = std::fs::read_to_string(self.data.join(file)) {
                leaks::remember(what, &text);
            }
        }
        leaks::assert_no_leaks(&self.log);
    }
}

/// The uid and gid the proxies run as when the tests run as root.
pub const NOBODY: u32 = 65534;

/// A field of `/proc/{pid}/status`, e.g. `Uid` or `CapEff`.
pub fn proc_status(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

pub fn running_as_root() -> bool {
    proc_status(std::process::id(), "Uid")
        .split_whitespace()
        .nth(1)
        == Some("0")
}

/// A running `switchboard-proxy`.
pub struct Proxy {
    child: Killed,
    pub admin: String,
    pub log: PathBuf,
}

impl Proxy {
    /// Starts a proxy named `name` with node `metadata`, and waits for `/ready`.
    pub async fn start(
        cp: &ControlPlane,
        dir: &Path,
        token: &Path,
        name: &str,
        metadata: &[(&str, String)],
    ) -> Proxy {
        Proxy::start_env(cp, dir, token, name, metadata, &[]).await
    }

    /// Starts a proxy named `name` with node `metadata`, without waiting for anything.
    pub fn spawn(
        cp: &ControlPlane,
        dir: &Path,
        token: &Path,
        name: &str,
        metadata: &[(&str, String)],
    ) -> Proxy {
        Proxy::spawn_env(cp, dir, token, name, metadata, &[])
    }

    /// [`Proxy::start`] with extra environment variables for the proxy process.
    pub async fn start_env(
        cp: &ControlPlane,
        dir: &Path,
        token: &Path,
        name: &str,
        metadata: &[(&str, String)],
        env: &[(&str, &str)],
    ) -> Proxy {
        let proxy = Proxy::spawn_env(cp, dir, token, name, metadata, env);
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/ready", proxy.admin)).send().await
                && r.status() == 200
            {
                return proxy;
            }
            assert!(
                Instant::now() < deadline,
                "proxy {name} did not become ready (xDS protocol: {}); its last xDS stream \
                 lines:\n{}\n{}",
                xds_protocol().unwrap_or("the default"),
                xds_stream_lines(&proxy.log, 5),
                tail(&proxy.log, 4000)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`Proxy::spawn`] with extra environment variables for the proxy process.
    pub fn spawn_env(
        cp: &ControlPlane,
        dir: &Path,
        token: &Path,
        name: &str,
        metadata: &[(&str, String)],
        env: &[(&str, &str)],
    ) -> Proxy {
        let admin = free_port();
        let log = dir.join(format!("{name}.log"));
        let (stdout, stderr) = log_stdio(&log);
        let mut cmd = Command::new(PROXY);
        cmd.args(["--xds-address", &cp.xds])
            .args([
                "--node-id",
                &format!("tenants/acme/meshes/prod/nodes/{name}"),
            ])
            .args(["--token-file", token.to_str().unwrap()])
            .args(["--admin-address", &format!("127.0.0.1:{admin}")])
            .args(["--drain-timeout", "2s"])
            .env_remove("SWITCHBOARD_PROXY_XDS_PROTOCOL")
            .env("RUST_LOG", LOG_LEVEL)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in metadata {
            cmd.args(["--metadata", &format!("{k}={v}")]);
        }
        if let Some(protocol) = xds_protocol() {
            cmd.args(["--xds-protocol", protocol]);
        }
        cmd.envs(env.iter().copied());
        if running_as_root() {
            // The proxy needs no privileges: under root (CI), prove it by running as nobody.
            use std::os::unix::fs::PermissionsExt;
            use std::os::unix::process::CommandExt;
            for p in [dir, token] {
                let mode = if p.is_dir() { 0o755 } else { 0o644 };
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            cmd.uid(NOBODY).gid(NOBODY);
        }
        Proxy {
            child: Killed(cmd.spawn().unwrap()),
            admin: format!("http://127.0.0.1:{admin}"),
            log,
        }
    }

    pub async fn admin_get(&self, path: &str) -> String {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

impl Drop for Proxy {
    /// Stops the proxy, then scans its whole log for secrets.
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        leaks::assert_no_leaks(&self.log);
    }
}

/// A backend on 127.0.0.1 answering `name`, with `x-backend` and `x-http-version` headers.
/// `/slow` waits 3 s; `/flaky` answers 503 to every other request; `stop()` closes it
/// (connections refused from then on, open ones dropped).
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl Backend {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

pub async fn backend(name: &'static str, protocol: Protocol) -> Backend {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let flaky = Arc::new(AtomicBool::new(false));
    let (stop, mut stopped) = watch::channel(false);
    let counter = hits.clone();
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = tokio::select! {
                r = tcp.accept() => match r { Ok(c) => c, Err(_) => continue },
                _ = stopped.changed() => break,
            };
            let (hits, flaky) = (counter.clone(), flaky.clone());
            conns.spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (hits, flaky) = (hits.clone(), flaky.clone());
                    async move {
                        hits.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(answer(name, &flaky, req).await)
                    }
                });
                let io = TokioIo::new(stream);
                let _ = match protocol {
                    Protocol::Http1 => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await
                    }
                    Protocol::Http2 => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    }
                };
            });
        }
        conns.abort_all();
    });
    Backend { addr, hits, stop }
}

async fn answer(name: &str, flaky: &AtomicBool, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let mut status = StatusCode::OK;
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if path.starts_with("/flaky") && !flaky.fetch_xor(true, Ordering::Relaxed) {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    Response::builder()
        .status(status)
        .header("x-backend", name)
        .header("x-http-version", format!("{:?}", req.version()))
        .header("x-path", path)
        .header(
            "x-seen-client-cert",
            req.headers()
                .get("x-forwarded-client-cert")
                .cloned()
                .unwrap_or(hyper::header::HeaderValue::from_static("")),
        )
        .body(Full::new(Bytes::from(name.to_owned())))
        .unwrap()
}

/// A gRPC backend: the standard health service, reporting `service` as SERVING.
pub async fn grpc_backend(service: &'static str) -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(service, tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(tcp);
        let _ = tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await;
    });
    addr
}
