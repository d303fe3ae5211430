//! The data path's threads: one single-threaded tokio runtime per worker (`--concurrency`),
//! each serving its own `SO_REUSEPORT` socket of every listener with its own upstream
//! connection pools, so a request is accepted, routed, forwarded and answered on one
//! thread with no work stealing and no cross-thread wakeups (Envoy's and ztunnel's layout).
//! The kernel spreads new connections over the workers' sockets.
//!
//! The xDS client, the admin port and signal handling run on the main thread's own small
//! runtime, so with `--concurrency 1` the proxy runs two threads (plus tokio's blocking
//! threads, started only while files such as certificates are read, and the log's
//! flusher).

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;

/// How long a blocking-pool thread outlives its last file read. tokio's default is 10 s, but
/// the reads (the xDS token and certificates at a connect, a certificate file on a
/// configuration change) come in short bursts far apart, so the thread would mostly idle;
/// and its exit ten seconds later would change the process's threads in the middle of
/// whatever came next (a benchmark's window of per-thread CPU time, for one).
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_millis(100);

/// A single-threaded runtime with timers and IO, as every runtime of the proxy is.
pub fn runtime() -> io::Result<Runtime> {
    Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
}

/// The running worker threads; dropping it stops them (after the listeners drained).
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` (at least one) worker threads, each running a `current_thread` runtime
    /// until the `Workers` is dropped.
    pub fn start(n: usize) -> io::Result<Self> {
        let mut workers = Self {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let runtime = runtime()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The runtimes to spawn each worker's share of a listener on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
