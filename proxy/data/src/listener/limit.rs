//! The process's cap on open downstream connections, over every listener and worker: what
//! Envoy's overload manager calls `global_downstream_max_connections`.
//!
//! Why: every open connection holds a task and its buffers. The listener's HTTP limits bound
//! what one connection may hold (header sizes, HTTP/2 streams and windows), and this bounds
//! how many there are, so that the proxy's memory under load is set by its configuration
//! and not by how many clients connect. A connection over the cap is accepted and closed at
//! once, as Envoy does. It is counted in `switchboard_proxy_listener_connections_overflow_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Shared by every listener of the process; cloning shares the count.
#[derive(Clone, Debug)]
pub struct ConnectionLimit(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    max: usize,
    open: AtomicUsize,
    /// When the last "limit reached" warning was logged, in ms since `since` (`u64::MAX`:
    /// never), so that a flood of refused clients logs one line a second.
    warned_at: AtomicU64,
    since: Instant,
}

impl ConnectionLimit {
    /// At most `max` downstream connections open at once.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Inner {
            max,
            open: AtomicUsize::new(0),
            warned_at: AtomicU64::new(u64::MAX),
            since: Instant::now(),
        }))
    }

    /// No cap, for listeners served outside the proxy binary (tests, [`super::serve`]).
    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.0.max
    }

    /// Downstream connections open now.
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Relaxed)
    }

    /// A place for one more connection, held until the permit drops; `None` at the cap.
    pub(super) fn try_acquire(&self) -> Option<Permit> {
        let max = self.0.max;
        self.0
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }

    /// Whether a refusal now should be logged: at most once a second.
    pub(super) fn should_warn(&self) -> bool {
        let now = u64::try_from(self.0.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.0.warned_at.load(Ordering::Relaxed);
        (last == u64::MAX || now.saturating_sub(last) >= 1000)
            && self
                .0
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// One open connection's place under the cap, given back when the connection's task ends.
pub(super) struct Permit(ConnectionLimit);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_stop_at_the_cap_and_come_back_when_dropped() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_acquire();
        let b = limit.try_acquire();
        assert!(a.is_some() && b.is_some());
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.open(), 2);
        drop(a);
        assert_eq!(limit.open(), 1);
        assert!(limit.clone().try_acquire().is_some());
        assert_eq!(limit.open(), 1, "the temporary permit was dropped");
    }

    #[test]
    fn a_zero_cap_admits_nothing() {
        let limit = ConnectionLimit::new(0);
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn refusals_warn_once_a_second() {
        let limit = ConnectionLimit::new(0);
        assert!(limit.should_warn());
        assert!(!limit.should_warn());
    }
}
