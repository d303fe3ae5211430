//! Endpoint choice per cluster, and weighted-cluster choice per request.
//!
//! The candidate set follows Envoy: healthy endpoints that outlier detection has not
//! ejected, from the lowest priority level that has any; an endpoint's share is its weight
//! times its locality's weight (when every locality of that level has one) divided by the
//! locality's total endpoint weight, so a locality gets its share however many endpoints it
//! has. When no endpoint of any priority is usable, the balancer panics as Envoy does: it
//! balances over every endpoint of the first priority, unhealthy and ejected ones included
//! (draining ones excepted), rather than failing the request.
//!
//! Every policy picks from that set: smooth weighted round robin, least request (power of
//! two choices), weighted random, and ring hash ([`crate::ring`]), where a request without
//! a hash gets a random point of the ring.
//!
//! State lives per cluster name in a [`ClusterState`] that config swaps never replace:
//! circuit breaker counts ([`crate::circuit_breaker`]), and per endpoint *address* the
//! request counters and the outlier record ([`crate::outlier`]), which therefore survive a
//! new load assignment that keeps the address. The candidate set (and ring) is rebuilt when
//! the `Arc` owning the endpoints, the policy, or the set of ejected endpoints changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rand::Rng;
use switchboard_proxy_xds::Snapshot;
use switchboard_proxy_xds::config::cluster::{
    Cluster, Discovery, LbPolicy, OutlierDetection, RingHashConfig,
};
use switchboard_proxy_xds::config::endpoint::{Endpoint, Health, LoadAssignment};

use crate::circuit_breaker::Breakers;
use crate::clusters::ClusterMetrics;
use crate::outlier::{self, HostOutlier};
use crate::ring::Ring;

/// Picks one of `clusters` with probability proportional to its weight; `None` when empty
/// or every weight is zero.
pub fn pick_weighted(clusters: &[(String, u32)]) -> Option<&str> {
    let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut n = rand::rng().random_range(0..total);
    for (name, w) in clusters {
        let w = u64::from(*w);
        if n < w {
            return Some(name);
        }
        n -= w;
    }
    None
}

/// The balancer state of every cluster, keyed by cluster name; shared by all requests.
#[derive(Debug, Default)]
pub struct Balancers {
    clusters: Mutex<HashMap<String, Arc<ClusterState>>>,
}

impl Balancers {
    pub fn new() -> Self {
        Self::default()
    }

    /// An endpoint of `cluster` under `policy`, with no request hash and no outlier
    /// detection; `None` when the cluster has no endpoint to use. Keep the returned
    /// [`Picked`] alive while the request is in flight: least request counts it.
    ///
    /// `assignment` is the `Arc` that owns the endpoints (the EDS resource, or the cluster
    /// itself for a static one): the candidate set is rebuilt when that `Arc` changes.
    pub fn pick<A: EndpointSource>(
        &self,
        cluster: &str,
        policy: LbPolicy,
        assignment: &Arc<A>,
    ) -> Option<Picked> {
        let source: Arc<dyn EndpointSource> = assignment.clone();
        self.cluster(cluster)
            .pick(policy, &source, None, None, Instant::now())
    }

    /// The state of cluster `name`, created on first use.
    pub(crate) fn cluster(&self, name: &str) -> Arc<ClusterState> {
        let mut map = self.lock();
        if let Some(c) = map.get(name) {
            return c.clone();
        }
        let c = Arc::new(ClusterState::new(name));
        map.insert(name.to_owned(), c.clone());
        c
    }

    /// [`Self::cluster`], forgetting clusters that `snapshot` no longer has whenever a new
    /// one is created (Envoy drops a removed cluster's state too).
    pub(crate) fn cluster_in(&self, name: &str, snapshot: &Snapshot) -> Arc<ClusterState> {
        let mut map = self.lock();
        if let Some(c) = map.get(name) {
            return c.clone();
        }
        map.retain(|n, _| snapshot.clusters.contains_key(n));
        let c = Arc::new(ClusterState::new(name));
        map.insert(name.to_owned(), c.clone());
        c
    }

    /// The state of cluster `name` if it has served a request.
    pub(crate) fn existing(&self, name: &str) -> Option<Arc<ClusterState>> {
        self.lock().get(name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ClusterState>>> {
        self.clusters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whatever owns a cluster's endpoints: an EDS [`LoadAssignment`], or a [`Cluster`] with
/// static ones.
pub trait EndpointSource: Send + Sync + std::fmt::Debug + 'static {
    fn load_assignment(&self) -> Option<&LoadAssignment>;
}

impl EndpointSource for LoadAssignment {
    fn load_assignment(&self) -> Option<&LoadAssignment> {
        Some(self)
    }
}

impl EndpointSource for Cluster {
    fn load_assignment(&self) -> Option<&LoadAssignment> {
        match &self.discovery {
            Discovery::Static(la) => Some(la),
            Discovery::Eds { .. } => None,
        }
    }
}

/// The endpoints of `cluster` in `snapshot`: its own for a static cluster, else its EDS
/// load assignment (`None` until that arrives).
pub(crate) fn endpoint_source(
    snapshot: &Snapshot,
    cluster: &Arc<Cluster>,
) -> Option<Arc<dyn EndpointSource>> {
    match &cluster.discovery {
        Discovery::Static(_) => Some(cluster.clone()),
        Discovery::Eds { service_name } => snapshot
            .endpoints
            .get(service_name)
            .map(|la| la.clone() as Arc<dyn EndpointSource>),
    }
}

/// A chosen endpoint; dropping it ends the request for least-request accounting.
#[derive(Debug)]
pub struct Picked {
    pub address: SocketAddr,
    pub(crate) host: Arc<HostState>,
}

impl Drop for Picked {
    fn drop(&mut self) {
        let _ = self
            .host
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// Counters of one endpoint address.
#[derive(Debug)]
pub(crate) struct HostState {
    pub(crate) address: SocketAddr,
    pub(crate) active: AtomicU64,
    pub(crate) total: AtomicU64,
    /// 5xx responses, connect failures, resets and timeouts.
    pub(crate) failures: AtomicU64,
    consecutive_failures: AtomicU32,
}

impl HostState {
    fn new(address: SocketAddr) -> Self {
        Self {
            address,
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
        }
    }
}

/// One endpoint as `/clusters` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HostStats {
    pub(crate) active: u64,
    pub(crate) total: u64,
    pub(crate) failures: u64,
    pub(crate) ejected_until: Option<Instant>,
    pub(crate) times_ejected: u32,
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

#[derive(Debug)]
struct Table {
    candidates: Vec<Candidate>,
    /// Smooth weighted round robin (nginx's): current weight per candidate.
    current: Vec<f64>,
    ring: Option<Ring>,
}

#[derive(Debug)]
struct Candidate {
    host: Arc<HostState>,
    weight: f64,
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

    /// An endpoint for a request hashed to `hash` (ring hash only), or `None` when the
    /// cluster has no endpoint to use.
    pub(crate) fn pick(
        &self,
        policy: LbPolicy,
        source: &Arc<dyn EndpointSource>,
        hash: Option<u64>,
        outlier: Option<&OutlierDetection>,
        now: Instant,
    ) -> Option<Picked> {
        let mut lb = self.lock();
        lb.sync(policy, source, outlier, now, &self.metrics);
        let table = lb.table(policy);
        let i = table.choose(policy, hash)?;
        let host = table.candidates.get(i)?.host.clone();
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
        now: Instant,
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
        now: Instant,
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
        now: Instant,
        metrics: &ClusterMetrics,
    ) {
        let Some(next) = self.next_unejection else {
            return;
        };
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
            let weighted = la.map(|la| candidates(la, &ejected)).unwrap_or_default();
            let candidates: Vec<Candidate> = weighted
                .into_iter()
                .filter_map(|(address, weight)| {
                    Some(Candidate {
                        host: hosts.get(&address)?.clone(),
                        weight,
                    })
                })
                .collect();
            let ring = match policy {
                LbPolicy::RingHash(config) => ring(&candidates, &config),
                _ => None,
            };
            Table {
                current: vec![0.0; candidates.len()],
                candidates,
                ring,
            }
        })
    }
}

fn ring(candidates: &[Candidate], config: &RingHashConfig) -> Option<Ring> {
    let points: Vec<(SocketAddr, f64)> = candidates
        .iter()
        .map(|c| (c.host.address, c.weight))
        .collect();
    Ring::build(&points, config)
}

impl Table {
    fn choose(&mut self, policy: LbPolicy, hash: Option<u64>) -> Option<usize> {
        match self.candidates.len() {
            0 => None,
            1 => Some(0),
            n => Some(match policy {
                LbPolicy::RoundRobin => self.round_robin(),
                LbPolicy::Random => self.random(),
                LbPolicy::LeastRequest => {
                    let mut rng = rand::rng();
                    let a = rng.random_range(0..n);
                    let b = rng.random_range(0..n);
                    let load = |i: usize| {
                        self.candidates
                            .get(i)
                            .map_or(u64::MAX, |c| c.host.active.load(Ordering::Relaxed))
                    };
                    if load(b) < load(a) { b } else { a }
                }
                LbPolicy::RingHash(_) => {
                    let hash = hash.unwrap_or_else(|| rand::rng().random());
                    match &self.ring {
                        Some(ring) => ring.pick(hash)?,
                        None => self.random(),
                    }
                }
            }),
        }
    }

    fn round_robin(&mut self) -> usize {
        let total: f64 = self.candidates.iter().map(|c| c.weight).sum();
        let mut best = 0;
        let mut best_value = f64::MIN;
        for (i, (cur, c)) in self.current.iter_mut().zip(&self.candidates).enumerate() {
            *cur += c.weight;
            if *cur > best_value {
                best = i;
                best_value = *cur;
            }
        }
        if let Some(b) = self.current.get_mut(best) {
            *b -= total;
        }
        best
    }

    fn random(&self) -> usize {
        let total: f64 = self.candidates.iter().map(|c| c.weight).sum();
        if total <= 0.0 {
            return 0;
        }
        let mut x = rand::rng().random_range(0.0..total);
        for (i, c) in self.candidates.iter().enumerate() {
            if x < c.weight {
                return i;
            }
            x -= c.weight;
        }
        self.candidates.len().saturating_sub(1)
    }
}

/// The usable endpoints (healthy, not ejected) of the lowest priority that has any, with
/// their effective weights; in panic (none usable anywhere), every endpoint of the first
/// priority that has any, draining ones excepted.
fn candidates(
    la: &LoadAssignment,
    ejected: &dyn Fn(&SocketAddr) -> bool,
) -> Vec<(SocketAddr, f64)> {
    let usable = |e: &Endpoint| e.health == Health::Healthy && !ejected(&e.address);
    let normal = level(la, &usable);
    if !normal.is_empty() {
        return normal;
    }
    level(la, &|e: &Endpoint| e.health != Health::Draining)
}

/// The endpoints passing `include` of the lowest priority that has any, weighted.
fn level(la: &LoadAssignment, include: &dyn Fn(&Endpoint) -> bool) -> Vec<(SocketAddr, f64)> {
    let Some(priority) = la
        .localities
        .iter()
        .filter(|l| l.endpoints.iter().any(include))
        .map(|l| l.priority)
        .min()
    else {
        return Vec::new();
    };
    let level: Vec<_> = la
        .localities
        .iter()
        .filter(|l| l.priority == priority)
        .collect();
    let locality_weighted = level.iter().all(|l| l.weight.is_some());
    let mut out = Vec::new();
    for l in level {
        let endpoints: Vec<_> = l.endpoints.iter().filter(|e| include(e)).collect();
        let total: f64 = endpoints.iter().map(|e| f64::from(e.weight.max(1))).sum();
        for e in endpoints {
            let own = f64::from(e.weight.max(1));
            let weight = match l.weight {
                Some(lw) if locality_weighted => f64::from(lw) * own / total,
                _ => own,
            };
            if weight > 0.0 {
                out.push((e.address, weight));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use switchboard_proxy_xds::config::endpoint::{Locality, LocalityEndpoints};

    fn ep(port: u16, weight: u32, health: Health) -> Endpoint {
        Endpoint {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            health,
        }
    }

    fn locality(
        zone: &str,
        priority: u32,
        weight: Option<u32>,
        eps: Vec<Endpoint>,
    ) -> LocalityEndpoints {
        LocalityEndpoints {
            locality: Locality {
                zone: zone.into(),
                ..Default::default()
            },
            priority,
            weight,
            endpoints: eps,
        }
    }

    fn assignment(localities: Vec<LocalityEndpoints>) -> Arc<LoadAssignment> {
        Arc::new(LoadAssignment {
            cluster_name: "c".into(),
            localities,
        })
    }

    fn healthy(ports: &[u16]) -> Arc<LoadAssignment> {
        assignment(vec![locality(
            "a",
            0,
            None,
            ports.iter().map(|p| ep(*p, 1, Health::Healthy)).collect(),
        )])
    }

    /// Counts picks per port over `n` picks.
    fn counts(policy: LbPolicy, la: &Arc<LoadAssignment>, n: usize) -> HashMap<u16, usize> {
        let b = Balancers::new();
        let mut out = HashMap::new();
        for _ in 0..n {
            let p = b.pick("c", policy, la).unwrap();
            *out.entry(p.address.port()).or_default() += 1;
        }
        out
    }

    fn od(consecutive_5xx: u32, max_ejection_percent: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent,
            enforcing_consecutive_5xx: 100,
            always_eject_one_host: false,
        }
    }

    /// Picks `n` times from `state` and counts per port.
    fn spread(
        state: &ClusterState,
        policy: LbPolicy,
        la: &Arc<LoadAssignment>,
        od: Option<&OutlierDetection>,
        now: Instant,
        n: usize,
    ) -> HashMap<u16, usize> {
        let source: Arc<dyn EndpointSource> = la.clone();
        let mut out = HashMap::new();
        for _ in 0..n {
            let p = state.pick(policy, &source, None, od, now).unwrap();
            *out.entry(p.address.port()).or_default() += 1;
        }
        out
    }

    /// Fails `host` `n` times through `state`.
    fn fail(
        state: &ClusterState,
        la: &Arc<LoadAssignment>,
        port: u16,
        od: &OutlierDetection,
        now: Instant,
        n: u32,
    ) {
        let source: Arc<dyn EndpointSource> = la.clone();
        // A pick syncs the state with the assignment first.
        drop(state.pick(LbPolicy::RoundRobin, &source, None, Some(od), now));
        let host = state
            .lock()
            .hosts
            .get(&SocketAddr::from(([127, 0, 0, 1], port)))
            .cloned()
            .unwrap();
        for _ in 0..n {
            state.record(&host, true, Some(od), now);
        }
    }

    #[test]
    fn weighted_round_robin_is_exact() {
        let la = assignment(vec![locality(
            "a",
            0,
            None,
            vec![
                ep(1, 3, Health::Healthy),
                ep(2, 1, Health::Healthy),
                ep(3, 5, Health::Unhealthy),
            ],
        )]);
        let c = counts(LbPolicy::RoundRobin, &la, 400);
        assert_eq!(c.get(&1), Some(&300));
        assert_eq!(c.get(&2), Some(&100));
        assert_eq!(c.get(&3), None);
    }

    #[test]
    fn lowest_healthy_priority_wins_and_panic_uses_the_first() {
        let la = assignment(vec![
            locality("p0", 0, None, vec![ep(1, 1, Health::Unhealthy)]),
            locality("p1", 1, None, vec![ep(2, 1, Health::Healthy)]),
            locality("p2", 2, None, vec![ep(3, 1, Health::Healthy)]),
        ]);
        assert_eq!(counts(LbPolicy::RoundRobin, &la, 10).get(&2), Some(&10));
        // Nothing healthy anywhere: panic over priority 0, unhealthy endpoints included.
        let unhealthy = assignment(vec![
            locality(
                "p0",
                0,
                None,
                vec![ep(1, 1, Health::Unhealthy), ep(2, 1, Health::Degraded)],
            ),
            locality("p1", 1, None, vec![ep(3, 1, Health::Unhealthy)]),
        ]);
        let c = counts(LbPolicy::RoundRobin, &unhealthy, 10);
        assert_eq!((c.get(&1), c.get(&2)), (Some(&5), Some(&5)));
        // Draining endpoints take no traffic, even in panic.
        let draining = assignment(vec![locality(
            "a",
            0,
            None,
            vec![ep(1, 1, Health::Draining)],
        )]);
        assert!(
            Balancers::new()
                .pick("c", LbPolicy::Random, &draining)
                .is_none()
        );
    }

    #[test]
    fn locality_weights_split_by_locality_not_endpoint_count() {
        // Locality a (weight 1) has three endpoints, b (weight 3) has one: b gets 3/4.
        let la = assignment(vec![
            locality(
                "a",
                0,
                Some(1),
                vec![
                    ep(1, 1, Health::Healthy),
                    ep(2, 1, Health::Healthy),
                    ep(3, 1, Health::Healthy),
                ],
            ),
            locality("b", 0, Some(3), vec![ep(4, 1, Health::Healthy)]),
        ]);
        let c = counts(LbPolicy::RoundRobin, &la, 1200);
        assert_eq!(c.get(&4), Some(&900));
    }

    #[test]
    fn random_follows_weights() {
        let la = assignment(vec![locality(
            "a",
            0,
            None,
            vec![ep(1, 4, Health::Healthy), ep(2, 1, Health::Healthy)],
        )]);
        let c = counts(LbPolicy::Random, &la, 10_000);
        // Expected 8,000; the bound is > 15 standard deviations (sd = 40).
        let heavy = c.get(&1).copied().unwrap_or(0);
        assert!((7_400..=8_600).contains(&heavy), "{c:?}");
    }

    #[test]
    fn least_request_avoids_busy_endpoints() {
        let la = healthy(&[1, 2]);
        let b = Balancers::new();
        // Hold every pick, so the counts are the loads P2C saw. The gap is a walk that moves
        // towards 0 with probability 3/4: past 20 has odds ~1e-7 over 1,000 picks, while
        // uniform random picks (sd ~32) would pass 20 about half the time.
        let held: Vec<Picked> = (0..1_000)
            .map(|_| b.pick("c", LbPolicy::LeastRequest, &la).unwrap())
            .collect();
        let on_first = held.iter().filter(|p| p.address.port() == 1).count();
        assert!(on_first.abs_diff(1_000 - on_first) <= 20, "{on_first}");
        drop(held);
        let c = counts(LbPolicy::LeastRequest, &la, 1000);
        assert_eq!(c.values().sum::<usize>(), 1000);
    }

    #[test]
    fn ring_hash_is_sticky_and_weighted() {
        let la = assignment(vec![locality(
            "a",
            0,
            None,
            vec![ep(1, 1, Health::Healthy), ep(2, 3, Health::Healthy)],
        )]);
        let source: Arc<dyn EndpointSource> = la.clone();
        let policy = LbPolicy::RingHash(RingHashConfig::default());
        let state = ClusterState::new("c");
        let now = Instant::now();
        let mut heavy = 0;
        for k in 0..4_000u64 {
            let hash = xxhash_rust::xxh64::xxh64(&k.to_le_bytes(), 0);
            let first = state.pick(policy, &source, Some(hash), None, now).unwrap();
            let again = state.pick(policy, &source, Some(hash), None, now).unwrap();
            assert_eq!(first.address, again.address);
            if first.address.port() == 2 {
                heavy += 1;
            }
        }
        // 3/4 of the keys on the endpoint of weight 3, within a few points.
        assert!((2_700..=3_300).contains(&heavy), "{heavy}");
        // No hash: random points, both endpoints used.
        let c = spread(&state, policy, &la, None, now, 400);
        assert_eq!(c.len(), 2, "{c:?}");
    }

    #[test]
    fn consecutive_failures_eject_and_time_brings_back() {
        let la = healthy(&[1, 2]);
        let state = ClusterState::new("c");
        let od = od(3, 50);
        let t0 = Instant::now();
        fail(&state, &la, 1, &od, t0, 2);
        let c = spread(&state, LbPolicy::RoundRobin, &la, Some(&od), t0, 10);
        assert_eq!(c.len(), 2, "two failures do not eject");
        fail(&state, &la, 1, &od, t0, 1);
        let c = spread(&state, LbPolicy::RoundRobin, &la, Some(&od), t0, 10);
        assert_eq!(c.get(&2), Some(&10), "{c:?}");
        let stats = state.host_stats(&SocketAddr::from(([127, 0, 0, 1], 1)), Some(&od), t0);
        assert_eq!(stats.ejected_until, Some(t0 + Duration::from_secs(30)));
        assert_eq!((stats.failures, stats.times_ejected), (3, 1));
        // Back after base_ejection_time, for every policy.
        let later = t0 + Duration::from_secs(30);
        let c = spread(&state, LbPolicy::Random, &la, Some(&od), later, 200);
        assert_eq!(c.len(), 2, "{c:?}");
        // A success resets the count: two more failures do not eject.
        fail(&state, &la, 1, &od, later, 2);
        let host = state
            .lock()
            .hosts
            .get(&SocketAddr::from(([127, 0, 0, 1], 1)))
            .cloned()
            .unwrap();
        state.record(&host, false, Some(&od), later);
        fail(&state, &la, 1, &od, later, 2);
        assert_eq!(
            spread(&state, LbPolicy::RoundRobin, &la, Some(&od), later, 10).len(),
            2
        );
    }

    #[test]
    fn max_ejection_percent_and_panic() {
        let la = healthy(&[1, 2]);
        let state = ClusterState::new("c");
        let half = od(1, 50);
        let now = Instant::now();
        fail(&state, &la, 1, &half, now, 1);
        fail(&state, &la, 2, &half, now, 1);
        // 50% of two endpoints: only the first is ejected.
        let c = spread(&state, LbPolicy::RoundRobin, &la, Some(&half), now, 10);
        assert_eq!(c.get(&2), Some(&10), "{c:?}");

        let all = od(1, 100);
        let state = ClusterState::new("c");
        fail(&state, &la, 1, &all, now, 1);
        fail(&state, &la, 2, &all, now, 1);
        // Both ejected: panic mode balances over both instead of failing.
        let c = spread(&state, LbPolicy::RoundRobin, &la, Some(&all), now, 10);
        assert_eq!((c.get(&1), c.get(&2)), (Some(&5), Some(&5)));
        let c = spread(
            &state,
            LbPolicy::RingHash(RingHashConfig::default()),
            &la,
            Some(&all),
            now,
            100,
        );
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn ejection_survives_new_assignments_that_keep_the_address() {
        let la = healthy(&[1, 2]);
        let state = ClusterState::new("c");
        let od = od(1, 50);
        let now = Instant::now();
        fail(&state, &la, 1, &od, now, 1);
        // A new assignment (another Arc) with the same addresses plus a new one.
        let next = healthy(&[1, 2, 3]);
        let c = spread(&state, LbPolicy::RoundRobin, &next, Some(&od), now, 10);
        assert_eq!(c.get(&1), None, "{c:?}");
        assert_eq!(c.values().sum::<usize>(), 10);
        // The address leaves and comes back: its record went with it.
        spread(
            &state,
            LbPolicy::RoundRobin,
            &healthy(&[2, 3]),
            Some(&od),
            now,
            1,
        );
        let c = spread(
            &state,
            LbPolicy::RoundRobin,
            &healthy(&[1, 2, 3]),
            Some(&od),
            now,
            30,
        );
        assert_eq!(c.get(&1), Some(&10), "{c:?}");
        // Outlier detection turned off brings ejected endpoints back.
        fail(&state, &la, 1, &od, now, 1);
        let c = spread(&state, LbPolicy::RoundRobin, &la, None, now, 10);
        assert_eq!(c.get(&1), Some(&5));
    }

    #[test]
    fn weighted_clusters_follow_weights() {
        let clusters = vec![
            ("a".to_owned(), 80),
            ("b".to_owned(), 20),
            ("z".to_owned(), 0),
        ];
        let mut a = 0;
        for _ in 0..10_000 {
            match pick_weighted(&clusters) {
                Some("a") => a += 1,
                Some("b") => {}
                other => panic!("{other:?}"),
            }
        }
        assert!((7_400..=8_600).contains(&a), "{a}");
        assert_eq!(pick_weighted(&[("x".to_owned(), 0)]), None);
    }
}
