//! [`ClusterState`]: everything the proxy keeps about one cluster for as long as the cluster
//! exists, and what a request does with it: pick an endpoint, record how the attempt went
//! (outlier detection), and take the circuit breaker slots that bound its work.
//!
//! Config swaps never replace a cluster's state: its circuit breaker counts, and per
//! endpoint *address* the request counters and the outlier record ([`crate::outlier`]),
//! which therefore survive a new load assignment that keeps the address. The candidate set
//! (and ring) is rebuilt when the `Arc` owning the endpoints, the policy, or the set of
//! ejected endpoints changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use switchboard_proxy_xds::config::cluster::{CircuitBreakers, LbPolicy, OutlierDetection};

use super::balance::Table;
use super::breakers::{Breakers, Overflow, Threshold};
use super::endpoint::{EndpointSource, HostState, HostStats, Picked};
use super::metrics::ClusterMetrics;
use crate::outlier::{self, HostOutlier};

/// The time a balancing decision or an outcome is taken at: an `Instant` (tests pass their
/// own), or [`Clock`] to read the clock only when the call needs it. Almost no request does:
/// only with an endpoint ejected, or on a failure that ejects one.
pub(crate) trait Now: Copy {
    fn get(self) -> Instant;
}

impl Now for Instant {
    fn get(self) -> Instant {
        self
    }
}

/// The clock, read when a call needs the time.
#[derive(Clone, Copy)]
pub(crate) struct Clock;

impl Now for Clock {
    fn get(self) -> Instant {
        Instant::now()
    }
}

/// Everything the proxy keeps about one cluster, for as long as the cluster exists.
#[derive(Debug)]
pub(crate) struct ClusterState {
    pub(crate) name: String,
    pub(crate) breakers: Breakers,
    pub(crate) metrics: ClusterMetrics,
    lb: Mutex<LbState>,
}

#[derive(Debug, Default)]
struct LbState {
    policy: Option<LbPolicy>,
    /// Held so that the pointer compared in [`LbState::sync`] cannot be reused.
    source: Option<Arc<dyn EndpointSource>>,
    /// The endpoints of the current load assignment, by address.
    hosts: HashMap<SocketAddr, Arc<HostState>>,
    /// Outlier records of the addresses in `hosts`.
    outliers: HashMap<SocketAddr, HostOutlier>,
    ejected: usize,
    /// The earliest end of an ejection, when one is ejected.
    next_unejection: Option<Instant>,
    /// The candidate set; `None` when it must be rebuilt.
    table: Option<Table>,
}

impl ClusterState {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            breakers: Breakers::new(),
            metrics: ClusterMetrics::new(name),
            lb: Mutex::new(LbState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LbState> {
        self.lb.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state of the endpoint at `address`, if the current load assignment has it.
    #[cfg(test)]
    pub(super) fn host(&self, address: &SocketAddr) -> Option<Arc<HostState>> {
        self.lock().hosts.get(address).cloned()
    }

    /// An endpoint for a request hashed to `hash` (ring hash only), or `None` when the
    /// cluster has no endpoint to use.
    pub(crate) fn pick(
        &self,
        policy: LbPolicy,
        source: &Arc<dyn EndpointSource>,
        hash: Option<u64>,
        outlier: Option<&OutlierDetection>,
        now: impl Now,
    ) -> Option<Picked> {
        let mut lb = self.lock();
        lb.sync(policy, source, outlier, now, &self.metrics);
        let host = lb.table(policy).pick(policy, hash)?.clone();
        drop(lb);
        host.active.fetch_add(1, Ordering::AcqRel);
        Some(Picked {
            address: host.address,
            host,
        })
    }

    /// Records how an attempt on `host` ended (`failed`: 5xx, connect failure, reset or
    /// timeout) and ejects the endpoint when outlier detection says so.
    pub(crate) fn record(
        &self,
        host: &Arc<HostState>,
        failed: bool,
        outlier: Option<&OutlierDetection>,
        now: impl Now,
    ) {
        host.total.fetch_add(1, Ordering::Relaxed);
        if !failed {
            host.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        host.failures.fetch_add(1, Ordering::Relaxed);
        let consecutive = host
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let Some(od) = outlier else {
            return;
        };
        if od.consecutive_5xx == 0 || consecutive < od.consecutive_5xx {
            return;
        }
        let mut lb = self.lock();
        // An endpoint the cluster no longer has (a stale pick) is not ejected.
        if !lb
            .hosts
            .get(&host.address)
            .is_some_and(|h| Arc::ptr_eq(h, host))
        {
            return;
        }
        if lb
            .outliers
            .get(&host.address)
            .is_some_and(HostOutlier::is_ejected)
        {
            return;
        }
        // Another run of failures is needed for the next attempt, ejected or not.
        host.consecutive_failures.store(0, Ordering::Relaxed);
        if !outlier::may_eject(od, lb.ejected, lb.hosts.len()) {
            tracing::debug!(cluster = %self.name, endpoint = %host.address,
                "outlier not ejected: max_ejection_percent reached");
            return;
        }
        if !outlier::enforced(od) {
            return;
        }
        let now = now.get();
        let record = lb.outliers.entry(host.address).or_default();
        let until = record.eject(od, now);
        lb.ejected += 1;
        lb.next_unejection = Some(lb.next_unejection.map_or(until, |t| t.min(until)));
        lb.table = None;
        tracing::info!(cluster = %self.name, endpoint = %host.address,
            ejected_for = ?until.saturating_duration_since(now), "outlier ejected");
        self.metrics.ejections.increment(1);
        self.metrics.ejected.set(lb.ejected as f64);
    }

    /// Counters and ejection of the endpoint at `address`, after bringing back endpoints
    /// whose ejection is over.
    pub(crate) fn host_stats(
        &self,
        address: &SocketAddr,
        outlier: Option<&OutlierDetection>,
        now: Instant,
    ) -> HostStats {
        let mut lb = self.lock();
        lb.uneject_expired(outlier, now, &self.metrics);
        let Some(host) = lb.hosts.get(address) else {
            return HostStats::default();
        };
        let record = lb.outliers.get(address);
        HostStats {
            active: host.active.load(Ordering::Relaxed),
            total: host.total.load(Ordering::Relaxed),
            failures: host.failures.load(Ordering::Relaxed),
            ejected_until: record.and_then(|o| o.ejected_until),
            times_ejected: record.map_or(0, |o| o.times_ejected),
        }
    }
}

/// A removed cluster's last state: its gauges no longer say anything.
impl Drop for ClusterState {
    fn drop(&mut self) {
        self.metrics.ejected.set(0.0);
    }
}

impl LbState {
    /// Follows the cluster's current endpoints, policy and outlier config.
    fn sync(
        &mut self,
        policy: LbPolicy,
        source: &Arc<dyn EndpointSource>,
        outlier: Option<&OutlierDetection>,
        now: impl Now,
        metrics: &ClusterMetrics,
    ) {
        if !self.source.as_ref().is_some_and(|s| Arc::ptr_eq(s, source)) {
            self.rehost(source.clone(), metrics);
        }
        if self.policy != Some(policy) {
            self.policy = Some(policy);
            self.table = None;
        }
        self.uneject_expired(outlier, now, metrics);
    }

    /// Takes the endpoints of a new load assignment, keeping the state of every address
    /// that stays.
    fn rehost(&mut self, source: Arc<dyn EndpointSource>, metrics: &ClusterMetrics) {
        let mut old = std::mem::take(&mut self.hosts);
        if let Some(la) = source.load_assignment() {
            for e in la.localities.iter().flat_map(|l| &l.endpoints) {
                self.hosts.entry(e.address).or_insert_with(|| {
                    old.remove(&e.address)
                        .unwrap_or_else(|| Arc::new(HostState::new(e.address)))
                });
            }
        }
        let hosts = &self.hosts;
        self.outliers.retain(|a, _| hosts.contains_key(a));
        self.ejected = self.outliers.values().filter(|o| o.is_ejected()).count();
        self.next_unejection = self.outliers.values().filter_map(|o| o.ejected_until).min();
        metrics.ejected.set(self.ejected as f64);
        self.source = Some(source);
        self.table = None;
    }

    /// Brings back endpoints whose ejection is over, or all of them when outlier detection
    /// is off.
    fn uneject_expired(
        &mut self,
        outlier: Option<&OutlierDetection>,
        now: impl Now,
        metrics: &ClusterMetrics,
    ) {
        let Some(next) = self.next_unejection else {
            return;
        };
        let now = now.get();
        if outlier.is_some() && next > now {
            return;
        }
        let mut next_unejection = None;
        for (address, record) in &mut self.outliers {
            let Some(until) = record.ejected_until else {
                continue;
            };
            if outlier.is_none() || until <= now {
                record.uneject(now);
                if let Some(host) = self.hosts.get(address) {
                    host.consecutive_failures.store(0, Ordering::Relaxed);
                }
                tracing::info!(endpoint = %address, "outlier back in service");
            } else {
                next_unejection = Some(next_unejection.map_or(until, |t: Instant| t.min(until)));
            }
        }
        self.next_unejection = next_unejection;
        self.ejected = self.outliers.values().filter(|o| o.is_ejected()).count();
        self.table = None;
        metrics.ejected.set(self.ejected as f64);
    }

    fn table(&mut self, policy: LbPolicy) -> &mut Table {
        let la = self.source.as_ref().and_then(|s| s.load_assignment());
        let outliers = &self.outliers;
        let hosts = &self.hosts;
        self.table.get_or_insert_with(|| {
            let ejected = |a: &SocketAddr| outliers.get(a).is_some_and(HostOutlier::is_ejected);
            Table::build(la, hosts, &ejected, policy)
        })
    }
}

/// Circuit breakers: each slot holds the cluster's count (and gauge) until dropped.
impl ClusterState {
    /// Starts an upstream attempt under `max_requests`.
    pub(crate) fn begin_request(
        self: &Arc<Self>,
        cb: &CircuitBreakers,
    ) -> Result<RequestSlot, Threshold> {
        if !self.breakers.take_request(cb.max_requests) {
            self.overflow(Threshold::MaxRequests);
            return Err(Threshold::MaxRequests);
        }
        self.metrics.active.increment(1.0);
        Ok(RequestSlot(self.clone()))
    }

    /// Starts a retry under the retry budget or `max_retries`.
    pub(crate) fn begin_retry(
        self: &Arc<Self>,
        cb: &CircuitBreakers,
    ) -> Result<RetrySlot, Threshold> {
        if let Err(threshold) = self.breakers.take_retry(cb) {
            self.overflow(threshold);
            return Err(threshold);
        }
        self.metrics.retries.increment(1);
        Ok(RetrySlot(self.clone()))
    }

    /// Counts an overflow of `t`, in the status and the metric.
    pub(crate) fn overflow(&self, t: Threshold) {
        self.breakers.count_overflow(t);
        self.metrics.overflow(t);
    }

    /// Starts waiting for a connection under `max_pending_requests`.
    pub(super) fn begin_pending(self: &Arc<Self>) -> Result<PendingSlot, Overflow> {
        if self.breakers.take_pending() {
            Ok(PendingSlot(self.clone()))
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
    pub(super) async fn connection_slot(
        self: &Arc<Self>,
        endpoint: String,
        wait: Duration,
    ) -> Result<ConnectionSlot, Overflow> {
        if self.breakers.wait_for_connection(&endpoint, wait).await {
            Ok(ConnectionSlot {
                cluster: self.clone(),
                endpoint,
            })
        } else {
            Err(Overflow(Threshold::MaxConnections))
        }
    }
}

/// An upstream attempt in flight, holding its `max_requests` slot; dropping it ends the
/// attempt.
#[derive(Debug)]
pub(crate) struct RequestSlot(Arc<ClusterState>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.breakers.release_request();
        self.0.metrics.active.decrement(1.0);
    }
}

/// A retry in flight, under the retry budget or `max_retries`.
#[derive(Debug)]
pub(crate) struct RetrySlot(Arc<ClusterState>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.breakers.release_retry();
    }
}

/// A request waiting for a connection it asked the connector for.
#[derive(Debug)]
pub(super) struct PendingSlot(Arc<ClusterState>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.breakers.release_pending();
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
