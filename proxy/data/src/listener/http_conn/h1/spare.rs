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

use std::any::Any;
use std::cell::RefCell;
use std::mem;
use std::pin::Pin;

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
