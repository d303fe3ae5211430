//! The data path's threads: one single-threaded tokio runtime per worker (`--concurrency`),
//! each serving its own `SO_REUSEPORT` socket of every listener with its own upstream
//! connection pools, so a request is accepted, routed, forwarded and answered on one
//! thread with no work stealing and no cross-thread wakeups (Envoy's and ztunnel's layout).
//! The kernel spreads new connections over the workers' sockets.
//!
//! The xDS client, the admin port and signal handling run on the main thread's own small
//! runtime, so with `--concurrency 1` the proxy runs two threads (plus tokio's blocking
//! threads, started only while files such as certificates are read).

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

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
            let runtime = Builder::new_current_thread().enable_all().build()?;
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
