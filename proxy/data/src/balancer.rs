//! Endpoint choice per cluster, and weighted-cluster choice per request.
//!
//! The candidate set follows Envoy: healthy endpoints only, from the lowest priority level
//! that has any; an endpoint's share is its weight times its locality's weight (when every
//! locality of that level has one) divided by the locality's total endpoint weight, so a
//! locality gets its share however many endpoints it has.
//!
//! Balancer state (round-robin position, requests in flight) lives per cluster name and is
//! rebuilt only when the cluster's load assignment or policy changes, so a config swap that
//! leaves a cluster alone keeps its state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rand::Rng;
use switchboard_proxy_xds::config::cluster::{Cluster, Discovery, LbPolicy};
use switchboard_proxy_xds::config::endpoint::{Health, LoadAssignment};

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

/// The balancers of every cluster, keyed by cluster name; shared by all requests.
#[derive(Debug, Default)]
pub struct Balancers {
    clusters: Mutex<HashMap<String, Arc<ClusterBalancer>>>,
}

impl Balancers {
    pub fn new() -> Self {
        Self::default()
    }

    /// An endpoint of `cluster` under `policy`, or `None` when it has no healthy endpoint.
    /// Keep the returned [`Picked`] alive while the request is in flight: least request
    /// counts it.
    ///
    /// `assignment` is the `Arc` that owns the endpoints (the EDS resource, or the cluster
    /// itself for a static one): state is rebuilt when that `Arc` changes.
    pub fn pick<A: EndpointSource>(
        &self,
        cluster: &str,
        policy: LbPolicy,
        assignment: &Arc<A>,
    ) -> Option<Picked> {
        let source: Arc<dyn EndpointSource> = assignment.clone();
        let balancer = {
            let mut map = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
            let fresh = || Arc::new(ClusterBalancer::new(policy, source.clone()));
            let entry = map.entry(cluster.to_owned()).or_insert_with(fresh);
            if entry.policy != policy || !Arc::ptr_eq(&entry.source, &source) {
                *entry = fresh();
            }
            entry.clone()
        };
        balancer.pick()
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

/// A chosen endpoint; dropping it ends the request for least-request accounting.
#[derive(Debug)]
pub struct Picked {
    pub address: SocketAddr,
    active: Arc<AtomicUsize>,
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Candidate {
    address: SocketAddr,
    weight: f64,
    active: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct ClusterBalancer {
    policy: LbPolicy,
    /// Held so that the pointer compared in [`Balancers::pick`] cannot be reused.
    source: Arc<dyn EndpointSource>,
    candidates: Vec<Candidate>,
    /// Smooth weighted round robin (nginx's): current weight per candidate.
    current: Mutex<Vec<f64>>,
}

impl ClusterBalancer {
    fn new(policy: LbPolicy, source: Arc<dyn EndpointSource>) -> Self {
        let candidates = source.load_assignment().map(candidates).unwrap_or_default();
        let current = Mutex::new(vec![0.0; candidates.len()]);
        Self {
            policy,
            source,
            candidates,
            current,
        }
    }

    fn pick(&self) -> Option<Picked> {
        let i = match self.candidates.len() {
            0 => return None,
            1 => 0,
            n => match self.policy {
                // Ring hash needs a request hash the router does not pass yet: round robin.
                LbPolicy::RoundRobin | LbPolicy::RingHash => self.round_robin(),
                LbPolicy::Random => self.random(),
                LbPolicy::LeastRequest => {
                    let mut rng = rand::rng();
                    let a = rng.random_range(0..n);
                    let b = rng.random_range(0..n);
                    let load = |i: usize| {
                        self.candidates
                            .get(i)
                            .map_or(usize::MAX, |c| c.active.load(Ordering::Relaxed))
                    };
                    if load(b) < load(a) { b } else { a }
                }
            },
        };
        let c = self.candidates.get(i)?;
        c.active.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            address: c.address,
            active: c.active.clone(),
        })
    }

    fn round_robin(&self) -> usize {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let total: f64 = self.candidates.iter().map(|c| c.weight).sum();
        let mut best = 0;
        let mut best_value = f64::MIN;
        for (i, (cur, c)) in current.iter_mut().zip(&self.candidates).enumerate() {
            *cur += c.weight;
            if *cur > best_value {
                best = i;
                best_value = *cur;
            }
        }
        if let Some(b) = current.get_mut(best) {
            *b -= total;
        }
        best
    }

    fn random(&self) -> usize {
        let total: f64 = self.candidates.iter().map(|c| c.weight).sum();
        let mut x = rand::rng().random_range(0.0..total);
        for (i, c) in self.candidates.iter().enumerate() {
            if x < c.weight {
                return i;
            }
            x -= c.weight;
        }
        self.candidates.len() - 1
    }
}

/// Healthy endpoints of the lowest priority that has any, with their effective weights.
fn candidates(la: &LoadAssignment) -> Vec<Candidate> {
    let healthy = |l: &&switchboard_proxy_xds::config::endpoint::LocalityEndpoints| {
        l.endpoints.iter().any(|e| e.health == Health::Healthy)
    };
    let Some(priority) = la
        .localities
        .iter()
        .filter(healthy)
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
        let endpoints: Vec<_> = l
            .endpoints
            .iter()
            .filter(|e| e.health == Health::Healthy)
            .collect();
        let total: f64 = endpoints.iter().map(|e| f64::from(e.weight.max(1))).sum();
        for e in endpoints {
            let own = f64::from(e.weight.max(1));
            let weight = match l.weight {
                Some(lw) if locality_weighted => f64::from(lw) * own / total,
                _ => own,
            };
            if weight > 0.0 {
                out.push(Candidate {
                    address: e.address,
                    weight,
                    active: Arc::new(AtomicUsize::new(0)),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proxy_xds::config::endpoint::{Endpoint, Locality, LocalityEndpoints};

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
    fn lowest_healthy_priority_wins() {
        let la = assignment(vec![
            locality("p0", 0, None, vec![ep(1, 1, Health::Unhealthy)]),
            locality("p1", 1, None, vec![ep(2, 1, Health::Healthy)]),
            locality("p2", 2, None, vec![ep(3, 1, Health::Healthy)]),
        ]);
        assert_eq!(counts(LbPolicy::RoundRobin, &la, 10).get(&2), Some(&10));
        let none = assignment(vec![locality(
            "a",
            0,
            None,
            vec![ep(1, 1, Health::Draining)],
        )]);
        assert!(
            Balancers::new()
                .pick("c", LbPolicy::Random, &none)
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
        let la = assignment(vec![locality(
            "a",
            0,
            None,
            vec![ep(1, 1, Health::Healthy), ep(2, 1, Health::Healthy)],
        )]);
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
