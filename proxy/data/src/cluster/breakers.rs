//! Circuit breakers, per cluster, as Envoy's default-priority thresholds.
//!
//! - `max_requests`: upstream requests (attempts, retries included) in flight, from the
//!   moment an attempt starts until its response body ends.
//! - `max_retries`, or a `retry_budget` instead: retries in flight, from the decision to
//!   retry until the next decision or the end of the request (as Envoy counts them).
//! - `max_connections`: open upstream connections of the cluster, counted by the cluster's
//!   pool as they open and close. At the limit a new connection waits (up to the connect
//!   timeout) for one to close, and the request takes a connection handed back to the pool
//!   meanwhile instead; a request that gets neither overflows. As in Envoy, an endpoint with
//!   no connection at all may always open one.
//! - `max_pending_requests`: requests that found no usable connection, from then until they
//!   have one (opening it, waiting for a connection slot, or waiting for the HTTP/2
//!   connection another request is opening).
//!
//! An overflow is answered locally with 503 and `x-envoy-overloaded: true` (retry overflows
//! instead pass the last upstream answer on) and counted, per threshold, in
//! `switchboard_proxy_circuit_breaker_overflows_total`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use switchboard_proxy_xds::config::cluster::CircuitBreakers;
use tokio::sync::Notify;

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

/// The resource counts of one cluster; lives as long as the cluster's state, so config swaps
/// do not reset them under in-flight requests. The slots that release them on drop are the
/// cluster state's (they also move its metrics).
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

    /// Takes a `max_requests` slot if one is free.
    #[inline]
    pub(super) fn take_request(&self, max_requests: u32) -> bool {
        try_take(&self.requests, u64::from(max_requests))
    }

    #[inline]
    pub(super) fn release_request(&self) {
        give_back(&self.requests);
    }

    /// Takes a retry slot under the retry budget or `max_retries`, or says which of them
    /// is full.
    #[inline]
    pub(super) fn take_retry(&self, cb: &CircuitBreakers) -> Result<(), Threshold> {
        let (max, threshold) = self.retry_limit(cb);
        if try_take(&self.retries, max) {
            Ok(())
        } else {
            Err(threshold)
        }
    }

    #[inline]
    pub(super) fn release_retry(&self) {
        give_back(&self.retries);
    }

    /// Takes a `max_pending_requests` slot (the limit last configured) if one is free.
    #[inline]
    pub(super) fn take_pending(&self) -> bool {
        let max = u64::from(self.max_pending.load(Ordering::Relaxed));
        try_take(&self.pending, max)
    }

    #[inline]
    pub(super) fn release_pending(&self) {
        give_back(&self.pending);
    }

    /// Takes a connection slot for `endpoint` if the cluster is under `max_connections`
    /// or the endpoint has no connection at all.
    pub(super) fn take_connection(&self, endpoint: &str) -> bool {
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

    pub(super) fn release_connection(&self, endpoint: &str) {
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

    /// [`Self::take_connection`], waiting up to `wait` for a connection to close when the
    /// cluster is full; `false` when none did in time.
    pub(super) async fn wait_for_connection(&self, endpoint: &str, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release in between is not missed.
            freed.as_mut().enable();
            if self.take_connection(endpoint) {
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
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
