//! Admission control for the expensive part of a stream: its initial responses.
//!
//! After a restart every proxy reconnects at once, and each new stream builds and writes
//! the whole configuration it subscribes to. [`InitialPushes`] bounds how many streams do
//! that at the same time; the others wait their turn in arrival order (tokio's semaphore is
//! fair), already admitted, so a storm costs queueing time instead of memory and CPU for
//! thousands of responses in flight. A stream gives its permit back once it has written
//! everything owed for its first snapshot, when it ends, or after [`INITIAL_PUSH_HOLD`],
//! whichever comes first, so a client that stops reading cannot keep a permit.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// The default bound on streams writing their initial responses at once.
pub const DEFAULT_MAX_CONCURRENT_INITIAL_PUSHES: usize = 256;

/// How long a stream may hold its permit at most.
pub(crate) const INITIAL_PUSH_HOLD: Duration = Duration::from_secs(10);

/// The permits for initial pushes, shared by every stream of the server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InitialPushes {
    permits: Arc<Semaphore>,
    max: usize,
}

impl InitialPushes {
    /// At most `max` streams (at least one) push their initial responses at once.
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Waits for a turn (first come, first served) and holds it until the returned
    /// [`InitialPush`] is dropped or expires.
    pub async fn acquire(&self) -> InitialPush {
        let waiting = crate::metrics::InitialPushWaiting::new();
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        drop(waiting);
        InitialPush {
            _permit: permit,
            deadline: Box::pin(tokio::time::sleep(INITIAL_PUSH_HOLD)),
        }
    }

    /// Streams pushing their initial responses now.
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// A stream's turn to push its initial responses; dropping it lets the next stream go.
#[derive(Debug)]
pub struct InitialPush {
    /// `None` only if the semaphore were closed, which it never is: the stream then goes
    /// ahead unbounded rather than stall.
    _permit: Option<OwnedSemaphorePermit>,
    deadline: Pin<Box<Sleep>>,
}

/// Resolves when the stream's turn has lasted [`INITIAL_PUSH_HOLD`]; never without a turn.
pub(crate) async fn expired(turn: &mut Option<InitialPush>) {
    match turn {
        Some(t) => t.deadline.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Polls `future` once; `Some` if it completed.
    fn now<F: std::future::Future>(future: F) -> Option<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut future = std::pin::pin!(future);
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn at_most_max_streams_push_at_once_and_the_next_goes_when_one_finishes() {
        let pushes = InitialPushes::new(2);
        let a = pushes.acquire().await;
        let b = pushes.acquire().await;
        assert_eq!(pushes.in_flight(), 2);
        let third = pushes.acquire();
        tokio::pin!(third);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            third.as_mut().poll(&mut cx).is_pending(),
            "a third turn was granted"
        );
        drop(a);
        let c = match third.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(c) => c,
            std::task::Poll::Pending => panic!("a freed turn was not handed on"),
        };
        assert_eq!(pushes.in_flight(), 2);
        drop((b, c));
        assert_eq!(pushes.in_flight(), 0);
    }

    #[tokio::test]
    async fn waiting_streams_get_their_turn_in_arrival_order() {
        let pushes = InitialPushes::new(1);
        let first = pushes.acquire().await;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut waiting: Vec<_> = (0..5).map(|_| Box::pin(pushes.acquire())).collect();
        for w in &mut waiting {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        drop(first);
        // Each freed turn goes to the earliest waiter, never to a later one.
        for i in 0..waiting.len() {
            for later in &mut waiting[i + 1..] {
                assert!(
                    later.as_mut().poll(&mut cx).is_pending(),
                    "a later waiter went first"
                );
            }
            let turn = now(waiting[i].as_mut()).expect("the earliest waiter's turn");
            drop(turn);
        }
    }

    #[tokio::test]
    async fn zero_permits_means_one() {
        let pushes = InitialPushes::new(0);
        let t = pushes.acquire().await;
        assert_eq!(pushes.in_flight(), 1);
        drop(t);
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_expires_after_the_hold() {
        let pushes = InitialPushes::new(1);
        let mut turn = Some(pushes.acquire().await);
        assert!(now(expired(&mut turn)).is_none());
        tokio::time::advance(INITIAL_PUSH_HOLD).await;
        assert!(now(expired(&mut turn)).is_some());
        let mut none: Option<InitialPush> = None;
        assert!(now(expired(&mut none)).is_none());
    }
}
