//! Fixtures for the listener tests: `listener::run` on 127.0.0.1:0 with its drain token,
//! listeners (HTTP with limits and TLS, TCP proxy) applied to a `ConfigStore` by hand, a TCP
//! echo backend, certificates made by rcgen, and the Prometheus text of this test binary's
//! metrics.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use switchboard_proxy_data::ClusterManager;
use switchboard_proxy_data::listener::ConnectionLimit;
use switchboard_proxy_xds::ConfigStore;
use switchboard_proxy_xds::config::cluster::UpstreamProtocol;
use switchboard_proxy_xds::config::listener::{DataSource, DownstreamTls, ListenerKind, TcpProxy};
use switchboard_proxy_xds::config::route::{Action, Clusters, PathMatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::support::set_http_listener;
use crate::support::{apply_listener, route, set_cluster, set_routes, to, vhost};

/// A listener served by `listener::run`.
pub struct Running {
    pub addr: SocketAddr,
    pub drain: CancellationToken,
    pub done: JoinHandle<()>,
}

/// Runs listener `name` of `store` on 127.0.0.1:0.
pub async fn start(store: &ConfigStore, name: &str, drain_timeout: Duration) -> Running {
    start_with(store, name, drain_timeout, Arc::new(ClusterManager::new())).await
}

pub async fn start_with(
    store: &ConfigStore,
    name: &str,
    drain_timeout: Duration,
    clusters: Arc<ClusterManager>,
) -> Running {
    start_limited(
        store,
        name,
        drain_timeout,
        clusters,
        ConnectionLimit::unlimited(),
    )
    .await
}

/// [`start_with`] under a cap on open downstream connections.
pub async fn start_limited(
    store: &ConfigStore,
    name: &str,
    drain_timeout: Duration,
    clusters: Arc<ClusterManager>,
    limit: ConnectionLimit,
) -> Running {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let drain = CancellationToken::new();
    let done = tokio::spawn(switchboard_proxy_data::listener::run(
        tcp,
        name.to_owned(),
        store.clone(),
        clusters,
        limit,
        drain.clone(),
        drain_timeout,
    ));
    Running { addr, drain, done }
}

/// Routes every request to cluster `a`.
pub fn route_all_to_a(store: &mut ConfigStore) {
    set_routes(
        store,
        vec![vhost(
            "all",
            &["*"],
            vec![route(
                "all",
                PathMatch::Prefix("/".into()),
                Action::Forward(to("a")),
            )],
        )],
    );
}

pub fn set_tcp_listener(
    store: &mut ConfigStore,
    name: &str,
    clusters: Clusters,
    max_connect_attempts: u32,
    idle_timeout: Option<Duration>,
) {
    let kind = ListenerKind::Tcp(TcpProxy {
        clusters,
        idle_timeout,
        max_connect_attempts,
    });
    apply_listener(store, name, kind, None);
}

/// A store with cluster `echo` (a fresh [`echo_backend`]) and TCP listener `name` to it: one
/// connect attempt, idle timeout `idle_timeout`.
pub async fn tcp_echo_store(name: &str, idle_timeout: Option<Duration>) -> ConfigStore {
    let echo_addr = echo_backend().await;
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "echo", UpstreamProtocol::Http1, &[echo_addr]);
    set_tcp_listener(
        &mut store,
        name,
        Clusters::One("echo".into()),
        1,
        idle_timeout,
    );
    store
}

/// A TCP server echoing every byte back, closing its side when the client closes its own.
pub async fn echo_backend() -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = tcp.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An address nothing listens on (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tcp.local_addr().unwrap()
}

/// The metrics recorder of this test binary, installed on first use: call it before the
/// traffic a test wants to see counted.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// The value of `name` with exactly these labels, from the Prometheus text.
pub fn metric(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = metrics().render();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let mut got: Vec<(String, String)> = rest
                .trim_end_matches('}')
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            let mut want: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            got.sort();
            want.sort();
            (got == want).then(|| value.parse().ok()).flatten()
        })
}

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
pub fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

pub fn tls(cert: &str, key: &str, alpn: &[&str]) -> DownstreamTls {
    DownstreamTls {
        certificate_chain: DataSource::Inline(cert.as_bytes().to_vec()),
        private_key: DataSource::Inline(key.as_bytes().to_vec()),
        alpn_protocols: alpn.iter().map(|p| (*p).to_owned()).collect(),
        client_validation: None,
        handshake_timeout: Duration::from_secs(5),
        sni_certificates: Vec::new(),
    }
}

/// Writes `bytes` on a fresh connection (then shuts down its write side when `half_close`)
/// and reads until the proxy closes it (bounded): what came back, or `None` when the proxy
/// did not close within `within`.
pub async fn exchange(
    addr: SocketAddr,
    bytes: &[u8],
    half_close: bool,
    within: Duration,
) -> Option<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    if half_close {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) if out.len() < 1 << 20 => out.extend_from_slice(&buf[..n]),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    Some(out)
}
