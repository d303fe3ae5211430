//! `switchboard-proxy` as a gateway configured over xDS by the real control plane: the REST
//! writes that give it a listener ([`configure_gateway`]) and the child process
//! ([`ProxyProcess`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::Rest;
use crate::control_plane::{built_binary, last_lines, spawn, terminate, wait_for_200};
use crate::load::Protocol;

/// The binary to start: `SWITCHBOARD_PROXY_BIN`, else `target/dist/switchboard-proxy`
/// (`cargo build --profile dist -p switchboard-proxy`: release with LTO). The proxy as it
/// ships is also built with PGO: `proxy/pgo-build.sh` prints its path.
pub fn binary() -> Result<PathBuf> {
    built_binary("SWITCHBOARD_PROXY_BIN", "switchboard-proxy", "dist")
}

/// `switchboard-proxy --version`.
pub fn version(bin: &std::path::Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "switchboard-proxy (unknown version)".into())
}

/// A free loopback port, never one this process handed out before (closed again, so
/// another process could take it first).
pub fn free_port() -> Result<u16> {
    Ok(switchboard_runtime::ports::try_free_port()?)
}

/// The gateway a benchmark configures.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub tenant: String,
    pub mesh: String,
    pub name: String,
    /// The port of its HTTP listener.
    pub port: u16,
    /// The host name its HTTP/1.1 route serves (see [`Gateway::host`]).
    pub host: String,
}

impl Gateway {
    pub fn node_id(&self, node: &str) -> String {
        format!("tenants/{}/meshes/{}/nodes/{node}", self.tenant, self.mesh)
    }

    /// The host name whose route leads to the service of `protocol`: `host`, `h2.host`,
    /// `grpc.host`.
    pub fn host(&self, protocol: Protocol) -> String {
        match protocol {
            Protocol::Http1 => self.host.clone(),
            Protocol::Http2 => format!("h2.{}", self.host),
            Protocol::Grpc => format!("grpc.{}", self.host),
        }
    }
}

/// The service (and route) of `protocol`, and its `protocol` in the REST API: `http2` and
/// `grpc` give its cluster HTTP/2 towards the endpoints (h2c).
fn service(protocol: Protocol) -> (&'static str, &'static str) {
    match protocol {
        Protocol::Http1 => ("backend", "http"),
        Protocol::Http2 => ("backend-h2", "http2"),
        Protocol::Grpc => ("backend-grpc", "grpc"),
    }
}

/// Through REST as the platform admin: the tenant and mesh; per protocol a service
/// (`backend` HTTP, `backend-h2` HTTP/2, `backend-grpc` gRPC) whose one endpoint is
/// `backend`, and a route of the same name (host name [`Gateway::host`], every request to
/// that service, no retries, no timeout); and gateway `gw.name` (HTTP on `gw.port`, the
/// three routes). Returns a proxy token of the mesh.
pub async fn configure_gateway(rest: &Rest, gw: &Gateway, backend: SocketAddr) -> Result<String> {
    let m = format!("/v1/tenants/{}/meshes/{}", gw.tenant, gw.mesh);
    rest.post("/v1/tenants", &json!({"name": gw.tenant}))
        .await?;
    rest.put(&m, &json!({"spec": {}})).await?;
    let mut routes = Vec::new();
    for protocol in Protocol::ALL {
        let (name, kind) = service(protocol);
        rest.put(
            &format!("{m}/services/{name}"),
            &json!({"spec": {"protocol": kind, "port": backend.port()}}),
        )
        .await?;
        rest.put(
            &format!("{m}/endpoints/{name}-1"),
            &json!({"spec": {
                "service": name,
                "address": backend.ip().to_string(),
                "port": backend.port(),
            }}),
        )
        .await?;
        rest.put(
            &format!("{m}/routes/{name}"),
            &json!({"spec": {
                "hostnames": [gw.host(protocol)],
                "rules": [{"backends": [{"service": name}]}],
            }}),
        )
        .await?;
        routes.push(name);
    }
    rest.put(
        &format!("{m}/gateways/{}", gw.name),
        &json!({"spec": {"port": gw.port, "protocol": "http", "routes": routes}}),
    )
    .await?;
    let created = rest
        .post(
            &format!("/v1/tenants/{}/proxy-tokens", gw.tenant),
            &json!({"description": "proxy-bench gateway", "mesh": gw.mesh}),
        )
        .await?;
    let created: serde_json::Value =
        serde_json::from_slice(&created).context("the proxy token response")?;
    created["secret"]
        .as_str()
        .map(str::to_owned)
        .context("the proxy token response has no secret")
}

/// What a proxy is to the control plane (its node metadata).
#[derive(Debug, Clone)]
pub enum Role {
    /// `role=gateway`, `gateway=<name>`.
    Gateway(String),
    /// `role=sidecar` of `service`, in front of the application on 127.0.0.1:`app_port`,
    /// taking mesh traffic on `inbound_port` and the application's calls on `outbound_port`.
    Sidecar {
        service: String,
        app_port: u16,
        inbound_port: u16,
        outbound_port: u16,
    },
}

impl Role {
    /// The `--metadata key=value` pairs.
    fn metadata(&self) -> Vec<String> {
        match self {
            Role::Gateway(name) => vec!["role=gateway".into(), format!("gateway={name}")],
            Role::Sidecar {
                service,
                app_port,
                inbound_port,
                outbound_port,
            } => vec![
                "role=sidecar".into(),
                format!("service={service}"),
                format!("app_port={app_port}"),
                format!("inbound_port={inbound_port}"),
                format!("outbound_port={outbound_port}"),
            ],
        }
    }
}

/// How to start the proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub xds_url: String,
    pub node_id: String,
    pub role: Role,
    pub token: String,
    /// `--concurrency`: worker threads.
    pub workers: usize,
    /// `RUST_LOG` of the child.
    pub log_filter: String,
    /// `--access-log-format`; `None` leaves the proxy's default (Envoy's default text format,
    /// at INFO with target `access_log`, so `log_filter` must let that through).
    pub access_log: Option<String>,
    /// `--max-downstream-connections`; `None` leaves the proxy's default.
    pub max_downstream_connections: Option<u64>,
}

/// A running `switchboard-proxy`: stopped with SIGTERM ([`ProxyProcess::stop`]), killed when
/// dropped.
#[derive(Debug)]
pub struct ProxyProcess {
    child: Child,
    pub pid: u32,
    pub admin: SocketAddr,
    pub version: String,
    log: PathBuf,
    /// The token file and the log.
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts the proxy, its standard output and error (its logs, the access log included)
    /// into a file, and waits until its admin port's `/ready` answers 200 (its initial
    /// listeners, routes, clusters and endpoints applied).
    pub async fn start(options: &ProxyOptions, ready_timeout: Duration) -> Result<ProxyProcess> {
        let bin = binary()?;
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &options.token)?;
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = dir.path().join("proxy.log");
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--xds-address")
            .arg(&options.xds_url)
            .arg("--node-id")
            .arg(&options.node_id)
            .args(
                options
                    .role
                    .metadata()
                    .into_iter()
                    .flat_map(|m| ["--metadata".to_owned(), m]),
            )
            .arg("--token-file")
            .arg(&token_file)
            .arg("--admin-address")
            .arg(admin.to_string())
            .arg("--concurrency")
            .arg(options.workers.to_string())
            .args(
                options
                    .access_log
                    .iter()
                    .flat_map(|f| ["--access-log-format", f.as_str()]),
            )
            .args(
                options
                    .max_downstream_connections
                    .iter()
                    .flat_map(|n| ["--max-downstream-connections".to_owned(), n.to_string()]),
            )
            .env("RUST_LOG", &options.log_filter)
            .env_remove("SWITCHBOARD_PROXY_BOOTSTRAP")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true);
        let (child, pid) = spawn(&mut cmd, &bin, "the proxy")?;
        let mut proxy = ProxyProcess {
            child,
            pid,
            admin,
            version: version(&bin),
            log,
            _dir: dir,
        };
        if let Err(e) = proxy.wait_ready(ready_timeout).await {
            let tail = proxy.log_tail(40);
            proxy.stop().await;
            return Err(e.context(format!("the proxy did not become ready; its log:\n{tail}")));
        }
        Ok(proxy)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let url = format!("http://{}/ready", self.admin);
        wait_for_200(&mut self.child, "the proxy", &url, timeout).await
    }

    /// Fails if the proxy has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the proxy exited with {status}");
        }
        Ok(())
    }

    /// The last `lines` lines of the proxy's log.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            lines,
        )
    }

    /// Lines of the proxy's log that contain `needle`, and the log's size in bytes.
    pub fn log_lines(&self, needle: &str) -> Result<(u64, u64)> {
        use std::io::BufRead;
        let file = std::fs::File::open(&self.log)?;
        let size = file.metadata()?.len();
        let mut lines = 0;
        for line in std::io::BufReader::new(file).split(b'\n') {
            if line?
                .windows(needle.len().max(1))
                .any(|w| w == needle.as_bytes())
            {
                lines += 1;
            }
        }
        Ok((lines, size))
    }

    /// SIGTERM, as a user stops it: the proxy drains its listeners (`--drain-timeout`, 5 s)
    /// and exits, and an instrumented build (`proxy/pgo-build.sh`) writes its profile then.
    /// SIGKILL if it has not exited within 12 s.
    pub async fn stop(&mut self) {
        terminate(&mut self.child, &[self.pid], Duration::from_secs(12)).await;
    }
}
