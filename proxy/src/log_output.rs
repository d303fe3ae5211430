//! Where the proxy's log lines go: stderr, in batches.
//!
//! With the access log on, every request is a line. Written one by one, each line was a
//! `write(2)` of its own on the worker that served the request (and a lock on stderr shared
//! by every worker). Here a line is appended to a buffer in memory, and the buffer goes out
//! in one write at most [`FLUSH_INTERVAL`] after its first line, or as soon as it holds
//! [`MAX_BUFFERED`] bytes, as Envoy's access log does with its flush interval and buffer.
//! A quiet proxy writes, and wakes its flusher, only when something was logged.
//!
//! Lines still buffered are written when the [`LogOutput`] is dropped (the process exits)
//! and before a panic's message, so that the lines before it are not lost.
//!
//! In the text log format, access log events are written as their bare line
//! ([`BareAccessLines`]), as Envoy writes them: the line carries its own start time, and the
//! log's timestamp, level and target in front of it, with the escaping of the message, cost
//! more than the rest of the request's logging together.

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use switchboard_proxy_data::telemetry::ACCESS_LOG_TARGET;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// How long a line may wait in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// A buffer this large goes out at once, by the thread whose line filled it, so that memory
/// stays bounded whatever the request rate.
pub const MAX_BUFFERED: usize = 64 * 1024;

/// Owns the flusher thread; dropping it writes what is left.
pub struct LogOutput {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

/// What the log layer writes to: a handle on the buffer.
#[derive(Clone)]
pub struct LogWriter(Arc<Shared>);

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the flusher when the first line arrives in an empty buffer, or to stop.
    wake: Condvar,
    /// The destination, with a spare buffer to swap in. Held while a batch is written, so
    /// that batches leave in the order they were taken.
    out: Mutex<Out>,
}

struct Pending {
    lines: Vec<u8>,
    stop: bool,
}

struct Out {
    sink: Box<dyn Write + Send>,
    spare: Vec<u8>,
}

impl LogOutput {
    /// Log output to stderr.
    pub fn stderr() -> io::Result<Self> {
        Self::to(Box::new(io::stderr()))
    }

    fn to(sink: Box<dyn Write + Send>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                lines: Vec::with_capacity(MAX_BUFFERED),
                stop: false,
            }),
            wake: Condvar::new(),
            out: Mutex::new(Out {
                sink,
                spare: Vec::with_capacity(MAX_BUFFERED),
            }),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("log-flush".into())
                .spawn(move || shared.run_flusher())?
        };
        Ok(Self {
            shared,
            flusher: Some(flusher),
        })
    }

    /// The writer for the log layer.
    pub fn writer(&self) -> LogWriter {
        LogWriter(self.shared.clone())
    }

    /// Writes out what is buffered before a panic's message (the default hook's, which
    /// then runs). Only tries: a panic inside the log output must not deadlock on its lock.
    pub fn flush_on_panic(&self) {
        let shared = Arc::downgrade(&self.shared);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(shared) = shared.upgrade() {
                shared.try_flush();
            }
            previous(info);
        }));
    }
}

impl Drop for LogOutput {
    fn drop(&mut self) {
        lock(&self.shared.pending).stop = true;
        self.shared.wake.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        // Whatever came after the flusher's last batch.
        self.shared.flush();
    }
}

impl Shared {
    fn run_flusher(&self) {
        loop {
            {
                let mut pending = lock(&self.pending);
                while pending.lines.is_empty() && !pending.stop {
                    pending = self
                        .wake
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if pending.stop {
                    break;
                }
                // Let the lines of the next interval gather, unless told to stop.
                let (guard, _) = self
                    .wake
                    .wait_timeout_while(pending, FLUSH_INTERVAL, |p| !p.stop)
                    .unwrap_or_else(PoisonError::into_inner);
                drop(guard);
            }
            self.flush();
        }
        self.flush();
    }

    fn append(&self, line: &[u8]) {
        let full = {
            let mut pending = lock(&self.pending);
            let first = pending.lines.is_empty();
            pending.lines.extend_from_slice(line);
            if first {
                self.wake.notify_one();
            }
            pending.lines.len() >= MAX_BUFFERED
        };
        if full {
            self.flush();
        }
    }

    /// Writes out what is buffered. Write errors are dropped: there is nowhere left to
    /// report them.
    fn flush(&self) {
        let mut out = lock(&self.out);
        let Out { sink, spare } = &mut *out;
        std::mem::swap(&mut lock(&self.pending).lines, spare);
        Self::write_out(sink, spare);
    }

    /// [`Self::flush`] for the panic hook: gives up rather than wait for a lock, since the
    /// panicking thread may hold it.
    fn try_flush(&self) {
        let Ok(mut out) = self.out.try_lock() else {
            return;
        };
        let Ok(mut pending) = self.pending.try_lock() else {
            return;
        };
        let Out { sink, spare } = &mut *out;
        std::mem::swap(&mut pending.lines, spare);
        drop(pending);
        Self::write_out(sink, spare);
    }

    fn write_out(sink: &mut Box<dyn Write + Send>, batch: &mut Vec<u8>) {
        if batch.is_empty() {
            return;
        }
        let _ = sink.write_all(batch).and_then(|()| sink.flush());
        batch.clear();
        // A burst may have grown it; keep the steady size.
        batch.shrink_to(MAX_BUFFERED);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// An event format that writes access log events as their bare line and every other event
/// with the format it wraps.
pub struct BareAccessLines<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for BareAccessLines<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.metadata().target() != ACCESS_LOG_TARGET {
            return self.0.format_event(ctx, writer, event);
        }
        let mut message = Message {
            out: NoControl(&mut writer),
            result: Ok(()),
        };
        event.record(&mut message);
        message.result?;
        writer.write_char('\n')
    }
}

/// Writes the `message` field of an event.
struct Message<W> {
    out: W,
    result: fmt::Result,
}

impl<W: fmt::Write> Visit for Message<W> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.result = write!(self.out, "{value:?}");
        }
    }
}

/// Escapes control characters, so that a line cannot move a terminal's cursor or split
/// itself (the line's header values and path cannot hold them; this makes sure).
struct NoControl<W>(W);

impl<W: fmt::Write> fmt::Write for NoControl<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            if c.is_control() {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records each write it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            lock(&self.0).clone()
        }
    }

    #[test]
    fn access_lines_are_bare_and_other_events_formatted() {
        use tracing_subscriber::layer::SubscriberExt;

        let rec = Recorder::default();
        let output = LogOutput::to(Box::new(rec.clone())).unwrap();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .event_format(BareAccessLines(
                    tracing_subscriber::fmt::format().without_time(),
                ))
                .with_writer(output.writer()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: ACCESS_LOG_TARGET, "{}", "[t] \"GET / HTTP/1.1\" 200");
            tracing::info!(target: ACCESS_LOG_TARGET, "{}", "a\u{1b}[2Jb\nc");
            tracing::warn!(target: "other", answer = 42, "not an access line");
        });
        drop(output);
        let text = String::from_utf8(rec.writes().concat()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "[t] \"GET / HTTP/1.1\" 200");
        assert_eq!(lines[1], "a\\u{1b}[2Jb\\nc");
        assert!(lines[2].trim_start().starts_with("WARN"), "{}", lines[2]);
        assert!(
            lines[2].ends_with("other: not an access line answer=42"),
            "{}",
            lines[2]
        );
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn lines_go_out_together_after_the_interval() {
        let rec = Recorder::default();
        let output = LogOutput::to(Box::new(rec.clone())).unwrap();
        let mut w = output.writer();
        w.write_all(b"one\n").unwrap();
        w.write_all(b"two\n").unwrap();
        // Bounded wait: the flusher writes within an interval or two.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rec.writes().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(rec.writes(), vec![b"one\ntwo\n".to_vec()]);
    }

    #[test]
    fn a_full_buffer_goes_out_at_once_and_drop_writes_the_rest() {
        let rec = Recorder::default();
        let output = LogOutput::to(Box::new(rec.clone())).unwrap();
        let mut w = output.writer();
        let line = vec![b'x'; 1000];
        let lines = MAX_BUFFERED / line.len() + 1;
        for _ in 0..lines {
            w.write_all(&line).unwrap();
        }
        // Whatever the flusher did meanwhile, the line that filled the buffer wrote it out
        // before returning: less than a full buffer is left waiting.
        let written: usize = rec.writes().iter().map(Vec::len).sum();
        assert!(
            written + MAX_BUFFERED > lines * line.len(),
            "{written} of {} bytes written",
            lines * line.len()
        );
        w.write_all(b"last\n").unwrap();
        drop(output);
        let all: Vec<u8> = rec.writes().concat();
        assert_eq!(all.len(), lines * line.len() + 5);
        assert!(all.ends_with(b"last\n"));
    }
}
