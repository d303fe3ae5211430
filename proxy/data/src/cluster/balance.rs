//! Pure endpoint choice: the candidate set of a load assignment and the pick among it, and
//! weighted-cluster choice per request. No locks or clocks here: the cluster state holds the
//! table between requests and decides when to rebuild it.
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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rand::Rng;
use switchboard_proxy_xds::config::cluster::{LbPolicy, RingHashConfig};
use switchboard_proxy_xds::config::endpoint::{Endpoint, Health, LoadAssignment};

use super::endpoint::HostState;
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

/// The candidate set of one cluster, built once per change of its endpoints, policy or
/// ejections, with the round robin and ring state that go with it.
#[derive(Debug)]
pub(super) struct Table {
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

impl Table {
    /// The table for `la` (empty without one) under `policy`; `hosts` has the state of every
    /// address of `la`, and `ejected` says which of them outlier detection took out.
    pub(super) fn build(
        la: Option<&LoadAssignment>,
        hosts: &HashMap<SocketAddr, Arc<HostState>>,
        ejected: &dyn Fn(&SocketAddr) -> bool,
        policy: LbPolicy,
    ) -> Self {
        let weighted = la.map(|la| candidates(la, ejected)).unwrap_or_default();
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
    }

    /// The endpoint for a request hashed to `hash` (ring hash only); `None` when there is
    /// no candidate.
    #[inline]
    pub(super) fn pick(&mut self, policy: LbPolicy, hash: Option<u64>) -> Option<&Arc<HostState>> {
        let i = self.choose(policy, hash)?;
        self.candidates.get(i).map(|c| &c.host)
    }

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

fn ring(candidates: &[Candidate], config: &RingHashConfig) -> Option<Ring> {
    let points: Vec<(SocketAddr, f64)> = candidates
        .iter()
        .map(|c| (c.host.address, c.weight))
        .collect();
    Ring::build(&points, config)
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
    use super::*;

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
