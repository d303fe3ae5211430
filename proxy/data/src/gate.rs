//! A gate in front of futures that rarely finish, polled beside one that finishes often.
//!
//! A connection's task is woken about twice per request, by the connection itself. Polled
//! with `select!`, every wake-up also polls the drain and kill tokens and the watchdog's
//! timer and `Notify`, each of which takes a lock or re-registers a waker, although none of
//! them is what woke the task. Behind a [`Gate`], those futures are polled with a waker of
//! their own, and only after that waker fired.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// Polls the futures behind it only when one of them woke it (or when told to, after the
/// set of futures changed).
pub(crate) struct Gate {
    shared: Arc<Shared>,
    /// The waker the gated futures see: it opens the gate and wakes the task.
    waker: Waker,
}

struct Shared {
    open: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.open.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    /// A gate that is open, so that the futures behind it are polled once, to register.
    pub(crate) fn new() -> Self {
        let shared = Arc::new(Shared {
            open: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            waker: Waker::from(shared.clone()),
            shared,
        }
    }

    /// Opens the gate: the next [`Self::poll`] polls behind it. Needed when a future behind
    /// it was replaced, since the new one has not registered anything yet.
    pub(crate) fn open(&self) {
        self.shared.open.store(true, Ordering::Release);
    }

    /// Runs `poll` with the gate's waker if a future behind the gate woke since the last
    /// time; `Pending` otherwise.
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // The task's waker first, so that a wake-up after the check below is not lost.
        self.shared.task.register(cx.waker());
        if !self.shared.open.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        poll(&mut Context::from_waker(&self.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::pin::pin;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    /// A notification behind the gate reaches the task, and the gated future is not polled
    /// while nothing behind the gate woke.
    #[tokio::test]
    async fn wakes_the_task_only_through_its_own_waker() {
        let gate = Gate::new();
        let notify = Arc::new(Notify::new());
        let mut notified = pin!(notify.notified());
        let mut polls = 0;
        let mut tick = pin!(tokio::time::sleep(Duration::from_millis(20)));
        let notifier = notify.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            notifier.notify_waiters();
        });
        let mut ticked = false;
        poll_fn(|cx| {
            if !ticked && tick.as_mut().poll(cx).is_ready() {
                // Woken by the other future: the gate stays shut.
                ticked = true;
                cx.waker().wake_by_ref();
            }
            gate.poll(cx, |cx| {
                polls += 1;
                notified.as_mut().poll(cx)
            })
        })
        .await;
        assert!(ticked);
        assert_eq!(polls, 2, "polled once to register and once when notified");
    }

    /// After [`Gate::open`], the next poll goes through even though nothing woke the gate.
    #[test]
    fn open_lets_the_next_poll_through() {
        let gate = Gate::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(gate.poll(&mut cx, |_| Poll::Ready(1)).is_ready());
        assert!(gate.poll(&mut cx, |_| Poll::Ready(2)).is_pending());
        gate.open();
        assert_eq!(gate.poll(&mut cx, |_| Poll::Ready(3)), Poll::Ready(3));
    }
}
