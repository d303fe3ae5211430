//! What a worker keeps for its HTTP/1 connections while they wait for a request: read
//! buffers, and boxes for requests' futures.
//!
//! Why: a keep-alive connection spends most of its life waiting for its next request. Held
//! through that wait, these two were 10 KiB of every idle connection's 16. A connection now
//! gives them to its worker when a read finds nothing, and takes them back when bytes come:
//! a pop and a push on the worker's own lists (workers are threads, so there is no lock).
//! A first cut of this path allocated them, and a header map, for each request: about
//! 1,000 instructions a request more (loadtest/proxy-bench-log.md, twentieth session).
//! nginx frees a keep-alive connection's buffers for the same reason. The memory a worker
//! holds for requests so follows how many it serves at once, not how many connections are
//! open.
//!
//! A worker keeps at most [`MAX_SPARE`] of each; a connection whose things find the list
//! full keeps them, as all connections did before.
//!
//! Requests that hyper's servers serve (HTTP/2, and HTTP/1 after a handover) run in the same
//! boxes ([`InSlot`]), for another reason: hyper moves each request's future by value, into
//! its stream and then into a new task, copying all of it each time, and the handler's
//! future is over 5 KiB. A boxed one is a pointer: over HTTP/2 at saturation, `memmove` was
//! 18% of the proxy's CPU before.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;

/// A buffer's room: what one read asks for.
pub(super) const BUFFER: usize = 4096;
/// Spares of each kind a worker keeps: at most 256 KiB of buffers and about 400 KiB of
/// boxes.
const MAX_SPARE: usize = 64;

thread_local! {
    static BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    /// Boxes for requests' futures: a `Vec<Slot<F>>` for the one type `F` the handler's
    /// future has, held as `Any` because that type has no name.
    static SLOTS: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// A box a request's future runs in; `None` between requests.
pub(super) type Slot<F> = Pin<Box<Option<F>>>;

/// An empty buffer: one of the worker's spares when it has one (room for a quarter of
/// [`BUFFER`] at least), else a new one with room for [`BUFFER`].
pub(super) fn take() -> BytesMut {
    BUFFERS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(BUFFER))
}

/// Gives `buf`'s storage to the worker when it is empty, leaving `buf` without any.
///
/// Requests' heads are split off the front of the storage, so what is left of it shrinks
/// from one request to the next. Once under a quarter of [`BUFFER`], the whole storage is
/// taken back first, when no head holds part of it any more; were one still alive, `buf`
/// keeps what it has. Storage with more room than [`BUFFER`], grown for a long head, is
/// freed rather than kept.
pub(super) fn give(buf: &mut BytesMut) {
    if !buf.is_empty() {
        return;
    }
    // Reclaiming costs about 40 instructions: done only when little is left.
    if buf.capacity() < BUFFER / 4 && !buf.try_reclaim(BUFFER) {
        return;
    }
    if buf.capacity() > BUFFER {
        *buf = BytesMut::new();
        return;
    }
    BUFFERS.with_borrow_mut(|spare| {
        if spare.len() < MAX_SPARE {
            spare.push(mem::take(buf));
        }
    });
}

/// An empty slot for a future of type `F`: one of the worker's spares when it has one.
pub(super) fn take_slot<F: 'static>() -> Slot<F> {
    SLOTS
        .with_borrow_mut(|slots| {
            slots
                .as_mut()
                .and_then(|slots| slots.downcast_mut::<Vec<Slot<F>>>())
                .and_then(Vec::pop)
        })
        .unwrap_or_else(|| Box::pin(None))
}

/// Gives the connection's slot to the worker, leaving `slot` `None`, when it is empty and
/// the worker's list has room. Should futures of a second type come, the connection keeps
/// their slots.
pub(super) fn give_slot<F: 'static>(slot: &mut Option<Slot<F>>) {
    if slot.as_ref().is_none_or(|s| s.is_some()) {
        return;
    }
    SLOTS.with_borrow_mut(|slots| {
        let slots = slots.get_or_insert_with(|| Box::new(Vec::<Slot<F>>::new()));
        if let Some(slots) = slots.downcast_mut::<Vec<Slot<F>>>()
            && slots.len() < MAX_SPARE
        {
            slots.extend(slot.take());
        }
    });
}

/// A future run in one of the worker's boxes, which goes back to the worker when the future
/// ends or is dropped (a reset stream, a closed connection).
pub(super) struct InSlot<F: 'static>(Option<Slot<F>>);

impl<F: 'static> InSlot<F> {
    /// Makes the future in its box: `make` is called there, so that the future is not
    /// built elsewhere and moved in.
    pub(super) fn new(make: impl FnOnce() -> F) -> Self {
        let mut slot = take_slot();
        slot.set(Some(make()));
        Self(Some(slot))
    }
}

impl<F: Future + 'static> Future for InSlot<F> {
    type Output = F::Output;

    /// Once the future is ready its box is emptied at once, dropping its state; polled
    /// again after that, it stays pending.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(slot) = self.0.as_mut() else {
            return Poll::Pending;
        };
        let Some(fut) = slot.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        let out = std::task::ready!(fut.poll(cx));
        slot.set(None);
        Poll::Ready(out)
    }
}

impl<F: 'static> Drop for InSlot<F> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.as_mut() {
            slot.set(None);
        }
        give_slot(&mut self.0);
    }
}

/// How many spare buffers this worker holds.
#[cfg(test)]
pub(super) fn count() -> usize {
    BUFFERS.with_borrow(Vec::len)
}

/// How many spare slots for futures of type `F` this worker holds.
#[cfg(test)]
pub(super) fn slots<F: 'static>() -> usize {
    SLOTS.with_borrow(|slots| {
        slots
            .as_ref()
            .and_then(|slots| slots.downcast_ref::<Vec<Slot<F>>>())
            .map_or(0, Vec::len)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::rc::Rc;
    use std::task::Waker;

    use super::*;

    /// A future that is ready or not, and counts its drops.
    struct Probe {
        ready: bool,
        drops: Rc<std::cell::Cell<u32>>,
    }

    impl Future for Probe {
        type Output = u8;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u8> {
            if self.ready {
                Poll::Ready(7)
            } else {
                Poll::Pending
            }
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
        }
    }

    fn spare_box() -> *const Option<Probe> {
        let mut slot = Some(take_slot::<Probe>());
        let at: *const Option<Probe> = &**slot.as_ref().unwrap();
        give_slot(&mut slot);
        at
    }

    #[test]
    fn a_future_runs_in_a_spare_box_emptied_when_ready_and_given_back_after() {
        let at = spare_box();
        let base = slots::<Probe>();
        let drops = Rc::new(std::cell::Cell::new(0));
        let probe = drops.clone();
        let mut fut = InSlot::new(|| Probe {
            ready: true,
            drops: probe,
        });
        assert_eq!(
            &**fut.0.as_ref().unwrap() as *const _,
            at,
            "the worker's box"
        );
        assert_eq!(slots::<Probe>(), base - 1);

        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready(7));
        assert_eq!(
            drops.get(),
            1,
            "the future's state is dropped once it is ready"
        );
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        drop(fut);
        assert_eq!(drops.get(), 1);
        assert_eq!(slots::<Probe>(), base, "the box went back to the worker");
    }

    #[test]
    fn a_future_dropped_before_it_ends_gives_its_box_back_empty() {
        spare_box();
        let base = slots::<Probe>();
        let drops = Rc::new(std::cell::Cell::new(0));
        let probe = drops.clone();
        let mut fut = InSlot::new(|| Probe {
            ready: false,
            drops: probe,
        });
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert_eq!(drops.get(), 0);
        drop(fut);
        assert_eq!(drops.get(), 1);
        assert_eq!(slots::<Probe>(), base);
        let again = take_slot::<Probe>();
        assert!(again.is_none(), "an empty box");
    }
}
