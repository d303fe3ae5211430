//! Inactivity timers: a TCP proxy connection's `idle_timeout` and the HTTP connection
//! manager's `stream_idle_timeout`.
//!
//! `stream_idle_timeout` (Envoy's default 5 min) ends a request whose stream moved nothing,
//! in either direction, for that long: answered 408 before its response headers, and reset
//! after them (an HTTP/2 RST_STREAM, or the HTTP/1 connection closed), as Envoy does. The
//! access log shows `SI`. Without it, a request on a route with no timeout to an upstream
//! that never answers would hold its stream, and its memory, forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

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

/// One request's `stream_idle_timeout`, shared (as a request extension) by the request
/// body, the handler and the response body, which all count as activity.
#[derive(Debug)]
pub(crate) struct StreamIdle {
    activity: Activity,
    timeout: Duration,
    fired: AtomicBool,
}

impl StreamIdle {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            activity: Activity::new(),
            timeout,
            fired: AtomicBool::new(false),
        }
    }

    pub(crate) fn touch(&self) {
        self.activity.touch();
    }

    /// Resolves, marking the stream timed out, once it is idle for the timeout.
    pub(crate) async fn expired(&self) {
        self.activity.idle_for(self.timeout).await;
        self.fired.store(true, Ordering::Relaxed);
    }

    /// Whether the timeout ended this stream (for the access log's `SI`).
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::Relaxed)
    }
}

/// The poll-based form of [`StreamIdle::expired`], for a response body.
#[derive(Debug)]
pub(crate) struct IdleTimer {
    idle: std::sync::Arc<StreamIdle>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    pub(crate) fn new(idle: std::sync::Arc<StreamIdle>) -> Self {
        Self { idle, sleep: None }
    }

    pub(crate) fn touch(&self) {
        self.idle.touch();
    }

    /// Whether the stream has been idle for the timeout; otherwise arranges for `cx` to be
    /// woken when it would be.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let deadline = self.idle.activity.deadline(self.idle.timeout);
            if Instant::now() >= deadline {
                self.idle.fired.store(true, Ordering::Relaxed);
                return true;
            }
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
    }
}
