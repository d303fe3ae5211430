//! The LDS handler: binds a socket for each new listener, keeps the socket of a listener
//! whose address did not change (its new filter chain applies to the next connection or
//! request), and drains removed or moved listeners.
//!
//! Binding happens inside `apply`, before the ACK, so a port that cannot be bound is NACKed
//! with the OS error rather than silently missing; the previous version keeps serving.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_proxy_data::ClusterManager;
use switchboard_proxy_xds::config::Listener;
use switchboard_proxy_xds::{ConfigStore, Handler, Rejected};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Owns the bound listeners.
pub struct ListenerManager {
    store: ConfigStore,
    clusters: Arc<ClusterManager>,
    drain_timeout: Duration,
    active: HashMap<String, Active>,
    /// Every serving and draining listener task; joined at shutdown.
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
    /// The drain switches of the active listeners, for [`Shutdown`].
    drains: Arc<std::sync::Mutex<Vec<watch::Sender<bool>>>>,
}

struct Active {
    address: SocketAddr,
    drain: watch::Sender<bool>,
}

/// A handle to drain everything at shutdown.
#[derive(Clone)]
pub struct Shutdown {
    drains: Arc<std::sync::Mutex<Vec<watch::Sender<bool>>>>,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl Shutdown {
    /// Starts draining every listener and waits (bounded by the caller) until all are done.
    pub async fn drain_all(&self) {
        let drains: Vec<_> = lock(&self.drains).drain(..).collect();
        for d in drains {
            let _ = d.send(true);
        }
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        while tasks.join_next().await.is_some() {}
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ListenerManager {
    pub fn new(
        store: ConfigStore,
        clusters: Arc<ClusterManager>,
        drain_timeout: Duration,
    ) -> (Self, Shutdown) {
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let drains = Arc::new(std::sync::Mutex::new(Vec::new()));
        let shutdown = Shutdown {
            drains: drains.clone(),
            tasks: tasks.clone(),
        };
        let manager = Self {
            store,
            clusters,
            drain_timeout,
            active: HashMap::new(),
            tasks,
            drains,
        };
        (manager, shutdown)
    }

    fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        // std sets SO_REUSEADDR on Unix, so a port drained a moment ago can be bound again.
        let std = std::net::TcpListener::bind(address)?;
        std.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(std)
    }

    fn start(&mut self, name: &str, address: SocketAddr, tcp: tokio::net::TcpListener) {
        let (drain, drained) = watch::channel(false);
        let fut = switchboard_proxy_data::listener::run(
            tcp,
            name.to_owned(),
            self.store.clone(),
            self.clusters.clone(),
            drained,
            self.drain_timeout,
        );
        let span = tracing::info_span!("listener", listener = %name, %address);
        lock(&self.tasks).spawn(tracing::Instrument::instrument(fut, span));
        if let Some(old) = self
            .active
            .insert(name.to_owned(), Active { address, drain })
        {
            let _ = old.drain.send(true);
        }
        tracing::info!(listener = %name, %address, "listening");
    }

    fn drain(&mut self, name: &str) {
        if let Some(old) = self.active.remove(name) {
            tracing::info!(listener = %name, address = %old.address, "draining");
            let _ = old.drain.send(true);
        }
    }

    /// The drain senders of the active listeners, for [`Shutdown`].
    fn senders(&self) -> Vec<watch::Sender<bool>> {
        self.active.values().map(|a| a.drain.clone()).collect()
    }
}

impl Handler<Listener> for ListenerManager {
    fn apply(
        &mut self,
        updates: Vec<(String, Listener)>,
        removed: Vec<String>,
    ) -> Result<(), Vec<Rejected>> {
        let mut rejected = Vec::new();
        let mut accepted = Vec::new();
        let mut to_start = Vec::new();
        for (name, listener) in updates {
            let keep = self
                .active
                .get(&name)
                .is_some_and(|a| a.address == listener.address);
            if keep {
                accepted.push((name, listener));
                continue;
            }
            match Self::bind(listener.address) {
                Ok(tcp) => {
                    to_start.push((name.clone(), listener.address, tcp));
                    accepted.push((name, listener));
                }
                Err(e) => {
                    tracing::warn!(listener = %name, address = %listener.address, error = %e, "cannot bind");
                    rejected.push(Rejected::new(
                        name,
                        format!("cannot bind {}: {e}", listener.address),
                    ));
                }
            }
        }
        for name in &removed {
            self.drain(name);
        }
        // The store first: a task serving a new socket looks its listener up in it.
        if let Err(mut refused) = Handler::<Listener>::apply(&mut self.store, accepted, removed) {
            rejected.append(&mut refused);
        }
        for (name, address, tcp) in to_start {
            self.start(&name, address, tcp);
        }
        *lock(&self.drains) = self.senders();
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(rejected)
        }
    }
}
