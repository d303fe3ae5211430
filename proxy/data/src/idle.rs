//! Inactivity timers: a TCP proxy connection's `idle_timeout` and the HTTP connection
//! manager's `stream_idle_timeout`.
//!
//! `stream_idle_timeout` (Envoy's default 5 min) ends a request whose stream moved nothing,
//! in either direction, for that long: answered 408 before its response headers, and reset
//! after them (an HTTP/2 RST_STREAM, or the HTTP/1 connection closed), as Envoy does. The
//! access log shows `SI`. Without it, a request on a route with no timeout to an upstream
//! that never answers would hold its stream, and its memory, forever. The connection's
//! watchdog times it (see [`StreamIdle`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// When bytes last moved, in milliseconds since the start.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When it is idle for `timeout`, if nothing moves until then.
    fn deadline(&self, timeout: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + timeout
    }

    /// Resolves once nothing moved for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = self.deadline(timeout);
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One request's `stream_idle_timeout`, shared by the request body, the handler and the
/// response body, which all count as activity.
///
/// It has no timer of its own: the watchdog of its connection (`listener::http_conn`), one
/// timer per connection, checks the streams in flight against [`StreamIdle::deadline`] and
/// fires those idle for too long ([`StreamIdle::fire`]). Touching a stream is an atomic
/// store; a timer per request cost a timer-wheel entry, an allocation and a wake-up each.
#[derive(Debug)]
pub(crate) struct StreamIdle {
    activity: Activity,
    timeout: Duration,
    fired: AtomicBool,
    /// The task to wake when it fires: the handler's before the response headers, then the
    /// response body's.
    waker: Mutex<Option<Waker>>,
}

impl StreamIdle {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            activity: Activity::new(),
            timeout,
            fired: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    pub(crate) fn touch(&self) {
        self.activity.touch();
    }

    /// When the stream times out if nothing moves until then.
    pub(crate) fn deadline(&self) -> Instant {
        self.activity.deadline(self.timeout)
    }

    /// Marks the stream timed out and wakes the task waiting on it.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the timeout ended this stream (for the access log's `SI`).
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Ready once the stream has timed out; otherwise arranges for `cx` to be woken when it
    /// does.
    pub(crate) fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired() {
            return Poll::Ready(());
        }
        {
            let mut waker = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
            match &*waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
        }
        // Fired between the first check and the registration: its wake found no waker.
        if self.fired() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
