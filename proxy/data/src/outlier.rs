//! Passive outlier detection, Envoy's consecutive-5xx detector: the per-endpoint ejection
//! record and the rules that decide whether and for how long an endpoint is ejected. The
//! cluster state keeps one [`HostOutlier`] per endpoint address, counts consecutive
//! failures, and skips ejected endpoints.
//!
//! Rules, as Envoy's:
//! - an endpoint is ejected once its consecutive failures (5xx responses, connect failures,
//!   resets, timeouts) reach `consecutive_5xx`, with probability `enforcing_consecutive_5xx`%;
//! - only while `(ejected + 1) / endpoints ≤ max_ejection_percent` (or, with
//!   `always_eject_one_host`, when none is ejected);
//! - for `base_ejection_time × k`, capped at `max_ejection_time`, where `k` goes up by one at
//!   each ejection and down by one for each `interval` the endpoint then stays in service.
//!
//! Unlike Envoy, which unejects on its `interval` timer, an endpoint comes back as soon as
//! its time is up: the balancer checks lazily, on the next pick after that time.

use std::time::{Duration, Instant};

use switchboard_proxy_xds::config::cluster::OutlierDetection;

/// The ejection record of one endpoint address; kept while the address stays in the
/// cluster, across EDS updates and config swaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostOutlier {
    /// When the current ejection ends; `None` while in service.
    pub ejected_until: Option<Instant>,
    /// How many times the endpoint has been ejected.
    pub times_ejected: u32,
    /// Envoy's ejection time multiplier (`k` above).
    backoff: u32,
    last_unejected: Option<Instant>,
}

impl HostOutlier {
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    /// Ejects the endpoint at `now` and returns when the ejection ends.
    pub fn eject(&mut self, od: &OutlierDetection, now: Instant) -> Instant {
        // The multiplier decays by one per interval spent in service since the last
        // ejection ended (Envoy decrements it on each interval tick).
        if let Some(back) = self.last_unejected
            && !od.interval.is_zero()
        {
            let intervals = now.saturating_duration_since(back).as_nanos() / od.interval.as_nanos();
            let intervals = u32::try_from(intervals).unwrap_or(u32::MAX);
            self.backoff = self.backoff.saturating_sub(intervals);
        }
        let max = od.max_ejection_time.max(od.base_ejection_time);
        if od.base_ejection_time.saturating_mul(self.backoff)
            < max.saturating_add(od.base_ejection_time)
        {
            self.backoff = self.backoff.saturating_add(1);
        }
        let duration = ejection_time(od, self.backoff);
        let until = now.checked_add(duration).unwrap_or(now);
        self.ejected_until = Some(until);
        self.times_ejected = self.times_ejected.saturating_add(1);
        until
    }

    /// Brings the endpoint back into service at `now`.
    pub fn uneject(&mut self, now: Instant) {
        self.ejected_until = None;
        self.last_unejected = Some(now);
    }

    /// Whether the current ejection is over at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| until <= now)
    }
}

/// `base_ejection_time × backoff`, capped at `max_ejection_time`.
fn ejection_time(od: &OutlierDetection, backoff: u32) -> Duration {
    let max = od.max_ejection_time.max(od.base_ejection_time);
    od.base_ejection_time.saturating_mul(backoff).min(max)
}

/// Whether one more endpoint may be ejected when `ejected` of `endpoints` already are.
pub fn may_eject(od: &OutlierDetection, ejected: usize, endpoints: usize) -> bool {
    if endpoints == 0 {
        return false;
    }
    let percent = 100.0 * (ejected + 1) as f64 / endpoints as f64;
    percent <= f64::from(od.max_ejection_percent.min(100))
        || (od.always_eject_one_host && ejected == 0)
}

/// Whether a detected outlier is actually ejected (`enforcing_consecutive_5xx`%).
pub fn enforced(od: &OutlierDetection) -> bool {
    use rand::Rng;
    od.enforcing_consecutive_5xx >= 100
        || rand::rng().random_range(0..100) < od.enforcing_consecutive_5xx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od(base_ms: u64, max_ms: u64, interval_ms: u64) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            interval: Duration::from_millis(interval_ms),
            base_ejection_time: Duration::from_millis(base_ms),
            max_ejection_time: Duration::from_millis(max_ms),
            max_ejection_percent: 50,
            enforcing_consecutive_5xx: 100,
            always_eject_one_host: false,
        }
    }

    #[test]
    fn ejection_time_backs_off_up_to_the_maximum() {
        let od = od(100, 350, 1_000_000);
        let mut h = HostOutlier::default();
        let t0 = Instant::now();
        let mut now = t0;
        let mut got = Vec::new();
        for _ in 0..5 {
            let until = h.eject(&od, now);
            got.push(until - now);
            assert!(!h.expired(until - Duration::from_millis(1)));
            assert!(h.expired(until));
            h.uneject(until);
            now = until;
        }
        let ms: Vec<u128> = got.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 300, 350, 350]);
        assert_eq!(h.times_ejected, 5);
    }

    #[test]
    fn backoff_decays_while_in_service() {
        let od = od(100, 10_000, 1_000);
        let mut h = HostOutlier::default();
        let t0 = Instant::now();
        let u1 = h.eject(&od, t0);
        h.uneject(u1);
        let u2 = h.eject(&od, u1);
        assert_eq!(u2 - u1, Duration::from_millis(200));
        h.uneject(u2);
        // Two intervals in service: the multiplier drops from 2 to 0, then goes to 1.
        let t3 = u2 + Duration::from_millis(2_000);
        let u3 = h.eject(&od, t3);
        assert_eq!(u3 - t3, Duration::from_millis(100));
    }

    #[test]
    fn max_ejection_percent_as_envoy() {
        let half = od(1, 1, 1);
        // 2 endpoints, 50%: one may go, not both.
        assert!(may_eject(&half, 0, 2));
        assert!(!may_eject(&half, 1, 2));
        let ten = OutlierDetection {
            max_ejection_percent: 10,
            ..half
        };
        // 10% of 2 endpoints is less than one: none, unless always_eject_one_host.
        assert!(!may_eject(&ten, 0, 2));
        assert!(may_eject(&ten, 0, 10));
        assert!(!may_eject(&ten, 1, 10));
        let one = OutlierDetection {
            always_eject_one_host: true,
            ..ten
        };
        assert!(may_eject(&one, 0, 2));
        assert!(!may_eject(&one, 1, 2));
        let all = OutlierDetection {
            max_ejection_percent: 100,
            ..half
        };
        assert!(may_eject(&all, 1, 2));
        assert!(!may_eject(&all, 0, 0));
    }
}
