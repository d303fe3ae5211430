//! An HTTP/2 connection's writes gathered into one write per poll of the task that drives it.
//!
//! h2 hands every DATA frame of 256 bytes or more to the socket on its own (it chains the
//! payload rather than copying it, one at a time), and flushes before the next frame. So a
//! gRPC response (HEADERS, DATA, trailers) cost two `writev`s and reached the peer as two
//! segments, and a batch of responses one `writev` per DATA frame. Here [`CoalescedIo`]
//! takes the connection's writes into a buffer and its flushes as done, and [`Flushing`],
//! the future around the connection, writes the buffer out once each time the
//! connection's poll returns, as Envoy's connection writes its output buffer once per pass
//! of its event loop. A write waits at most for the rest of the poll it was made in (and,
//! upstream, for the tasks that poll woke: [`Flushing::deferring`]), never for a timer or
//! another event.
//!
//! **Invariant:** the wrapped connection is polled only inside a [`Flushing`] holding this
//! buffer's [`Flusher`]: bytes left in the buffer when the task goes to sleep would wait for
//! its next wake-up. For hyper's HTTP/2 client, whose connection runs in a task spawned
//! through its executor, [`FlushingExec`] wraps every task it spawns for that connection;
//! only the task that wrote (the connection's) writes the buffer out.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use hyper::rt::{Read, ReadBufCursor, Write};

/// Buffered bytes beyond which a write first writes the buffer out: the backpressure of a
/// connection whose peer reads slowly stays the socket's.
const LIMIT: usize = 64 * 1024;
/// A buffer larger than this is freed once written out, so that an idle connection keeps
/// no more than a small batch's worth.
const KEEP: usize = 16 * 1024;

/// `io`'s writes go into a buffer that the returned [`Flusher`] writes out.
pub(crate) fn coalesce<T>(io: T) -> (CoalescedIo<T>, Flusher<T>) {
    let shared = Arc::new(Mutex::new(Buffered {
        io,
        out: Vec::new(),
        written: 0,
        flushed: true,
        writer: None,
        failed: None,
    }));
    (CoalescedIo(shared.clone()), Flusher(shared))
}

struct Buffered<T> {
    io: T,
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    written: usize,
    /// Whether `io` was flushed after it was last written to.
    flushed: bool,
    /// The task that writes (the connection's). Only its polls write the buffer out, so
    /// that the socket's readiness wakes it, the one that may be waiting to write more.
    writer: Option<Waker>,
    /// Writing the buffer out failed: every later read and write of the connection fails
    /// the same way, so that it ends.
    failed: Option<(io::ErrorKind, String)>,
}

impl<T: Write + Unpin> Buffered<T> {
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            None => Ok(()),
        }
    }

    fn pending(&self) -> usize {
        self.out.len() - self.written
    }

    /// Writes the buffer out, and then flushes `io` (TLS keeps records of its own). A
    /// failure is kept: the connection's later reads and writes meet it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let drained = self.poll_write_out(cx);
        if let Poll::Ready(Err(e)) = &drained
            && self.failed.is_none()
        {
            self.failed = Some((e.kind(), e.to_string()));
        }
        drained
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            self.flushed = false;
            let rest = self.out.get(self.written..).unwrap_or_default();
            match ready!(Pin::new(&mut self.io).poll_write(cx, rest)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if !self.out.is_empty() {
            self.written = 0;
            if self.out.capacity() > KEEP {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
        }
        if !self.flushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.flushed = true;
        }
        Poll::Ready(Ok(()))
    }

    fn note_writer(&mut self, cx: &Context<'_>) {
        if !self
            .writer
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.writer = Some(cx.waker().clone());
        }
    }
}

fn lock<T>(shared: &Mutex<Buffered<T>>) -> MutexGuard<'_, Buffered<T>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connection's side: reads go through, writes are buffered.
pub(crate) struct CoalescedIo<T>(Arc<Mutex<Buffered<T>>>);

impl<T: Read + Write + Unpin> Read for CoalescedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut b = lock(&self.0);
        b.check()?;
        Pin::new(&mut b.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for CoalescedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut b = lock(&self.0);
        b.check()?;
        b.note_writer(cx);
        let len: usize = bufs.iter().map(|s| s.len()).sum();
        if b.pending() + len > LIMIT {
            ready!(b.poll_drain(cx))?;
            if len > LIMIT {
                b.flushed = false;
                return Pin::new(&mut b.io).poll_write_vectored(cx, bufs);
            }
        }
        for s in bufs {
            b.out.extend_from_slice(s);
        }
        Poll::Ready(Ok(len))
    }

    /// Done: the [`Flusher`] writes the buffer out when the connection's poll returns.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(lock(&self.0).check())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut b = lock(&self.0);
        b.check()?;
        b.note_writer(cx);
        ready!(b.poll_drain(cx))?;
        Pin::new(&mut b.io).poll_shutdown(cx)
    }

    /// Vectored: h2 then hands its frames' payloads over without copying them first.
    fn is_write_vectored(&self) -> bool {
        true
    }
}

/// The driving task's side: writes the buffer out.
pub(crate) struct Flusher<T>(Arc<Mutex<Buffered<T>>>);

impl<T> Clone for Flusher<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Write + Unpin> Flusher<T> {
    /// After a poll of a task: writes out what the connection buffered, if `cx` is the
    /// writing task's (other tasks leave the buffer to it). When the socket is full, its
    /// readiness wakes the task; a failure is kept for the connection to meet, and the
    /// task woken so that it does. With `defer`, the task is woken to come back instead,
    /// and true returned.
    fn after_poll(&self, cx: &mut Context<'_>, defer: bool) -> bool {
        let mut b = lock(&self.0);
        if (b.pending() == 0 && b.flushed)
            || b.failed.is_some()
            || !b.writer.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            return false;
        }
        if defer {
            cx.waker().wake_by_ref();
            return true;
        }
        if let Poll::Ready(Err(e)) = b.poll_drain(cx) {
            tracing::debug!(error = %e, "writing a connection's frames");
            cx.waker().wake_by_ref();
        }
        false
    }
}

pin_project_lite::pin_project! {
    /// `conn`, with what it wrote written out each time its poll returns.
    pub(crate) struct Flushing<F, T> {
        #[pin]
        conn: F,
        flusher: Flusher<T>,
        // Whether to let the tasks woken by a poll run before writing out what it wrote.
        defer: bool,
        // Whether the last poll deferred its write.
        deferred: bool,
    }
}

impl<F, T> Flushing<F, T> {
    pub(crate) fn new(conn: F, flusher: Flusher<T>) -> Self {
        Self {
            conn,
            flusher,
            defer: false,
            deferred: false,
        }
    }

    /// Like [`Self::new`], but a poll that wrote wakes the task again and the write waits
    /// for that next poll, so that what the tasks it woke add goes out with it: hyper's
    /// HTTP/2 client sends a request's HEADERS from the connection's task, which then
    /// gives the stream its flow-control window, and only after that does the task piping
    /// the body queue the DATA. Woken, the task runs after those already woken, before the
    /// runtime polls the sockets again.
    pub(crate) fn deferring(conn: F, flusher: Flusher<T>) -> Self {
        Self {
            defer: true,
            ..Self::new(conn, flusher)
        }
    }

    /// The connection, to shut it down gracefully.
    pub(crate) fn conn(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().conn
    }
}

impl<F: Future, T: Write + Unpin> Future for Flushing<F, T> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let polled = this.conn.poll(cx);
        let defer = *this.defer && !*this.deferred && polled.is_pending();
        *this.deferred = this.flusher.after_poll(cx, defer);
        polled
    }
}

/// hyper's executor for one HTTP/2 client connection: the tasks it spawns (the
/// connection's own among them) are [`Flushing::deferring`].
pub(crate) struct FlushingExec<T>(Flusher<T>);

impl<T> FlushingExec<T> {
    pub(crate) fn new(flusher: Flusher<T>) -> Self {
        Self(flusher)
    }
}

impl<T> Clone for FlushingExec<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<F, T> hyper::rt::Executor<F> for FlushingExec<T>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    T: Write + Unpin + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Flushing::deferring(fut, self.0.clone()));
    }
}

#[cfg(test)]
mod tests;
