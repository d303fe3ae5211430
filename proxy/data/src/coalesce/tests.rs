//! On real loopback sockets: a write through [`CoalescedIo`] reaches the socket only when
//! the [`Flusher`] writes the buffer out, in one write, and back-pressure, shutdown and
//! failures behave as on the bare socket.

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A connected pair of sockets on 127.0.0.1.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.expect("connect"), accepted.expect("accept").0)
}

/// The socket, counting the writes that reached it.
struct Counted {
    io: TokioIo<TcpStream>,
    writes: Arc<AtomicUsize>,
}

impl Read for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(_))) {
            this.writes.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

fn counted(io: TcpStream) -> (Counted, Arc<AtomicUsize>) {
    let writes = Arc::new(AtomicUsize::new(0));
    let io = Counted {
        io: TokioIo::new(io),
        writes: writes.clone(),
    };
    (io, writes)
}

/// Writes `chunks` one after another, as h2 does its frames, flushing after each.
fn write_all(
    io: &mut CoalescedIo<Counted>,
    chunks: &[&[u8]],
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    for chunk in chunks {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, chunk))?;
        assert_eq!(n, chunk.len(), "a small write is taken whole");
        ready!(Pin::new(&mut *io).poll_flush(cx))?;
    }
    Poll::Ready(Ok(()))
}

/// Frames written and "flushed" one by one during a poll leave in one write when it
/// returns, in order.
#[tokio::test]
async fn a_polls_writes_leave_in_one_write() {
    let (a, mut b) = pair().await;
    let (io, writes) = counted(a);
    let (mut io, flusher) = coalesce(io);
    let frames: [&[u8]; 3] = [b"HEADERS;", &[b'd'; 1029], b"TRAILERS"];
    let mut polls = 0;
    Flushing::new(
        poll_fn(|cx| {
            polls += 1;
            let written = write_all(&mut io, &frames, cx);
            assert_eq!(
                writes.load(Ordering::Relaxed),
                0,
                "nothing written inside the poll"
            );
            written
        }),
        flusher,
    )
    .await
    .expect("writes");
    assert_eq!(polls, 1);
    assert_eq!(
        writes.load(Ordering::Relaxed),
        1,
        "one write for the three frames"
    );
    let mut got = vec![0; frames.concat().len()];
    b.read_exact(&mut got).await.expect("read");
    assert_eq!(got, frames.concat());
}

/// Deferring: what a task woken by the poll has the connection write (hyper's body pipe,
/// once the connection gave its stream a window) goes out in the same write.
#[tokio::test]
async fn deferring_waits_for_the_tasks_a_poll_woke() {
    for defer in [false, true] {
        let (a, mut b) = pair().await;
        let (io, writes) = counted(a);
        let (mut io, flusher) = coalesce(io);
        let (window, opened) = tokio::sync::oneshot::channel::<()>();
        let (body, mut data) = tokio::sync::mpsc::unbounded_channel::<&'static [u8]>();
        // The body's task: waits for the window, then hands its data to the connection.
        tokio::spawn(async move {
            if opened.await.is_ok() {
                let _ = body.send(b"DATA");
            }
        });
        let mut window = Some(window);
        let conn = poll_fn(move |cx| {
            if let Some(window) = window.take() {
                ready!(write_all(&mut io, &[b"HEADERS;"], cx))?;
                let _ = window.send(());
            }
            match ready!(data.poll_recv(cx)) {
                Some(frame) => write_all(&mut io, &[frame], cx),
                None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        });
        let conn = if defer {
            Flushing::deferring(conn, flusher)
        } else {
            Flushing::new(conn, flusher)
        };
        tokio::time::timeout(Duration::from_secs(10), tokio::spawn(conn))
            .await
            .expect("in time")
            .expect("the connection's task")
            .expect("writes");
        let mut got = [0; 12];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"HEADERS;DATA");
        let expected = if defer { 1 } else { 2 };
        assert_eq!(
            writes.load(Ordering::Relaxed),
            expected,
            "writes, deferring: {defer}"
        );
    }
}

/// A peer that does not read holds the writer back once the buffer is full (no more than
/// [`LIMIT`] is kept), and its reading wakes the writer, even when another task wrote the
/// buffer out in between.
#[tokio::test]
async fn a_slow_reader_holds_the_writer_back_and_wakes_it() {
    let (a, mut b) = pair().await;
    let (io, _) = counted(a);
    let (io, flusher) = coalesce(io);
    let chunk = [b'x'; 16 * 1024];
    // Bounded: far more than loopback's socket buffers hold.
    let most = 8 * 1024;
    let mut io = Some(io);
    let mut sent = 0usize;
    let mut held = false;
    let writer = Flushing::new(
        poll_fn(move |cx| {
            let Some(conn) = io.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::Other.into()));
            };
            while sent < most {
                match Pin::new(&mut *conn).poll_write(cx, &chunk) {
                    Poll::Ready(Ok(n)) => {
                        assert_eq!(n, chunk.len(), "taken whole");
                        sent += 1;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        held = true;
                        return Poll::Pending;
                    }
                }
                if held {
                    // Taken up again after the reader made room: done.
                    break;
                }
            }
            Poll::Ready(Ok((io.take(), sent)))
        }),
        flusher.clone(),
    );
    let writer = tokio::spawn(writer);
    // Let it fill the socket and stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !writer.is_finished(),
        "the writer is held back by the socket"
    );
    {
        let b = lock(&flusher.0);
        assert!(b.pending() <= LIMIT, "{} bytes kept", b.pending());
    }
    // Another task's poll ends (the socket is still full): the socket's readiness must
    // still wake the writer.
    assert!(!flusher.after_poll(&mut Context::from_waker(Waker::noop()), false));
    let reader = tokio::spawn(async move {
        let mut total = 0usize;
        let mut buf = vec![0; 64 * 1024];
        loop {
            match b.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    let (io, sent) = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the writer was woken")
        .expect("the writer's task")
        .expect("writes");
    assert!(sent < most, "the writer was held back");
    let mut io = io.expect("the connection");
    // What is still buffered goes out before the end.
    tokio::time::timeout(
        Duration::from_secs(10),
        poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)),
    )
    .await
    .expect("shut down in time")
    .expect("shutdown");
    let read = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the reader saw the end")
        .expect("the reader's task");
    assert_eq!(read, sent * chunk.len(), "every byte arrived");
}

/// Shutdown writes the buffer out before it closes the socket.
#[tokio::test]
async fn shutdown_writes_the_buffer_first() {
    let (a, mut b) = pair().await;
    let (io, _) = counted(a);
    let (mut io, _flusher) = coalesce(io);
    poll_fn(|cx| {
        ready!(write_all(&mut io, &[b"last words"], cx))?;
        Pin::new(&mut io).poll_shutdown(cx)
    })
    .await
    .expect("shutdown");
    let mut got = Vec::new();
    b.read_to_end(&mut got).await.expect("read to the end");
    assert_eq!(got, b"last words");
}

/// When writing the buffer out fails (the peer reset the connection), the connection's
/// next write and read fail too, so that it ends.
#[tokio::test]
async fn a_failed_write_fails_the_connection() {
    let (a, b) = pair().await;
    b.set_zero_linger().expect("SO_LINGER");
    drop(b);
    let (io, _) = counted(a);
    let (mut io, flusher) = coalesce(io);
    let mut failed = false;
    for _ in 0..100 {
        let wrote = Flushing::new(
            poll_fn(|cx| write_all(&mut io, &[&[b'z'; 1024]], cx)),
            flusher.clone(),
        )
        .await;
        if wrote.is_err() || lock(&flusher.0).failed.is_some() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(failed, "the reset was seen");
    let write = poll_fn(|cx| Pin::new(&mut io).poll_write(cx, b"more")).await;
    assert!(write.is_err(), "a write after the failure fails");
    let mut space = [0; 16];
    let mut buf = hyper::rt::ReadBuf::new(&mut space[..]);
    let read = poll_fn(|cx| Pin::new(&mut io).poll_read(cx, buf.unfilled())).await;
    assert!(read.is_err(), "a read after the failure fails");
}
