//! Upstream connection pools, one per cluster and transport socket in each worker. An
//! HTTP/1 request with no body takes the path of [`h1`], driven by the request's own task,
//! over plaintext or over TLS that does not offer `h2`; every other request goes over
//! hyper's connection API (`hyper::client::conn`).
//! A cluster whose endpoints use different transport sockets (`transport_socket_matches`)
//! has one pool per socket, so TLS and plaintext connections to an endpoint are never
//! mixed.
//!
//! Why not hyper-util's pooled client: it spawns a task and a channel per HTTP/1 request to
//! put the connection back, builds a URI and a pool key per request, and locks a pool shared
//! by every worker. Here each worker keeps its own idle connections per endpoint; the only
//! task is the one driving each connection, and a connection goes back to its pool when the
//! response body that used it ends ([`Lease`]).
//!
//! That task polls its connection also while a request holds it. Polling a hyper HTTP/1
//! connection from the request's own task instead saves one task poll per request, and was
//! measured and not kept: hyper's client still passes the request and the response through
//! its channels, whose wake-ups then poll the request's task again, and the instructions
//! per request rose by 3% (loadtest/proxy-bench-log.md, thirteenth session). Without hyper's
//! client for requests with no body, as [`h1`] does, they fell by 22% (fourteenth session).
//!
//! The two paths share each endpoint's connection slots (`max_connections`): a request
//! waiting for a slot takes a connection of its own path handed back meanwhile, or closes
//! an idle connection of the other path to free one.
//!
//! - HTTP/1: idle connections are reused newest first. A new one is opened under the
//!   cluster's `max_pending_requests` (while it is set up) and `max_connections` (for as long
//!   as it is open); a request waiting for a connection slot takes a connection handed back
//!   meanwhile instead. A request that an idle connection refused unsent (it had just closed)
//!   is sent again on another.
//! - HTTP/2: one connection per endpoint carries every request; a TLS connection that
//!   negotiates `h2` by ALPN is used the same way even in an HTTP/1 cluster.
//! - A connection with nothing in flight for [`IDLE_TIMEOUT`] is closed, by the one timer of
//!   its task.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use switchboard_proxy_xds::Snapshot;
use switchboard_proxy_xds::config::Secret;
use switchboard_proxy_xds::config::cluster::{Cluster, TransportChoice, UpstreamProtocol};
use switchboard_proxy_xds::config::tls::UpstreamTls;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::FastHash;
use super::breakers::{Overflow, Threshold};
use super::h1;
use super::registry::ClusterRegistry;
use super::state::{ClusterState, ConnectionSlot};
use super::transport::{CountedIo, Stream, TlsSetup};
use super::upstream_body::UpstreamBody;
use crate::body::Body;
use crate::coalesce::{FlushingExec, coalesce};
use crate::gate::Gate;
use crate::tls::{same_secrets, secrets_in_use};

/// How long an upstream connection may sit with nothing in flight before it is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times a request that a pooled connection handed back unsent is sent again.
const UNSENT_TRIES: usize = 3;

/// Connection pools of one worker, by cluster name, then transport socket.
#[derive(Default)]
pub(crate) struct ConnectionPools {
    pools: Mutex<HashMap<String, OfCluster, FastHash>>,
}

/// The pools of one cluster, by transport socket.
type OfCluster = Vec<(TransportChoice, Arc<Pool>)>;

impl ConnectionPools {
    /// The pool of `cluster` for endpoints using transport socket `choice`, and through it
    /// ([`Pool::state`]) the cluster's state shared by every worker.
    ///
    /// A pool already found current for `snapshot`'s generation is returned from this
    /// worker's own map, so finding the cluster's state takes no lock that other workers
    /// take too. Otherwise the state comes from `registry` (one lock shared by all workers),
    /// the circuit breakers take the cluster's limits, and [`Self::pool`] checks the pool;
    /// that happens once per worker, cluster and snapshot.
    pub(crate) fn pool_in(
        &self,
        cluster: &Cluster,
        choice: TransportChoice,
        registry: &ClusterRegistry,
        snapshot: &Snapshot,
    ) -> Arc<Pool> {
        {
            let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
            let current = find(&pools, cluster, choice)
                .filter(|p| p.checked_generation.load(Ordering::Relaxed) == snapshot.generation);
            if let Some(p) = current {
                return p.clone();
            }
        }
        let state = registry.cluster_in(&cluster.name, snapshot);
        state.breakers.configure(&cluster.circuit_breakers);
        self.pool(cluster, choice, &state, snapshot)
    }

    /// The pool of `cluster` for endpoints using transport socket `choice`; a new one when
    /// its protocol, connect timeout, TLS configuration or secrets changed (open connections
    /// of the old one finish what they carry), or its state was replaced. Pools of clusters
    /// gone from `snapshot` are dropped then. A pool found current is marked so for
    /// `snapshot`'s generation, which [`Self::pool_in`] then returns without this check.
    fn pool(
        &self,
        cluster: &Cluster,
        choice: TransportChoice,
        state: &Arc<ClusterState>,
        snapshot: &Snapshot,
    ) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let found = find(&pools, cluster, choice).filter(|p| Arc::ptr_eq(&p.state, state));
        if let Some(p) = found
            && p.http2 == (cluster.protocol == UpstreamProtocol::Http2)
            && p.connect_timeout == cluster.connect_timeout
            && same_tls(
                p.tls_key.as_ref(),
                tls_key(cluster, choice, snapshot).as_ref(),
            )
        {
            p.checked_generation
                .store(snapshot.generation, Ordering::Relaxed);
            return p.clone();
        }
        pools.retain(|name, _| snapshot.clusters.contains_key(name));
        let pool = Arc::new(Pool::new(cluster, choice, state, snapshot));
        let of_cluster = pools.entry(cluster.name.clone()).or_default();
        of_cluster.retain(|(c, _)| *c != choice);
        of_cluster.push((choice, pool.clone()));
        pool
    }
}

/// The pool of `cluster` for transport socket `choice` in one worker's map, current or not.
fn find<'p>(
    pools: &'p HashMap<String, OfCluster, FastHash>,
    cluster: &Cluster,
    choice: TransportChoice,
) -> Option<&'p Arc<Pool>> {
    pools
        .get(cluster.name.as_str())
        .and_then(|ps| ps.iter().find(|(c, _)| *c == choice))
        .map(|(_, p)| p)
}

type TlsKey = (UpstreamTls, Vec<Option<Arc<Secret>>>);

fn tls_key(cluster: &Cluster, choice: TransportChoice, snapshot: &Snapshot) -> Option<TlsKey> {
    cluster.tls_of(choice).map(|t| {
        let secrets = secrets_in_use(&t.secret_names(), &snapshot.secrets);
        (t.clone(), secrets)
    })
}

fn same_tls(a: Option<&TlsKey>, b: Option<&TlsKey>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some((ca, sa)), Some((cb, sb))) => ca == cb && same_secrets(sa, sb),
        _ => false,
    }
}

/// Why a request could not be sent, or got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// A circuit breaker refused a new connection.
    Overflow(Threshold),
    /// No connection could be opened (TCP, TLS or the HTTP/2 handshake).
    Connect(String),
    /// The connection failed after the request was handed to it.
    Reset(String),
}

/// The connections of one cluster and transport socket, by endpoint.
pub(crate) struct Pool {
    http2: bool,
    /// Requests with no body take the [`h1`] path: HTTP/1, and TLS (if any) does not offer
    /// `h2`, which the server could pick and which only hyper's client speaks.
    direct: bool,
    connect_timeout: Duration,
    state: Arc<ClusterState>,
    tls_key: Option<TlsKey>,
    tls: Option<Arc<TlsSetup>>,
    checked_generation: AtomicU64,
    hosts: Mutex<HashMap<SocketAddr, Arc<Host>, FastHash>>,
}

/// The connections to one endpoint.
struct Host {
    /// Idle connections of the HTTP/1 path driven by the request's task ([`h1`]).
    direct_idle: Arc<h1::Idle>,
    /// The breakers' key for the endpoint.
    endpoint: String,
    authority: Authority,
    host_header: HeaderValue,
    /// HTTP/1 connections with nothing in flight, newest last.
    idle: Mutex<Vec<(http1::SendRequest<Body>, Arc<InUse>)>>,
    /// Wakes a request waiting for a connection slot when a connection of either path is
    /// handed back.
    returned: Arc<Notify>,
    /// The endpoint's HTTP/2 connection, when it has one.
    h2: Mutex<Option<(http2::SendRequest<Body>, Arc<InUse>)>>,
    /// Held while an HTTP/2 connection is being opened, so that requests arriving meanwhile
    /// wait for it rather than open one each.
    h2_connecting: tokio::sync::Mutex<()>,
}

/// What a connection's task needs to tell it is idle: requests in flight, and since when
/// there have been none (milliseconds after `start`).
struct InUse {
    start: Instant,
    active: AtomicUsize,
    idle_since_ms: AtomicU64,
}

impl InUse {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    fn begin(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.idle_since_ms.store(ms, Ordering::Release);
        }
    }

    /// When the connection will have been idle for `timeout`, if nothing starts before.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.active.load(Ordering::Acquire) > 0 {
            return Instant::now() + timeout;
        }
        self.start + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)) + timeout
    }
}

/// A connection of hyper's client lent to one request until its response ends.
/// [`Lease::finish`] (the response body ended) hands an HTTP/1 connection back to its pool;
/// a lease dropped unfinished drops its HTTP/1 connection, which closes it. Empty for the
/// [`h1`] path, whose response body holds its connection itself.
pub(crate) struct Lease {
    in_use: Option<Arc<InUse>>,
    h1: Option<(http1::SendRequest<Body>, Arc<Host>)>,
}

impl Lease {
    /// A request starts on the connection `in_use` tracks.
    fn begin(in_use: Arc<InUse>) -> Self {
        in_use.begin();
        Self {
            in_use: Some(in_use),
            h1: None,
        }
    }

    fn none() -> Self {
        Self {
            in_use: None,
            h1: None,
        }
    }

    /// The response ended: an HTTP/1 connection can carry the next request once its task
    /// has caught up (see [`Host::idle_ready`]).
    pub(crate) fn finish(mut self) {
        if let Some((sender, host)) = self.h1.take()
            && let Some(in_use) = &self.in_use
            && !sender.is_closed()
        {
            host.hand_back(sender, in_use.clone());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(in_use) = &self.in_use {
            in_use.end();
        }
    }
}

/// A connection checked out for one request.
enum Checked {
    H1(http1::SendRequest<Body>, Arc<InUse>),
    H2(http2::SendRequest<Body>, Arc<InUse>),
}

impl Pool {
    /// The state of the pool's cluster, shared by every worker.
    pub(crate) fn state(&self) -> &Arc<ClusterState> {
        &self.state
    }

    fn new(
        cluster: &Cluster,
        choice: TransportChoice,
        state: &Arc<ClusterState>,
        snapshot: &Snapshot,
    ) -> Self {
        let tls_key = tls_key(cluster, choice, snapshot);
        let tls = tls_key
            .as_ref()
            .map(|(config, _)| Arc::new(TlsSetup::new(config.clone(), snapshot.secrets.clone())));
        let http2 = cluster.protocol == UpstreamProtocol::Http2;
        let offers_h2 = tls_key
            .as_ref()
            .is_some_and(|(config, _)| config.alpn_protocols.iter().any(|p| p == "h2"));
        Self {
            http2,
            direct: !http2 && !offers_h2,
            connect_timeout: cluster.connect_timeout,
            state: state.clone(),
            tls_key,
            tls,
            checked_generation: AtomicU64::new(snapshot.generation),
            hosts: Mutex::new(HashMap::default()),
        }
    }

    fn host(&self, addr: SocketAddr) -> Option<Arc<Host>> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = hosts.get(&addr) {
            return Some(h.clone());
        }
        let endpoint = addr.to_string();
        let returned = Arc::new(Notify::new());
        let host = Arc::new(Host {
            authority: Authority::try_from(endpoint.as_str()).ok()?,
            host_header: HeaderValue::from_str(&endpoint).ok()?,
            endpoint,
            idle: Mutex::new(Vec::new()),
            direct_idle: Arc::new(h1::Idle::new(IDLE_TIMEOUT, returned.clone())),
            returned,
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
        });
        // Endpoints come and go with EDS: forget those with nothing pooled.
        hosts.retain(|_, h| Arc::strong_count(h) > 1 || h.has_connections());
        hosts.insert(addr, host.clone());
        Some(host)
    }

    /// Sends `req` (origin-form URI) to `addr` on a pooled or new connection; the response
    /// comes with the [`Lease`] of its connection, to be finished when its body ends.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<(Response<UpstreamBody>, Lease), SendError> {
        let Some(host) = self.host(addr) else {
            return Err(SendError::Connect(format!(
                "{addr} is not a valid authority"
            )));
        };
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if self.direct && h1::eligible(&req) {
            return self.send_direct(&host, req, &path).await;
        }
        for _ in 0..UNSENT_TRIES {
            let (sent, lease) = match self.checkout(&host).await? {
                Checked::H1(mut sender, in_use) => {
                    let mut lease = Lease::begin(in_use);
                    *req.version_mut() = Version::HTTP_11;
                    *req.uri_mut() = Uri::from(path.clone());
                    req.headers_mut()
                        .entry(http::header::HOST)
                        .or_insert_with(|| host.host_header.clone());
                    let sent = sender.try_send_request(req).await;
                    lease.h1 = Some((sender, host.clone()));
                    (sent, lease)
                }
                Checked::H2(mut sender, in_use) => {
                    let lease = Lease::begin(in_use);
                    *req.version_mut() = Version::HTTP_2;
                    *req.uri_mut() = self.absolute(&host, &path);
                    (sender.try_send_request(req).await, lease)
                }
            };
            match sent {
                Ok(resp) => return Ok((resp.map(UpstreamBody::hyper), lease)),
                // Refused before a byte was written (the connection had just closed): the
                // request comes back, to go on another connection.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Reset(error_chain(&e.into_error()))),
                },
            }
        }
        Err(SendError::Reset(
            "connections to the endpoint kept closing before the request was sent".to_owned(),
        ))
    }

    /// [`Pool::send`] on the HTTP/1 path driven by the request's task ([`h1`]): an idle
    /// connection still open, or a new one. A request whose idle connection turned out to
    /// have closed before answering is sent again on another when it is idempotent.
    async fn send_direct(
        &self,
        host: &Arc<Host>,
        req: Request<Body>,
        path: &PathAndQuery,
    ) -> Result<(Response<UpstreamBody>, Lease), SendError> {
        for _ in 0..UNSENT_TRIES {
            let (mut conn, reused) = match host.direct_idle.take() {
                Some(conn) => (conn, true),
                None => Box::pin(self.connect_direct(host)).await?,
            };
            match conn.exchange(&req, path, &host.host_header).await {
                Ok(head) => {
                    let body = h1::ResponseBody::new(conn, &head, host.direct_idle.clone());
                    // The body hands its connection back itself.
                    let lease = Lease::none();
                    return Ok((
                        Response::from_parts(head.parts, UpstreamBody::direct(body)),
                        lease,
                    ));
                }
                Err(h1::Failure::Unanswered(_)) if reused && h1::idempotent(req.method()) => {}
                Err(h1::Failure::Unanswered(e) | h1::Failure::Failed(e)) => {
                    return Err(SendError::Reset(e));
                }
            }
        }
        Err(SendError::Reset(
            "connections to the endpoint kept closing before the request was answered".to_owned(),
        ))
    }

    /// [`Pool::connect`] for the [`h1`] path: waits for a connection slot (or takes a
    /// connection handed back meanwhile, then `true`) and opens a connection
    /// ([`Self::stream`]; its TLS, if any, offered no `h2`).
    async fn connect_direct(&self, host: &Arc<Host>) -> Result<(h1::Conn, bool), SendError> {
        let _pending = self
            .state
            .begin_pending()
            .map_err(|o| SendError::Overflow(o.0))?;
        let idle = || std::future::ready(host.direct_idle.take());
        // No slot free: an idle connection of hyper's path gives its slot up.
        let free = || host.close_oldest_idle();
        match self.slot_or_returned(host, idle, free).await? {
            SlotOr::Returned(c) => Ok((c, true)),
            SlotOr::Slot(slot) => {
                let (stream, _) = self.stream(host).await?;
                Ok((h1::Conn::new(stream, slot), false))
            }
        }
    }

    fn absolute(&self, host: &Host, path: &PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if self.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        parts.authority = Some(host.authority.clone());
        parts.path_and_query = Some(path.clone());
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from(path.clone()))
    }

    /// A connection to `host`: its HTTP/2 one, an idle HTTP/1 one, or a new one.
    ///
    /// The common case (a connection is there) stays inline; waiting for a slot and
    /// opening a connection are boxed. A future holds room for its largest await, and
    /// every request's future moves through hyper's dispatcher and each caller's frame, so
    /// the rare connect path would otherwise add its 1.4 kB to every request's copies.
    async fn checkout(&self, host: &Arc<Host>) -> Result<Checked, SendError> {
        if let Some(c) = host.h2_open() {
            return Ok(c);
        }
        if !self.http2
            && let Some(c) = host.idle_ready().await
        {
            return Ok(c);
        }
        Box::pin(self.connect(host)).await
    }

    /// [`Pool::checkout`] when no connection is ready: waits for a connection slot (or a
    /// connection handed back meanwhile) and opens a connection.
    async fn connect(&self, host: &Arc<Host>) -> Result<Checked, SendError> {
        if self.http2 {
            // Waiting for another request's connection is pending too.
            let _pending = self
                .state
                .begin_pending()
                .map_err(|o| SendError::Overflow(o.0))?;
            let _connecting = host.h2_connecting.lock().await;
            if let Some(c) = host.h2_open() {
                return Ok(c);
            }
            let slot = self
                .state
                .connection_slot(host.endpoint.clone(), self.connect_timeout)
                .await
                .map_err(|o| SendError::Overflow(o.0))?;
            return self.open(host, slot).await;
        }
        let _pending = self
            .state
            .begin_pending()
            .map_err(|o| SendError::Overflow(o.0))?;
        let idle = || host.idle_ready();
        // No slot free: an idle connection of the [`h1`] path gives its slot up.
        let free = || host.direct_idle.close_oldest();
        match self.slot_or_returned(host, idle, free).await? {
            SlotOr::Returned(c) => Ok(c),
            SlotOr::Slot(slot) => self.open(host, slot).await,
        }
    }

    /// Waits for a connection slot to `host` under `max_connections`, or for a connection
    /// that `idle` finds handed back meanwhile. While no slot is free, `free` closes an idle
    /// connection of the other path (each path keeps its own idle list, and both take
    /// slots).
    async fn slot_or_returned<C, F>(
        &self,
        host: &Host,
        idle: impl Fn() -> F,
        free: impl Fn(),
    ) -> Result<SlotOr<C>, SendError>
    where
        F: Future<Output = Option<C>>,
    {
        let overflow = |o: Overflow| SendError::Overflow(o.0);
        let mut slot = pin!(
            self.state
                .connection_slot(host.endpoint.clone(), self.connect_timeout)
        );
        loop {
            let mut returned = pin!(host.returned.notified());
            returned.as_mut().enable();
            if let Some(c) = idle().await {
                return Ok(SlotOr::Returned(c));
            }
            if let Poll::Ready(slot) = poll_once(slot.as_mut()).await {
                return slot.map(SlotOr::Slot).map_err(overflow);
            }
            free();
            tokio::select! {
                slot = &mut slot => return slot.map(SlotOr::Slot).map_err(overflow),
                () = returned => {}
            }
        }
    }

    /// A TCP connection to `host`, within the connect timeout, with `TCP_NODELAY`.
    async fn tcp(&self, host: &Host) -> Result<TcpStream, SendError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(host.endpoint.as_str()),
        )
        .await
        .map_err(|_| SendError::Connect("tcp connect error: timed out".to_owned()))?
        .map_err(|e| SendError::Connect(format!("tcp connect error: {e}")))?;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY upstream");
        }
        Ok(tcp)
    }

    /// A connection to `host`: TCP, then TLS when the pool's transport socket says so, and
    /// whether TLS negotiated `h2` by ALPN.
    async fn stream(&self, host: &Host) -> Result<(Stream, bool), SendError> {
        let tcp = self.tcp(host).await?;
        match &self.tls {
            None => Ok((Stream::Plain(tcp), false)),
            Some(tls) => tls
                .handshake(tcp, &host.endpoint, self.connect_timeout)
                .await
                .map_err(SendError::Connect),
        }
    }

    /// Opens a connection to `host` ([`Self::stream`], then the HTTP handshake) and spawns
    /// the task that drives it.
    async fn open(&self, host: &Arc<Host>, slot: ConnectionSlot) -> Result<Checked, SendError> {
        let (stream, alpn_h2) = self.stream(host).await?;
        let io = TokioIo::new(stream);
        let io = CountedIo { io, _slot: slot };
        let in_use = InUse::new();
        if self.http2 || alpn_h2 {
            let (io, flusher) = coalesce(io);
            let (sender, conn) = http2::handshake(FlushingExec::new(flusher), io)
                .await
                .map_err(|e| SendError::Connect(error_chain(&e)))?;
            spawn_connection(conn, in_use.clone());
            *host.h2.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((sender.clone(), in_use.clone()));
            Ok(Checked::H2(sender, in_use))
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| SendError::Connect(error_chain(&e)))?;
            spawn_connection(conn, in_use.clone());
            Ok(Checked::H1(sender, in_use))
        }
    }
}

impl Host {
    /// An idle HTTP/1 connection, ready for the next request, back in the pool.
    fn hand_back(&self, sender: http1::SendRequest<Body>, in_use: Arc<InUse>) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((sender, in_use));
        self.returned.notify_one();
    }

    /// Closes the oldest idle HTTP/1 connection of hyper's path, if any, freeing its slot
    /// once its task ends.
    fn close_oldest_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if !idle.is_empty() {
            drop(idle.remove(0));
        }
    }

    fn h2_open(&self) -> Option<Checked> {
        let h2 = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        match &*h2 {
            Some((sender, in_use)) if !sender.is_closed() => {
                Some(Checked::H2(sender.clone(), in_use.clone()))
            }
            _ => None,
        }
    }

    /// The newest idle HTTP/1 connection that is open and ready. One handed back as its
    /// response ended is usually ready once its task has run once more (the task delivered
    /// the body's end before it could take the next request), so a connection not ready is
    /// given that one turn; one still not ready (still sending the body of a request its
    /// upstream answered early) is set aside, not waited on.
    async fn idle_ready(&self) -> Option<Checked> {
        let mut set_aside = Vec::new();
        let found = loop {
            let popped = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some((sender, in_use)) = popped else {
                break None;
            };
            if sender.is_closed() {
                continue;
            }
            if !sender.is_ready() {
                tokio::task::yield_now().await;
            }
            if sender.is_ready() {
                break Some(Checked::H1(sender, in_use));
            }
            if !sender.is_closed() {
                set_aside.push((sender, in_use));
            }
        };
        if !set_aside.is_empty() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            // Under the newer ones, so that the next request tries those first.
            set_aside.extend(idle.drain(..));
            *idle = set_aside;
        }
        found
    }

    fn has_connections(&self) -> bool {
        !self.direct_idle.is_empty()
            || !self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
            || self
                .h2
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|(s, _)| !s.is_closed())
    }
}

/// Drives one upstream connection until it ends, or has had nothing in flight for
/// [`IDLE_TIMEOUT`] (then it is dropped, which closes it).
fn spawn_connection<C>(conn: C, in_use: Arc<InUse>)
where
    C: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conn = pin!(conn);
        let mut idle = pin!(tokio::time::sleep_until(in_use.idle_deadline(IDLE_TIMEOUT)));
        // The connection is polled on every wake-up (about three per request); the idle
        // timer only when it fired (see `Gate`).
        let gate = Gate::new();
        poll_fn(|cx| {
            if let Poll::Ready(done) = conn.as_mut().poll(cx) {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
                return Poll::Ready(());
            }
            while gate.poll(cx, |cx| idle.as_mut().poll(cx)).is_ready() {
                // Recomputed: a request may have come and gone while this slept.
                let deadline = in_use.idle_deadline(IDLE_TIMEOUT);
                if deadline <= Instant::now() {
                    tracing::debug!("closing an idle upstream connection");
                    return Poll::Ready(());
                }
                idle.as_mut().reset(deadline);
                // The timer, reset, has registered nothing yet.
                gate.open();
            }
            Poll::Pending
        })
        .await;
    });
}

/// What [`Pool::slot_or_returned`] got: a slot to open a connection under, or a
/// connection handed back.
enum SlotOr<C> {
    Slot(ConnectionSlot),
    Returned(C),
}

/// Polls `f` once: its output if ready.
async fn poll_once<F: Future>(mut f: Pin<&mut F>) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
}

/// An error and its sources on one line: hyper's top-level messages alone are too vague.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
