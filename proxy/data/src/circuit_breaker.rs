//! Circuit breakers, per cluster, as Envoy's default-priority thresholds.
//!
//! - `max_requests`: upstream requests (attempts, retries included) in flight, from the
//!   moment an attempt starts until its response body ends.
//! - `max_retries`, or a `retry_budget` instead: retries in flight, from the decision to
//!   retry until the next decision or the end of the request (as Envoy counts them).
//! - `max_connections`: open upstream connections of the cluster, counted by
//!   [`CountingConnector`] as they open and close. At the limit a new connection waits (up
//!   to the connect timeout) for one to close, while hyper's pool may hand the request an
//!   idle connection in the meantime; a request that gets neither overflows. As in Envoy,
//!   an endpoint with no connection at all may always open one.
//! - `max_pending_requests`: **approximated.** hyper-util's pool does not say how many
//!   requests wait for a connection, so a request counts as pending while it waits for a
//!   connection *it asked the connector for* (connecting, or waiting for a connection slot
//!   under `max_connections`). Requests queued inside hyper's pool for an HTTP/2 connection
//!   that another request is opening are not counted.
//!
//! An overflow is answered locally with 503 and `x-envoy-overloaded: true` (retry overflows
//! instead pass the last upstream answer on) and counted, per threshold, in
//! `switchboard_proxy_circuit_breaker_overflows_total`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use switchboard_proxy_xds::config::cluster::CircuitBreakers;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::balancer::ClusterState;

/// Which threshold overflowed (the `threshold` label of the overflow counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Threshold {
    MaxRequests,
    MaxPendingRequests,
    MaxConnections,
    MaxRetries,
    RetryBudget,
}

impl Threshold {
    pub const ALL: [Threshold; 5] = [
        Threshold::MaxRequests,
        Threshold::MaxPendingRequests,
        Threshold::MaxConnections,
        Threshold::MaxRetries,
        Threshold::RetryBudget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Threshold::MaxRequests => "max_requests",
            Threshold::MaxPendingRequests => "max_pending_requests",
            Threshold::MaxConnections => "max_connections",
            Threshold::MaxRetries => "max_retries",
            Threshold::RetryBudget => "retry_budget",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection or pending slot refused by a circuit breaker; travels through hyper's
/// connect error so that the forward path can tell an overflow from a connect failure.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("circuit breaker {0} overflowed")]
pub struct Overflow(pub Threshold);

/// What is in use now, and how often each threshold overflowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerStatus {
    pub active_requests: u64,
    pub pending_requests: u64,
    pub connections: u64,
    pub active_retries: u64,
    /// Overflows so far, in [`Threshold::ALL`] order.
    pub overflows: [u64; 5],
}

/// The resource counts of one cluster; lives as long as the cluster's balancer state, so
/// config swaps do not reset them under in-flight requests.
#[derive(Debug, Default)]
pub(crate) struct Breakers {
    requests: AtomicU64,
    pending: AtomicU64,
    connections: AtomicU64,
    retries: AtomicU64,
    /// The limits the connector applies, refreshed from each request's cluster config.
    max_pending: AtomicU32,
    max_connections: AtomicU32,
    overflows: [AtomicU64; 5],
    /// Open connections per endpoint (`host:port`); `connections` changes only under
    /// this lock.
    per_endpoint: Mutex<HashMap<String, u64>>,
    /// Woken when a connection closes.
    freed: Notify,
}

/// Takes one unit of `counter` if it is below `max`.
fn try_take(counter: &AtomicU64, max: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

fn give_back(counter: &AtomicU64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

impl Breakers {
    pub(crate) fn new() -> Self {
        let b = Self::default();
        b.configure(&CircuitBreakers::default());
        b
    }

    /// Refreshes the limits the connector reads.
    pub(crate) fn configure(&self, cb: &CircuitBreakers) {
        self.max_pending
            .store(cb.max_pending_requests, Ordering::Relaxed);
        self.max_connections
            .store(cb.max_connections, Ordering::Relaxed);
    }

    pub(crate) fn count_overflow(&self, t: Threshold) {
        if let Some(c) = self.overflows.get(t.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn status(&self) -> BreakerStatus {
        let mut overflows = [0; 5];
        for (out, c) in overflows.iter_mut().zip(&self.overflows) {
            *out = c.load(Ordering::Relaxed);
        }
        BreakerStatus {
            active_requests: self.requests.load(Ordering::Relaxed),
            pending_requests: self.pending.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            active_retries: self.retries.load(Ordering::Relaxed),
            overflows,
        }
    }

    /// Takes a connection slot for `endpoint` if the cluster is under `max_connections`
    /// or the endpoint has no connection at all.
    fn take_connection(&self, endpoint: &str) -> bool {
        let mut per_endpoint = self
            .per_endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let max = u64::from(self.max_connections.load(Ordering::Relaxed));
        let open = self.connections.load(Ordering::Acquire);
        let here = per_endpoint.get(endpoint).copied().unwrap_or(0);
        if open >= max && here > 0 {
            return false;
        }
        self.connections.fetch_add(1, Ordering::AcqRel);
        *per_endpoint.entry(endpoint.to_owned()).or_default() += 1;
        true
    }

    fn release_connection(&self, endpoint: &str) {
        {
            let mut per_endpoint = self
                .per_endpoint
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            give_back(&self.connections);
            if let Some(n) = per_endpoint.get_mut(endpoint) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_endpoint.remove(endpoint);
                }
            }
        }
        self.freed.notify_waiters();
    }

    /// The retry limit now: the budget's share of active requests (never below its
    /// minimum concurrency), else `max_retries`.
    fn retry_limit(&self, cb: &CircuitBreakers) -> (u64, Threshold) {
        match cb.retry_budget {
            Some(b) => {
                let active = self.requests.load(Ordering::Acquire) as f64;
                // Truncated, as Envoy converts the share to a count.
                let share = (b.budget_percent / 100.0 * active) as u64;
                (
                    share.max(u64::from(b.min_retry_concurrency)),
                    Threshold::RetryBudget,
                )
            }
            None => (u64::from(cb.max_retries), Threshold::MaxRetries),
        }
    }
}

impl ClusterState {
    /// Starts an upstream attempt under `max_requests`.
    pub(crate) fn begin_request(
        self: &Arc<Self>,
        cb: &CircuitBreakers,
    ) -> Result<RequestGuard, Threshold> {
        if !try_take(&self.breakers.requests, u64::from(cb.max_requests)) {
            self.overflow(Threshold::MaxRequests);
            return Err(Threshold::MaxRequests);
        }
        self.metrics.active.increment(1.0);
        Ok(RequestGuard(self.clone()))
    }

    /// Starts a retry under the retry budget or `max_retries`.
    pub(crate) fn begin_retry(
        self: &Arc<Self>,
        cb: &CircuitBreakers,
    ) -> Result<RetryGuard, Threshold> {
        let (max, threshold) = self.breakers.retry_limit(cb);
        if !try_take(&self.breakers.retries, max) {
            self.overflow(threshold);
            return Err(threshold);
        }
        self.metrics.retries.increment(1);
        Ok(RetryGuard(self.clone()))
    }

    /// Counts an overflow of `t`, in the status and the metric.
    pub(crate) fn overflow(&self, t: Threshold) {
        self.breakers.count_overflow(t);
        self.metrics.overflow(t);
    }

    fn begin_pending(self: &Arc<Self>) -> Result<PendingGuard, Overflow> {
        let max = u64::from(self.breakers.max_pending.load(Ordering::Relaxed));
        if try_take(&self.breakers.pending, max) {
            Ok(PendingGuard(self.clone()))
        } else {
            Err(Overflow(Threshold::MaxPendingRequests))
        }
    }

    /// A connection slot to `endpoint` under `max_connections`, taken now or not at all: a
    /// TCP proxy connection that finds the cluster full is closed, as Envoy's tcp_proxy
    /// does (`upstream_cx_overflow`), rather than queued.
    pub(crate) fn try_connection_slot(
        self: &Arc<Self>,
        endpoint: SocketAddr,
    ) -> Option<ConnectionSlot> {
        let endpoint = endpoint.to_string();
        if self.breakers.take_connection(&endpoint) {
            return Some(ConnectionSlot {
                cluster: self.clone(),
                endpoint,
            });
        }
        self.overflow(Threshold::MaxConnections);
        None
    }

    /// A connection slot to `endpoint` under `max_connections`, waiting up to `wait` for one
    /// to free up. An endpoint with no connection always gets one, as in Envoy, so that
    /// idle connections to other endpoints (or `max_connections: 0`) cannot starve it.
    async fn connection_slot(
        self: &Arc<Self>,
        endpoint: String,
        wait: Duration,
    ) -> Result<ConnectionSlot, Overflow> {
        let b = &self.breakers;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = b.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release in between is not missed.
            freed.as_mut().enable();
            if b.take_connection(&endpoint) {
                return Ok(ConnectionSlot {
                    cluster: self.clone(),
                    endpoint,
                });
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Overflow(Threshold::MaxConnections));
            }
        }
    }
}

/// An upstream attempt in flight; dropping it ends the attempt.
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<ClusterState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        give_back(&self.0.breakers.requests);
        self.0.metrics.active.decrement(1.0);
    }
}

/// A retry in flight.
#[derive(Debug)]
pub(crate) struct RetryGuard(Arc<ClusterState>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        give_back(&self.0.breakers.retries);
    }
}

#[derive(Debug)]
struct PendingGuard(Arc<ClusterState>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        give_back(&self.0.breakers.pending);
    }
}

/// One open connection of the cluster.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    cluster: Arc<ClusterState>,
    endpoint: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.cluster.breakers.release_connection(&self.endpoint);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper-util's `HttpConnector`, counting the cluster's connections and the requests
/// waiting for one, under `max_connections` and `max_pending_requests`.
#[derive(Debug, Clone)]
pub(crate) struct CountingConnector {
    inner: HttpConnector,
    cluster: Arc<ClusterState>,
    /// How long a new connection may wait for a slot (the connect timeout).
    wait: Duration,
}

impl CountingConnector {
    pub(crate) fn new(inner: HttpConnector, cluster: Arc<ClusterState>, wait: Duration) -> Self {
        Self {
            inner,
            cluster,
            wait,
        }
    }
}

impl tower::Service<Uri> for CountingConnector {
    type Response = CountedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<CountedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let cluster = self.cluster.clone();
        let endpoint = dst.authority().map(|a| a.to_string()).unwrap_or_default();
        let connect = self.inner.call(dst);
        let wait = self.wait;
        Box::pin(async move {
            let _pending = cluster.begin_pending()?;
            let slot = cluster.connection_slot(endpoint, wait).await?;
            let io = connect.await?;
            Ok(CountedIo { io, _slot: slot })
        })
    }
}

/// A TCP connection that frees its slot when closed.
#[derive(Debug)]
pub(crate) struct CountedIo {
    io: TokioIo<TcpStream>,
    _slot: ConnectionSlot,
}

impl Connection for CountedIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for CountedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for CountedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// The circuit breaker behind a hyper client error, if a connector refused the connection.
pub(crate) fn overflow_of(e: &(dyn std::error::Error + 'static)) -> Option<Threshold> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(Overflow(t)) = err.downcast_ref::<Overflow>() {
            return Some(*t);
        }
        source = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use switchboard_proxy_xds::config::cluster::RetryBudget;

    use super::*;

    fn state() -> Arc<ClusterState> {
        Arc::new(ClusterState::new("c"))
    }

    #[test]
    fn max_requests_and_release() {
        let s = state();
        let cb = CircuitBreakers {
            max_requests: 2,
            ..Default::default()
        };
        let a = s.begin_request(&cb).unwrap();
        let b = s.begin_request(&cb).unwrap();
        assert_eq!(s.begin_request(&cb).unwrap_err(), Threshold::MaxRequests);
        drop(a);
        let _c = s.begin_request(&cb).unwrap();
        drop(b);
        let st = s.breakers.status();
        assert_eq!(st.active_requests, 1);
        assert_eq!(st.overflows[Threshold::MaxRequests.index()], 1);
    }

    #[test]
    fn retry_budget_scales_with_active_requests() {
        let s = state();
        let budget = CircuitBreakers {
            retry_budget: Some(RetryBudget {
                budget_percent: 25.0,
                min_retry_concurrency: 1,
            }),
            ..Default::default()
        };
        // No active request: the minimum concurrency (1) applies.
        let r1 = s.begin_retry(&budget).unwrap();
        assert_eq!(s.begin_retry(&budget).unwrap_err(), Threshold::RetryBudget);
        // 8 active requests: 25% allows 2.
        let active: Vec<_> = (0..8)
            .map(|_| s.begin_request(&CircuitBreakers::default()).unwrap())
            .collect();
        let r2 = s.begin_retry(&budget).unwrap();
        assert!(s.begin_retry(&budget).is_err());
        drop((r1, r2, active));
        // Without a budget, max_retries applies.
        let fixed = CircuitBreakers {
            max_retries: 1,
            ..Default::default()
        };
        let _r = s.begin_retry(&fixed).unwrap();
        assert_eq!(s.begin_retry(&fixed).unwrap_err(), Threshold::MaxRetries);
        let st = s.breakers.status();
        assert_eq!(st.overflows[Threshold::RetryBudget.index()], 2);
        assert_eq!(st.overflows[Threshold::MaxRetries.index()], 1);
    }

    #[tokio::test]
    async fn connection_slots_wait_for_a_release() {
        let s = state();
        s.breakers.configure(&CircuitBreakers {
            max_connections: 1,
            ..Default::default()
        });
        let slot = |endpoint: &str, wait_ms: u64| {
            let s = s.clone();
            let endpoint = endpoint.to_owned();
            async move {
                s.connection_slot(endpoint, Duration::from_millis(wait_ms))
                    .await
            }
        };
        let first = slot("a:1", 5_000).await.unwrap();
        let overflow = slot("a:1", 20).await;
        assert!(matches!(overflow, Err(Overflow(Threshold::MaxConnections))));
        // An endpoint without a connection gets one over the limit.
        let other = slot("b:1", 20).await.unwrap();
        assert_eq!(s.breakers.status().connections, 2);
        assert!(slot("b:1", 20).await.is_err());
        let waiter = tokio::spawn(slot("a:1", 5_000));
        tokio::task::yield_now().await;
        drop(first);
        drop(other);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(s.breakers.status().connections, 0);
    }

    #[test]
    fn overflow_is_found_in_an_error_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Overflow);
        let e = Outer(Overflow(Threshold::MaxPendingRequests));
        assert_eq!(overflow_of(&e), Some(Threshold::MaxPendingRequests));
        let plain = std::io::Error::other("x");
        assert_eq!(overflow_of(&plain), None);
    }
}
