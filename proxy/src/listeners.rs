//! The LDS handler: binds a socket for each new listener, keeps the socket of a listener
//! whose address did not change (its new filter chain applies to the next connection or
//! request), and drains removed or moved listeners.
//!
//! Binding happens inside `apply`, before the ACK, so a port that cannot be bound is NACKed
//! with the OS error rather than silently missing; the previous version keeps serving.
//!
//! Each listener gets one socket per worker (`SO_REUSEPORT` when there are several), served
//! on that worker's runtime with that worker's upstream pools (see [`crate::workers`]). All
//! of them share one cap on open downstream connections (`--max-downstream-connections`).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use switchboard_proxy_data::ClusterManager;
use switchboard_proxy_data::listener::ConnectionLimit;
use switchboard_proxy_xds::config::Listener;
use switchboard_proxy_xds::{ConfigStore, Handler, Rejected};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// Owns the bound listeners.
pub struct ListenerManager {
    store: ConfigStore,
    /// Each worker's runtime and cluster manager (its own pools, the shared cluster state).
    workers: Vec<(Handle, Arc<ClusterManager>)>,
    /// The cap on open downstream connections, shared by every listener and worker.
    limit: ConnectionLimit,
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
const LISTEN_BACKLOG: i32 = 1024;

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
        workers: Vec<(Handle, Arc<ClusterManager>)>,
        limit: ConnectionLimit,
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
            workers,
            limit,
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

    /// Binds one socket per worker without listening: the port is taken (a clash is NACKed
    /// now), but connections are refused until the listener is warm and starts listening.
    fn bind(&self, address: SocketAddr) -> std::io::Result<Vec<Socket>> {
        let shared = self.workers.len() > 1;
        let socket = |address: SocketAddr| -> std::io::Result<Socket> {
            let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
            // So that a port drained a moment ago can be bound again.
            socket.set_reuse_address(true)?;
            // The workers' sockets share the port; the kernel spreads connections.
            if shared {
                socket.set_reuse_port(true)?;
            }
            socket.set_nonblocking(true)?;
            socket.bind(&address.into())?;
            Ok(socket)
        };
        let first = socket(address)?;
        // The others on the port the first got (the same one unless the address asks for
        // any free port, 0).
        let bound = first.local_addr()?.as_socket().unwrap_or(address);
        let mut sockets = vec![first];
        for _ in 1..self.workers.len() {
            sockets.push(socket(bound)?);
        }
        Ok(sockets)
    }

    fn start(&mut self, name: &str, address: SocketAddr, sockets: Vec<Socket>) {
        let drain = self.shutdown.child_token();
        let store = self.store.clone();
        let workers = self.workers.clone();
        let tasks = self.tasks.clone();
        let drain_timeout = self.drain_timeout;
        let limit = self.limit.clone();
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
            // Every worker's socket listens before the listener counts as warm, so that
            // `/ready` means connections are accepted.
            let listening: std::io::Result<Vec<std::net::TcpListener>> = if warm {
                sockets
                    .into_iter()
                    .map(|s| s.listen(LISTEN_BACKLOG).map(|()| s.into()))
                    .collect()
            } else {
                Ok(Vec::new())
            };
            warming.send_modify(|w| {
                w.remove(&listener);
            });
            let listening = match listening {
                Ok(l) if warm => l,
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen");
                    return;
                }
            };
            tracing::info!("warm; accepting connections");
            for (socket, (runtime, clusters)) in listening.into_iter().zip(workers) {
                let store = store.clone();
                let listener = listener.clone();
                let token = token.clone();
                let limit = limit.clone();
                let serve = async move {
                    // On the worker, so that the socket registers with its reactor.
                    let tcp = match tokio::net::TcpListener::from_std(socket) {
                        Ok(tcp) => tcp,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot listen");
                            return;
                        }
                    };
                    switchboard_proxy_data::listener::run(
                        tcp,
                        listener,
                        store,
                        clusters,
                        limit,
                        token,
                        drain_timeout,
                    )
                    .await;
                };
                tasks.spawn_on(tracing::Instrument::in_current_span(serve), &runtime);
            }
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
            match self.bind(listener.address) {
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
