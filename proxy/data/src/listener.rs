//! One bound listener: the accept loop, per-connection dispatch (HTTP or TCP proxy, either
//! behind TLS), connection metrics, and draining. It sits on top of the data path: it hands
//! HTTP requests to [`crate::http`] and TCP connections to [`crate::tcp`], which share the
//! process's [`ClusterManager`].
//!
//! Each accepted connection reads the listener (by name) from the [`ConfigStore`] snapshot
//! current at accept time, so a new filter chain applies to the next connection while open
//! ones keep theirs; HTTP requests still read the snapshot per request. A listener missing
//! from the snapshot is served as HTTP, whose requests are answered 503, rather than
//! refusing connections.
//!
//! - `http_conn`: one HTTP connection (protocol choice, hyper's server under the listener's
//!   limits and timeouts, graceful shutdown).
//! - `limit`: the process's cap on open downstream connections ([`ConnectionLimit`]), checked
//!   at accept.
//!
//! Draining ([`run`]'s `drain` token cancelled): the socket is closed at once so the port is
//! free; HTTP/1 connections finish their in-flight request and close, HTTP/2 connections
//! get a GOAWAY and finish their open streams, TCP-proxied connections go on. At
//! `drain_timeout` whatever is left is closed, and [`run`] returns when every connection is
//! gone.

mod http_conn;
mod limit;

use http_conn::Downstream;
pub use limit::ConnectionLimit;

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use switchboard_proxy_xds::config::Secret;
use switchboard_proxy_xds::config::listener::{
    DownstreamTls, HttpLimits, Listener, ListenerKind, TcpProxy,
};
use switchboard_proxy_xds::config::rbac::NetworkRbac;
use switchboard_proxy_xds::{ConfigStore, Snapshot};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cluster::ClusterManager;
use crate::http::HttpHandler;
use crate::rbac::{self, Subject};
use crate::telemetry::{
    DownstreamAddrs, LISTENER_ACTIVE_CONNECTIONS, LISTENER_CONNECTIONS_OVERFLOW_TOTAL,
    LISTENER_CONNECTIONS_TOTAL, RBAC_DENIED_TOTAL,
};
use crate::tls::PeerIdentity;

/// A listener's socket stopped accepting connections with an error that is not transient
/// (see [`run`]); the only way serving a listener fails.
#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?}: accepting connections failed: {error}")]
pub struct AcceptError {
    pub listener: String,
    pub error: io::Error,
}

/// Serves the listener named `listener` (looked up in the snapshot per connection, and per
/// request for HTTP) on `tcp` until the task is dropped or aborted; it never drains (the
/// proxy binary uses [`run`], which does). Upstream state (cluster state and pools) is the
/// process's `clusters`, shared with every other listener.
///
/// The socket is the caller's, so the caller decides when to bind; a listener missing from
/// the snapshot answers 503 rather than closing connections.
pub async fn serve(
    tcp: TcpListener,
    listener: impl Into<String>,
    store: ConfigStore,
    clusters: Arc<ClusterManager>,
) -> Result<(), AcceptError> {
    let ctx = Ctx::new(
        listener.into(),
        store,
        clusters,
        ConnectionLimit::unlimited(),
    );
    // A drain token nobody cancels.
    serve_until(tcp, ctx, CancellationToken::new(), Duration::ZERO).await
}

/// Serves the LDS listener `name` on `tcp` until `drain` is cancelled, then drains: see the module documentation. Returns once every connection is
/// closed, at most about `drain_timeout` after the drain started.
///
/// Upstream state (cluster state and pools) is the process's `clusters`, shared with every
/// other listener, and so is `limit`, the cap on open downstream connections: one over it is
/// closed as soon as it is accepted. An accept error that is not transient (an
/// [`AcceptError`]) is logged and starts the drain as well.
pub async fn run(
    tcp: TcpListener,
    name: String,
    store: ConfigStore,
    clusters: Arc<ClusterManager>,
    limit: ConnectionLimit,
    drain: CancellationToken,
    drain_timeout: Duration,
) {
    let ctx = Ctx::new(name, store, clusters, limit);
    if let Err(e) = serve_until(tcp, ctx, drain, drain_timeout).await {
        tracing::error!(error = %e, "the listener stopped accepting connections");
    }
}

/// [`run`], returning a fatal accept error after the drain (for [`serve`]).
async fn serve_until(
    tcp: TcpListener,
    ctx: Arc<Ctx>,
    drain: CancellationToken,
    drain_timeout: Duration,
) -> Result<(), AcceptError> {
    // Connections follow these rather than `drain`, so that an accept error drains too.
    let conn_drain = CancellationToken::new();
    let kill = CancellationToken::new();
    let mut conns = JoinSet::new();
    let result = accept_loop(&tcp, &ctx, &mut conns, &drain, &conn_drain, &kill).await;
    // Closing the socket first frees the port for a listener that replaces this one.
    drop(tcp);
    conn_drain.cancel();
    if !conns.is_empty() {
        tracing::info!(
            listener = %ctx.name,
            connections = conns.len(),
            ?drain_timeout,
            "draining"
        );
    }
    let deadline = tokio::time::sleep(drain_timeout);
    let mut deadline = pin!(deadline);
    loop {
        tokio::select! {
            next = conns.join_next() => match next {
                Some(done) => log_join(done),
                None => break,
            },
            () = &mut deadline => {
                tracing::info!(
                    listener = %ctx.name,
                    connections = conns.len(),
                    "drain timeout; closing the remaining connections"
                );
                kill.cancel();
                conns.shutdown().await;
                break;
            }
        }
    }
    result
}

/// What every connection of one listener shares.
struct Ctx {
    name: String,
    store: ConfigStore,
    clusters: Arc<ClusterManager>,
    http: Arc<HttpHandler>,
    limit: ConnectionLimit,
    /// The TLS acceptor of the last TLS configuration seen (or why it is unusable), rebuilt
    /// when the listener's TLS configuration or one of its SDS secrets changes: new
    /// handshakes use the new certificate, open connections keep theirs.
    tls: tokio::sync::Mutex<Option<CachedAcceptor>>,
}

struct CachedAcceptor {
    config: DownstreamTls,
    secrets: Vec<Option<Arc<Secret>>>,
    acceptor: Result<Acceptor, String>,
}

/// A built TLS acceptor and the URI SAN of the certificate it presents (XFCC's `By`).
#[derive(Clone)]
struct Acceptor {
    tls: TlsAcceptor,
    local_uri: Option<Arc<str>>,
}

impl Ctx {
    fn new(
        name: String,
        store: ConfigStore,
        clusters: Arc<ClusterManager>,
        limit: ConnectionLimit,
    ) -> Arc<Self> {
        Arc::new(Ctx {
            http: Arc::new(HttpHandler::new(
                name.clone(),
                store.clone(),
                clusters.clone(),
            )),
            name,
            store,
            clusters,
            limit,
            tls: tokio::sync::Mutex::new(None),
        })
    }

    async fn acceptor(&self, tls: &DownstreamTls, snapshot: &Snapshot) -> Option<Acceptor> {
        let secrets = crate::tls::secrets_in_use(&tls.secret_names(), &snapshot.secrets);
        let mut cached = self.tls.lock().await;
        let stale = cached
            .as_ref()
            .is_none_or(|c| c.config != *tls || !crate::tls::same_secrets(&c.secrets, &secrets));
        if stale {
            let built = match crate::tls::server_config_with(tls, &snapshot.secrets).await {
                Ok(config) => Ok(Acceptor {
                    tls: TlsAcceptor::from(config),
                    local_uri: crate::tls::local_uri(tls, &snapshot.secrets)
                        .await
                        .map(Arc::from),
                }),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = &built {
                tracing::error!(
                    listener = %self.name,
                    error = %e,
                    "unusable TLS configuration; refusing connections until it changes"
                );
            }
            *cached = Some(CachedAcceptor {
                config: tls.clone(),
                secrets,
                acceptor: built,
            });
        }
        cached
            .as_ref()
            .and_then(|c| c.acceptor.as_ref().ok().cloned())
    }
}

async fn accept_loop(
    tcp: &TcpListener,
    ctx: &Arc<Ctx>,
    conns: &mut JoinSet<()>,
    drain: &CancellationToken,
    conn_drain: &CancellationToken,
    kill: &CancellationToken,
) -> Result<(), AcceptError> {
    loop {
        tokio::select! {
            biased;
            () = drain.cancelled() => return Ok(()),
            Some(done) = conns.join_next(), if !conns.is_empty() => log_join(done),
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => match ctx.limit.try_acquire() {
                    Some(permit) => {
                        spawn_connection(conns, ctx, stream, peer, permit, conn_drain, kill);
                    }
                    None => refuse_over_limit(ctx, stream, peer),
                },
                Err(e) if is_transient(&e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed; retrying");
                    tokio::select! {
                        () = drain.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                Err(e) => {
                    return Err(AcceptError {
                        listener: ctx.name.clone(),
                        error: e,
                    });
                }
            },
        }
    }
}

fn spawn_connection(
    conns: &mut JoinSet<()>,
    ctx: &Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: limit::Permit,
    conn_drain: &CancellationToken,
    kill: &CancellationToken,
) {
    metrics::counter!(LISTENER_CONNECTIONS_TOTAL, "listener" => ctx.name.clone()).increment(1);
    let open = OpenConnection::new(&ctx.name);
    let ctx = ctx.clone();
    let drain = conn_drain.clone();
    let kill = kill.clone();
    let span = tracing::debug_span!("connection", listener = %ctx.name, %peer);
    conns.spawn(
        async move {
            let _open = open;
            let _permit = permit;
            connection(stream, &ctx, drain, kill).await;
        }
        .instrument(span),
    );
}

/// Closes a connection accepted over the process's cap: counted, and logged at most once a
/// second so that a flood does not flood the log.
fn refuse_over_limit(ctx: &Ctx, stream: TcpStream, peer: SocketAddr) {
    drop(stream);
    metrics::counter!(LISTENER_CONNECTIONS_OVERFLOW_TOTAL, "listener" => ctx.name.clone())
        .increment(1);
    if ctx.limit.should_warn() {
        tracing::warn!(
            listener = %ctx.name,
            %peer,
            max = ctx.limit.max(),
            "downstream connection limit reached; closing new connections"
        );
    } else {
        tracing::debug!(listener = %ctx.name, %peer, "over the connection limit; closed");
    }
}

/// The active-connections gauge, decremented however the connection task ends.
struct OpenConnection(metrics::Gauge);

impl OpenConnection {
    fn new(listener: &str) -> Self {
        let gauge = metrics::gauge!(LISTENER_ACTIVE_CONNECTIONS, "listener" => listener.to_owned());
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "a connection task panicked");
    }
}

fn is_transient(e: &io::Error) -> bool {
    use std::io::ErrorKind as K;
    !matches!(
        e.kind(),
        K::InvalidInput | K::Unsupported | K::PermissionDenied
    )
}

/// What a connection does, decided from the snapshot at accept time. HTTP connections keep
/// only their limits (requests read the snapshot of their own time), so a long-lived
/// connection does not hold old configuration alive.
enum Mode {
    Http(HttpLimits),
    /// The snapshot resolves the cluster and its endpoints when connecting.
    Tcp(TcpProxy, Arc<Snapshot>),
}

async fn connection(
    stream: TcpStream,
    ctx: &Ctx,
    drain: CancellationToken,
    kill: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // For access logs (%DOWNSTREAM_*%) and source-IP hashing.
    let addrs = match (stream.peer_addr(), stream.local_addr()) {
        (Ok(remote), Ok(local)) => Some(DownstreamAddrs { remote, local }),
        _ => None,
    };
    let snapshot = ctx.store.snapshot();
    let listener = snapshot.listeners.get(&ctx.name).cloned();
    // Permissive mode: the first byte tells a TLS ClientHello (a handshake record) from
    // plaintext, as Envoy's TLS inspector does.
    let plaintext = match listener.as_deref() {
        Some(Listener {
            plaintext: Some(p),
            tls: Some(tls),
            ..
        }) => {
            let peeked = tokio::select! {
                p = tokio::time::timeout(tls.handshake_timeout, starts_tls(&stream)) => p,
                () = kill.cancelled() => return,
            };
            match peeked {
                Ok(Ok(true)) => None,
                Ok(Ok(false)) => Some(p),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "reading the first byte failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("no first byte in time; closing");
                    return;
                }
            }
        }
        _ => None,
    };
    let kind = plaintext
        .map(|p| &p.kind)
        .or(listener.as_deref().map(|l| &l.kind));
    // The chosen chain's RBAC network filters, run once the peer is known.
    let rbac: Vec<NetworkRbac> = match (plaintext, listener.as_deref()) {
        (Some(p), _) => p.network_rbac.clone(),
        (None, Some(l)) => l.network_rbac.clone(),
        (None, None) => Vec::new(),
    };
    let mode = match kind {
        Some(ListenerKind::Tcp(t)) => Mode::Tcp(t.clone(), snapshot.clone()),
        Some(ListenerKind::Http(h)) => Mode::Http(h.limits),
        None => Mode::Http(HttpLimits::default()),
    };
    let tls = match plaintext {
        Some(_) => None,
        None => listener.as_deref().and_then(|l| l.tls.clone()),
    };
    let Some(tls) = tls else {
        drop(snapshot);
        if network_denied(&rbac, None, addrs, ctx) {
            return;
        }
        let downstream = Downstream { addrs, peer: None };
        return dispatch(stream, None, downstream, mode, ctx, drain, kill).await;
    };
    let acceptor = ctx.acceptor(&tls, &snapshot).await;
    drop(snapshot);
    let Some(acceptor) = acceptor else {
        return;
    };
    // Boxed, as is the TLS connection's dispatch below: a connection's task is as large as
    // the largest state it can be in, and each idle plaintext HTTP/1 connection would
    // otherwise carry room for a TLS handshake and a TLS stream.
    let handshake = Box::pin(tokio::time::timeout(
        tls.handshake_timeout,
        acceptor.tls.accept(stream),
    ));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(timeout = ?tls.handshake_timeout, "TLS handshake timed out");
                return;
            }
        },
        () = kill.cancelled() => return,
    };
    drop(tls);
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let peer = PeerIdentity::of(stream.get_ref().1, acceptor.local_uri.as_deref()).map(Arc::new);
    if network_denied(&rbac, peer.as_deref(), addrs, ctx) {
        return;
    }
    let downstream = Downstream { addrs, peer };
    Box::pin(dispatch(stream, alpn, downstream, mode, ctx, drain, kill)).await;
}

/// Runs the accepting filter chain's RBAC network filters once the peer is known; a denied
/// connection is counted and logged, and the caller closes it.
fn network_denied(
    network_rbac: &[NetworkRbac],
    peer: Option<&PeerIdentity>,
    addrs: Option<DownstreamAddrs>,
    ctx: &Ctx,
) -> bool {
    if network_rbac.is_empty() {
        return false;
    }
    let subject = Subject {
        peer,
        destination_port: addrs.map(|a| a.local.port()),
        request: None,
    };
    let Some((stat_prefix, denied)) = rbac::check_network(network_rbac, &subject) else {
        return false;
    };
    metrics::counter!(
        RBAC_DENIED_TOTAL,
        "listener" => ctx.name.clone(),
        "filter" => "network",
        "policy" => denied.policy_name().to_owned(),
    )
    .increment(1);
    tracing::info!(
        stat_prefix,
        details = %denied.details(),
        peer = ?peer.map(|p| &p.uri_sans),
        "connection denied by RBAC; closing"
    );
    true
}

/// Whether the connection opens with a TLS handshake record (0x16), without consuming it.
async fn starts_tls(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    Ok(n == 1 && first[0] == 0x16)
}

/// Waits until listener `name` is warm: present in the snapshot with every SDS secret its
/// TLS context names. Until then it must not accept connections (Envoy's listener warming).
pub async fn warmed(store: &ConfigStore, name: &str) {
    let mut changes = store.changes();
    loop {
        if is_warm(&store.snapshot(), name) {
            return;
        }
        if changes.changed().await.is_err() {
            // The store is gone with the process; nothing will arrive.
            std::future::pending::<()>().await;
        }
    }
}

/// Whether listener `name` has every secret it needs in `snapshot`.
pub fn is_warm(snapshot: &Snapshot, name: &str) -> bool {
    snapshot.listeners.get(name).is_some_and(|l| {
        l.secret_names()
            .iter()
            .all(|s| snapshot.secrets.contains_key(*s))
    })
}

/// Serves an accepted connection as its filter chain says: a TCP relay, or HTTP.
///
/// An `async` block, not an `async fn`, for the reason [`http_conn::serve`] gives; the HTTP
/// limits are lent from `mode`, not moved into `serve`'s state beside it.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in every connection's task"
)]
fn dispatch<S>(
    io: S,
    alpn: Option<Vec<u8>>,
    downstream: Downstream,
    mode: Mode,
    ctx: &Ctx,
    drain: CancellationToken,
    kill: CancellationToken,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        match mode {
            // TCP connections are not cut by the drain, only at its deadline.
            // Boxed so that an HTTP connection's task has no room for a TCP relay.
            Mode::Tcp(t, snapshot) => tokio::select! {
                () = Box::pin(crate::tcp::relay(io, &ctx.name, &t, snapshot, &ctx.clusters.registry)) => {}
                () = kill.cancelled() => {}
            },
            Mode::Http(ref limits) => {
                http_conn::serve(io, alpn, downstream, limits, ctx.http.clone(), drain, kill).await;
            }
        }
    }
}
