//! The proxy benchmark's mesh: a pair of `switchboard-proxy` sidecars configured by the real
//! control plane, one hop between them.
//!
//! ```text
//! load ──► client sidecar :outbound ──(the hop: plaintext or mTLS)──► server sidecar :inbound ──► backend
//! ```
//!
//! Mesh `{mesh}` of tenant `{tenant}` has services `server` (HTTP, the backend's application)
//! and `client`. The server sidecar registers itself as the endpoint of `server`; the client
//! sidecar's outbound listener routes `Host: server` to it. The mesh's `mtls.mode` decides
//! whether the hop is plaintext (`off`) or mutual TLS (`strict`) with certificates the mesh
//! CA issued over SDS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::Rest;
use crate::load::{self, Target};
use crate::proxy::{ProxyOptions, ProxyProcess, Role, free_port};

/// The service the load calls (the `Host` header at the client sidecar).
pub const SERVER: &str = "server";
/// The calling service, whose identity the client sidecar has.
pub const CLIENT: &str = "client";

/// Through REST as the platform admin: mesh `mesh` of `tenant` (which must exist) with
/// `mtls.mode` `mode`, services `server` and `client` (HTTP). Returns a proxy token of the mesh.
pub async fn configure(rest: &Rest, tenant: &str, mesh: &str, mode: &str) -> Result<String> {
    let m = format!("/v1/tenants/{tenant}/meshes/{mesh}");
    rest.put(&m, &json!({"spec": {"mtls": {"mode": mode}}}))
        .await?;
    for service in [SERVER, CLIENT] {
        rest.put(
            &format!("{m}/services/{service}"),
            &json!({"spec": {"protocol": "http", "port": 80}}),
        )
        .await?;
    }
    let created = rest
        .post(
            &format!("/v1/tenants/{tenant}/proxy-tokens"),
            &json!({"description": "proxy-bench mesh", "mesh": mesh}),
        )
        .await?;
    let created: serde_json::Value =
        serde_json::from_slice(&created).context("the proxy token response")?;
    created["secret"]
        .as_str()
        .map(str::to_owned)
        .context("the proxy token response has no secret")
}

/// How to start a pair.
#[derive(Debug, Clone)]
pub struct PairOptions {
    pub xds_url: String,
    pub tenant: String,
    pub mesh: String,
    pub token: String,
    /// `--concurrency` of each sidecar.
    pub workers: usize,
    pub log_filter: String,
    /// The server sidecar's application.
    pub backend: SocketAddr,
    /// What a good response's body length is, and a request's timeout.
    pub body_len: usize,
    pub timeout: Duration,
}

/// Two running sidecars; stop them with [`SidecarPair::stop`].
#[derive(Debug)]
pub struct SidecarPair {
    pub client: ProxyProcess,
    pub server: ProxyProcess,
    /// Where the load goes: the client sidecar's outbound listener, `Host: server`.
    pub outbound: Target,
    /// The server sidecar's inbound listener (mTLS in a strict mesh), `Host: server`.
    pub inbound: Target,
}

impl SidecarPair {
    /// Starts the server sidecar, then the client sidecar, and waits (up to `ready`) until a
    /// request through both is answered: the server sidecar has registered itself and the
    /// client sidecar has its endpoint.
    pub async fn start(o: &PairOptions, ready: Duration) -> Result<SidecarPair> {
        let inbound_port = free_port()?;
        let outbound_port = free_port()?;
        let start = |name: &str, role: Role| ProxyOptions {
            xds_url: o.xds_url.clone(),
            node_id: format!("tenants/{}/meshes/{}/nodes/{name}", o.tenant, o.mesh),
            role,
            token: o.token.clone(),
            workers: o.workers,
            log_filter: o.log_filter.clone(),
            access_log: Some("off".into()),
            max_downstream_connections: None,
        };
        let server = ProxyProcess::start(
            &start(
                "server",
                Role::Sidecar {
                    service: SERVER.into(),
                    app_port: o.backend.port(),
                    inbound_port,
                    outbound_port: free_port()?,
                },
            ),
            ready,
        )
        .await?;
        let client = ProxyProcess::start(
            &start(
                "client",
                Role::Sidecar {
                    service: CLIENT.into(),
                    // The load stands in for the client's application; nothing calls it.
                    app_port: free_port()?,
                    inbound_port: free_port()?,
                    outbound_port,
                },
            ),
            ready,
        )
        .await?;
        let target = |port: u16| Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            host: SERVER.into(),
            path: "/".into(),
            body_len: o.body_len,
            timeout: o.timeout,
            protocol: load::Protocol::Http1,
            h2_connections: 1,
        };
        let mut pair = SidecarPair {
            client,
            server,
            outbound: target(outbound_port),
            inbound: target(inbound_port),
        };
        let deadline = Instant::now() + ready;
        loop {
            let failure = match load::probe(&pair.outbound).await {
                Ok(()) => return Ok(pair),
                Err(f) => f,
            };
            if Instant::now() > deadline {
                let logs = format!(
                    "client sidecar:\n{}\nserver sidecar:\n{}",
                    pair.client.log_tail(20),
                    pair.server.log_tail(20)
                );
                pair.stop().await;
                bail!(
                    "mesh {}: no answer through the sidecar pair within {ready:?} (last: \
                     {failure:?}); their logs:\n{logs}",
                    o.mesh
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails if either sidecar has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.client.check_alive().context("the client sidecar")?;
        self.server.check_alive().context("the server sidecar")
    }

    pub async fn stop(&mut self) {
        self.client.stop().await;
        self.server.stop().await;
    }
}

/// The trust domain `switchboard serve` uses unless configured (the load tests do not).
pub const TRUST_DOMAIN: &str = "switchboard.local";

/// The SPIFFE ID of `service` in `tenant/mesh` under [`TRUST_DOMAIN`].
pub fn spiffe_id(tenant: &str, mesh: &str, service: &str) -> String {
    format!("spiffe://{tenant}.{TRUST_DOMAIN}/mesh/{mesh}/service/{service}")
}
