//! What a client without verified credentials may make the server read.
//!
//! An anonymous stream (or one presenting a certificate not yet verified) names a tenant and
//! a mesh, and admitting it means loading that mesh from the store. Without a bound, a flood
//! of random names would be a flood of store reads. So, for meshes not already loaded:
//! - names found missing are remembered for [`LookupLimits::negative_ttl`] (at most
//!   [`LookupLimits::negative_max`] of them), and answered as missing without a read;
//! - every other load is one token of a replica-wide bucket of [`LookupLimits::burst`] tokens
//!   refilled at [`LookupLimits::per_second`]; with none left the stream is refused with
//!   `RESOURCE_EXHAUSTED`, so such streams cost at most that many mesh reads per second.
//!
//! A mesh some stream already holds costs nothing to join, so anonymous clients of a loaded
//! open mesh are never refused here; nor are streams with a proxy token, whose token is
//! checked before their mesh is read.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Tenant and mesh name (the cache's `MeshKey`).
type MeshKey = (String, String);

/// The bounds on loads caused by clients without verified credentials.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LookupLimits {
    /// Loads per second once the burst is spent, replica-wide.
    pub per_second: f64,
    /// Loads allowed at once.
    pub burst: u32,
    /// How long a missing mesh is answered as missing without a read. A mesh created in the
    /// meantime is served to such clients after this long.
    pub negative_ttl: Duration,
    /// Missing names remembered at most.
    pub negative_max: usize,
}

impl Default for LookupLimits {
    /// 50 loads a second (burst 100): after a restart, the anonymous and certificate clients
    /// reconnecting load each of their meshes once (a replica serving more meshes than that
    /// to such clients admits them over a few seconds, the refused ones retrying), after which
    /// a loaded mesh is free to join; a flood of made-up names costs the database at most 50
    /// mesh reads a second.
    fn default() -> Self {
        Self {
            per_second: 50.0,
            burst: 100,
            negative_ttl: Duration::from_secs(5),
            negative_max: 10_000,
        }
    }
}

/// Why a load was not attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The mesh was found missing a moment ago.
    Missing,
    /// The bucket is empty.
    Busy,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    at: Instant,
    missing: HashMap<MeshKey, Instant>,
}

/// The guard in front of loads for unverified clients; one per snapshot cache.
#[derive(Debug)]
pub(crate) struct UnverifiedLookups {
    limits: LookupLimits,
    state: Mutex<State>,
}

impl UnverifiedLookups {
    pub(crate) fn new(limits: LookupLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(State {
                tokens: f64::from(limits.burst),
                at: Instant::now(),
                missing: HashMap::new(),
            }),
        }
    }

    pub(crate) fn limits(&self) -> &LookupLimits {
        &self.limits
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `key`, not loaded, may be read at `now` (taking a token if so).
    pub(crate) fn before_load(&self, key: &MeshKey, now: Instant) -> Result<(), Refused> {
        let mut s = self.state();
        if let Some(at) = s.missing.get(key) {
            if now.saturating_duration_since(*at) < self.limits.negative_ttl {
                return Err(Refused::Missing);
            }
            s.missing.remove(key);
        }
        let elapsed = now.saturating_duration_since(s.at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.limits.per_second).min(f64::from(self.limits.burst));
        s.at = now;
        if s.tokens < 1.0 {
            return Err(Refused::Busy);
        }
        s.tokens -= 1.0;
        Ok(())
    }

    /// Remembers that `key` was found missing at `now`.
    pub(crate) fn missing(&self, key: MeshKey, now: Instant) {
        let ttl = self.limits.negative_ttl;
        let mut s = self.state();
        if s.missing.len() >= self.limits.negative_max {
            s.missing
                .retain(|_, at| now.saturating_duration_since(*at) < ttl);
            if s.missing.len() >= self.limits.negative_max {
                s.missing.clear();
            }
        }
        s.missing.insert(key, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(m: &str) -> MeshKey {
        ("acme".to_owned(), m.to_owned())
    }

    #[test]
    fn loads_are_bounded_and_missing_names_remembered() {
        let g = UnverifiedLookups::new(LookupLimits {
            per_second: 2.0,
            burst: 2,
            negative_ttl: Duration::from_secs(5),
            negative_max: 2,
        });
        let t0 = Instant::now();
        assert_eq!(g.before_load(&key("a"), t0), Ok(()));
        g.missing(key("a"), t0);
        assert_eq!(g.before_load(&key("a"), t0), Err(Refused::Missing));
        assert_eq!(g.before_load(&key("b"), t0), Ok(()));
        assert_eq!(g.before_load(&key("c"), t0), Err(Refused::Busy));
        // Half a second brings one token back.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(g.before_load(&key("c"), t1), Ok(()));
        assert_eq!(g.before_load(&key("d"), t1), Err(Refused::Busy));
        // A remembered name is read again after the TTL.
        let t2 = t0 + Duration::from_secs(6);
        assert_eq!(g.before_load(&key("a"), t2), Ok(()));
        // The memory is bounded.
        for m in ["x", "y", "z"] {
            g.missing(key(m), t2);
        }
        assert!(g.state().missing.len() <= 2);
    }
}
