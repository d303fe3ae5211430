//! The LDS handler: binds a socket for each new listener, keeps the socket of a listener
//! whose address did not change (its new filter chain applies to the next connection or
//! request), and drains removed or moved listeners.
//!
//! Binding happens inside `apply`, before the ACK, so a port that cannot be bound is NACKed
//! with the OS error rather than silently missing; the previous version keeps serving.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_proxy_data::ClusterManager;
use switchboard_proxy_xds::config::Listener;
use switchboard_proxy_xds::{ConfigStore, Handler, Rejected};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// Owns the bound listeners.
pub struct ListenerManager {
    store: ConfigStore,
    clusters: Arc<ClusterManager>,
    drain_timeout: Duration,
    active: HashMap<String, Active>,
    /// Every serving and draining listener task; waited for at shutdown.
    tasks: TaskTracker,
    /// The parent of every listener's drain token: cancelling it drains them all.
    shutdown: CancellationToken,
    /// Listeners bound but waiting for their secrets (not accepting yet).
    warming: watch::Sender<BTreeSet<String>>,
}

/// The accept backlog of a listener's socket.
const LISTEN_BACKLOG: u32 = 1024;

struct Active {
    address: SocketAddr,
    /// Dropping it (the listener removed, replaced or the manager gone) drains the listener.
    _drain: DropGuard,
}

/// A handle to drain everything at shutdown.
#[derive(Clone)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// Starts draining every listener and waits (bounded by the caller) until all are done.
    pub async fn drain_all(&self) {
        self.token.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl ListenerManager {
    pub fn new(
        store: ConfigStore,
        clusters: Arc<ClusterManager>,
        drain_timeout: Duration,
    ) -> (Self, Shutdown) {
        let tasks = TaskTracker::new();
        let token = CancellationToken::new();
        let shutdown = Shutdown {
            token: token.clone(),
            tasks: tasks.clone(),
        };
        let manager = Self {
            store,
            clusters,
            drain_timeout,
            active: HashMap::new(),
            tasks,
            shutdown: token,
            warming: watch::channel(BTreeSet::new()).0,
        };
        (manager, shutdown)
    }

    /// The listeners still warming (waiting for their SDS secrets); `/ready` is false while
    /// any is.
    pub fn warming(&self) -> watch::Receiver<BTreeSet<String>> {
        self.warming.subscribe()
    }

    /// Binds without listening: the port is taken (a clash is NACKed now), but connections
    /// are refused until the listener is warm and starts listening.
    fn bind(address: SocketAddr) -> std::io::Result<TcpSocket> {
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // So that a port drained a moment ago can be bound again.
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        Ok(socket)
    }

    fn start(&mut self, name: &str, address: SocketAddr, socket: TcpSocket) {
        let drain = self.shutdown.child_token();
        let store = self.store.clone();
        let clusters = self.clusters.clone();
        let drain_timeout = self.drain_timeout;
        let warming = self.warming.clone();
        let listener = name.to_owned();
        let token = drain.clone();
        warming.send_modify(|w| {
            w.insert(listener.clone());
        });
        let fut = async move {
            // Envoy's listener warming: no connection is accepted before the secrets its TLS
            // context names have arrived.
            let warm = tokio::select! {
                () = switchboard_proxy_data::listener::warmed(&store, &listener) => true,
                () = token.cancelled() => false,
            };
            warming.send_modify(|w| {
                w.remove(&listener);
            });
            if !warm {
                return;
            }
            let tcp = match socket.listen(LISTEN_BACKLOG) {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen");
                    return;
                }
            };
            tracing::info!("warm; accepting connections");
            switchboard_proxy_data::listener::run(
                tcp,
                listener,
                store,
                clusters,
                token,
                drain_timeout,
            )
            .await;
        };
        let span = tracing::info_span!("listener", listener = %name, %address);
        self.tasks.spawn(tracing::Instrument::instrument(fut, span));
        // Replacing an active listener drops its guard, which drains it.
        self.active.insert(
            name.to_owned(),
            Active {
                address,
                _drain: drain.drop_guard(),
            },
        );
        tracing::info!(listener = %name, %address, "listening");
    }

    fn drain(&mut self, name: &str) {
        if let Some(old) = self.active.remove(name) {
            tracing::info!(listener = %name, address = %old.address, "draining");
        }
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
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(rejected)
        }
    }
}
