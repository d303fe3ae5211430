//! The TCP proxy: one downstream connection relayed byte for byte to an endpoint of the
//! listener's cluster (picked by weight once per connection when there are several).
//!
//! Connecting tries up to `max_connect_attempts` endpoints, each within the cluster's
//! `connect_timeout`, preferring endpoints not tried yet for this connection. Connect
//! failures feed the cluster's outlier detection, and `max_connections` caps the cluster's
//! open upstream connections. Once connected, bytes flow both ways (half-close included)
//! until both sides are done or nothing moved either way for the idle timeout.
//!
//! Metrics: `switchboard_proxy_tcp_bytes_total{listener, direction}` (`rx` from the
//! downstream client, `tx` to it) and, per failed connect attempt,
//! `switchboard_proxy_upstream_requests_total{cluster, outcome="connect_failure"}`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use metrics::Counter;
use switchboard_proxy_xds::Snapshot;
use switchboard_proxy_xds::config::cluster::Cluster;
use switchboard_proxy_xds::config::listener::TcpProxy;
use switchboard_proxy_xds::config::route::Clusters;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::cluster::{
    AttemptOutcome, Clock, ClusterRegistry, ConnectionSlot, Picked, endpoint_source, pick_weighted,
};
use crate::idle::Activity;
use crate::telemetry::TCP_BYTES_TOTAL;

/// How many picks [`connect`] makes to find an endpoint it has not tried yet, before it
/// settles for one it has.
const PICKS_PER_ATTEMPT: usize = 8;

/// Relays `downstream` to the cluster of `config`, resolved against `snapshot` (released once
/// connected). Returns when the exchange is over (both directions done, idle, an I/O error,
/// or no upstream could be reached); dropping the future closes both sides.
pub(crate) async fn relay<S>(
    downstream: S,
    listener: &str,
    config: &TcpProxy,
    snapshot: Arc<Snapshot>,
    registry: &ClusterRegistry,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = match &config.clusters {
        Clusters::One(c) => Some(c.as_str()),
        Clusters::Weighted(w) => pick_weighted(w),
    };
    let Some(cluster) = name.and_then(|n| snapshot.clusters.get(n)).cloned() else {
        tracing::debug!(
            %listener,
            cluster = ?name,
            "TCP proxy: cluster is not configured; closing"
        );
        return;
    };
    if cluster.tls.is_some() || cluster.tls_matches.iter().any(|m| m.tls.is_some()) {
        // Never fall back to plaintext towards an endpoint that expects TLS.
        tracing::warn!(
            %listener,
            cluster = %cluster.name,
            "TCP proxy: TLS towards upstreams is not supported for TCP proxying; closing"
        );
        return;
    }
    let Some(Upstream {
        stream: mut upstream,
        picked,
        _slot: slot,
    }) = connect(&cluster, &snapshot, registry, config.max_connect_attempts).await
    else {
        return;
    };
    drop(snapshot);
    let activity = Arc::new(Activity::new());
    let mut downstream = Metered {
        inner: downstream,
        activity: activity.clone(),
        rx: bytes_counter(listener, "rx"),
        tx: bytes_counter(listener, "tx"),
    };
    let copy = tokio::io::copy_bidirectional(&mut downstream, &mut upstream);
    let result = match config.idle_timeout {
        None => Some(copy.await),
        Some(timeout) => tokio::select! {
            r = copy => Some(r),
            () = activity.idle_for(timeout) => None,
        },
    };
    match result {
        Some(Ok((rx, tx))) => {
            tracing::debug!(%listener, upstream = %picked.address, rx, tx, "TCP proxy: done");
        }
        Some(Err(e)) => {
            tracing::debug!(
                %listener,
                upstream = %picked.address,
                error = %e,
                "TCP proxy: connection ended with an error"
            );
        }
        None => {
            tracing::debug!(
                %listener,
                upstream = %picked.address,
                "TCP proxy: idle timeout; closing"
            );
        }
    }
    // Kept until here: least request counts the connection as active, and the slot counts
    // it under max_connections.
    drop(picked);
    drop(slot);
}

fn bytes_counter(listener: &str, direction: &'static str) -> Counter {
    metrics::counter!(
        TCP_BYTES_TOTAL,
        "listener" => listener.to_owned(),
        "direction" => direction
    )
}

/// An upstream connection for `cluster`: up to `attempts` tries, each on an endpoint not
/// tried yet when the balancer offers one. Each try is an attempt for the endpoint's outlier
/// record (a connect failure counts as a 5xx, as in Envoy when local-origin errors are not
/// split) and takes a slot under the cluster's `max_connections`, held with the returned
/// connection.
async fn connect(
    cluster: &Arc<Cluster>,
    snapshot: &Snapshot,
    registry: &ClusterRegistry,
    attempts: u32,
) -> Option<Upstream> {
    let state = registry.cluster_in(&cluster.name, snapshot);
    state.breakers.configure(&cluster.circuit_breakers);
    let Some(source) = endpoint_source(snapshot, cluster) else {
        tracing::debug!(cluster = %cluster.name, "TCP proxy: no endpoints yet; closing");
        return None;
    };
    let outlier = cluster.outlier_detection.as_ref();
    let mut tried: Vec<SocketAddr> = Vec::new();
    for attempt in 1..=attempts.max(1) {
        let Some(picked) = pick_untried(&tried, || {
            state.pick(cluster.lb_policy, &source, None, outlier, Clock)
        }) else {
            tracing::debug!(cluster = %cluster.name, "TCP proxy: no healthy endpoint; closing");
            return None;
        };
        let address = picked.address;
        let Some(slot) = state.try_connection_slot(address) else {
            tracing::debug!(
                cluster = %cluster.name,
                "TCP proxy: max_connections reached; closing"
            );
            return None;
        };
        let error = match tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(address))
            .await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                state.record(&picked.host, false, outlier, Clock);
                return Some(Upstream {
                    stream,
                    picked,
                    _slot: slot,
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {:?}", cluster.connect_timeout),
        };
        drop(slot);
        state.record(&picked.host, true, outlier, Clock);
        state.metrics.attempt(AttemptOutcome::ConnectFailure);
        tracing::debug!(
            cluster = %cluster.name,
            %address,
            attempt,
            %error,
            "TCP proxy: connect failed"
        );
        if !tried.contains(&address) {
            tried.push(address);
        }
    }
    None
}

/// A connected upstream, with what it holds while open: its pick (least request counts it
/// as active) and its slot under `max_connections`.
struct Upstream {
    stream: TcpStream,
    picked: Picked,
    _slot: ConnectionSlot,
}

/// An endpoint from `pick` that is not in `tried`, if one of a few picks offers it; else
/// the last one picked.
fn pick_untried(tried: &[SocketAddr], pick: impl Fn() -> Option<Picked>) -> Option<Picked> {
    let mut fallback = None;
    for _ in 0..PICKS_PER_ATTEMPT {
        let picked = pick()?;
        if !tried.contains(&picked.address) {
            return Some(picked);
        }
        fallback = Some(picked);
    }
    fallback
}

/// The downstream side of a relay: counts bytes each way and records activity (every byte
/// of the relay passes through it, in one direction or the other).
struct Metered<S> {
    inner: S,
    activity: Arc<Activity>,
    rx: Counter,
    tx: Counter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.rx.increment(n as u64);
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll
            && n > 0
        {
            self.tx.increment(n as u64);
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
