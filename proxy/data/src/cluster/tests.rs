//! The cluster state's behaviour through its own API: endpoint choice (through the
//! registry, as a request reaches it), outlier ejection, and circuit breaker slots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_proxy_xds::config::cluster::{
    CircuitBreakers, LbPolicy, OutlierDetection, RetryBudget, RingHashConfig,
};
use switchboard_proxy_xds::config::endpoint::{
    Endpoint, Health, LoadAssignment, Locality, LocalityEndpoints,
};

use super::breakers::{Overflow, Threshold};
use super::endpoint::{EndpointSource, Picked};
use super::registry::ClusterRegistry;
use super::state::ClusterState;

fn ep(port: u16, weight: u32, health: Health) -> Endpoint {
    Endpoint {
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        weight,
        health,
        transport_labels: Default::default(),
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

/// One locality (`a`, priority 0, no weight) of `eps`.
fn one_locality(eps: Vec<Endpoint>) -> Arc<LoadAssignment> {
    assignment(vec![locality("a", 0, None, eps)])
}

fn healthy(ports: &[u16]) -> Arc<LoadAssignment> {
    one_locality(ports.iter().map(|p| ep(*p, 1, Health::Healthy)).collect())
}

/// Counts picks per port over `n` picks.
fn counts(policy: LbPolicy, la: &Arc<LoadAssignment>, n: usize) -> HashMap<u16, usize> {
    let b = ClusterRegistry::new();
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
        .host(&SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    for _ in 0..n {
        state.record(&host, true, Some(od), now);
    }
}

#[test]
fn weighted_round_robin_is_exact() {
    let la = one_locality(vec![
        ep(1, 3, Health::Healthy),
        ep(2, 1, Health::Healthy),
        ep(3, 5, Health::Unhealthy),
    ]);
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
    let draining = one_locality(vec![ep(1, 1, Health::Draining)]);
    assert!(
        ClusterRegistry::new()
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
    let la = one_locality(vec![ep(1, 4, Health::Healthy), ep(2, 1, Health::Healthy)]);
    let c = counts(LbPolicy::Random, &la, 10_000);
    // Expected 8,000; the bound is > 15 standard deviations (sd = 40).
    let heavy = c.get(&1).copied().unwrap_or(0);
    assert!((7_400..=8_600).contains(&heavy), "{c:?}");
}

#[test]
fn least_request_avoids_busy_endpoints() {
    let la = healthy(&[1, 2]);
    let b = ClusterRegistry::new();
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
    let la = one_locality(vec![ep(1, 1, Health::Healthy), ep(2, 3, Health::Healthy)]);
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
    let host = state.host(&SocketAddr::from(([127, 0, 0, 1], 1))).unwrap();
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

fn shared_state() -> Arc<ClusterState> {
    Arc::new(ClusterState::new("c"))
}

#[test]
fn max_requests_and_release() {
    let s = shared_state();
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
    let s = shared_state();
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
    let s = shared_state();
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
