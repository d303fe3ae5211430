//! Starting and stopping the xDS server as one piece: [`XdsServer::start`] starts every
//! background task the port needs and [`RunningXds`] owns them, so a caller can neither serve
//! with a task missing nor leave one running.

use std::future::Future;

use futures::{Stream, StreamExt};
use switchboard_store::Store;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;

use crate::server::{XdsConfig, XdsServer};

/// The xDS server with its background tasks: the watcher (store commits to snapshot
/// rebuilds, revoked tokens to ended streams), the status sync (this replica's streams to the
/// `proxies` table), the metrics sampler (`sampler`) and sidecar registration. Dropping it ends the tasks;
/// [`RunningXds::shutdown`] also waits for them.
#[derive(Debug)]
pub struct RunningXds {
    server: XdsServer,
    tasks: TaskTracker,
    /// Ends every task.
    stop: CancellationToken,
    /// Ends registration alone (a child of `stop`): first thing at shutdown, so that the
    /// streams ending afterwards deregister nothing.
    stop_registration: CancellationToken,
}

impl XdsServer {
    /// Builds the server and starts its background tasks (registration only when
    /// `config.register_sidecars`). Call inside a Tokio runtime.
    pub fn start(store: Store, config: XdsConfig) -> RunningXds {
        if config.issuer.is_none() {
            tracing::info!(
                "no mesh CA is plugged into the xDS server: it serves no secret (SDS `default` \
                 and `ROOTCA` are never sent)"
            );
        }
        let server = XdsServer::new(store, config);
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let stop_registration = stop.child_token();
        let engine = &server.engine;
        spawn(
            &tasks,
            &stop,
            crate::watcher::watch(
                engine.store.clone(),
                engine.cache.clone(),
                engine.revocations.clone(),
                server.config.debounce,
            ),
        );
        spawn(
            &tasks,
            &stop,
            crate::report::status_sync(
                engine.store.clone(),
                engine.registry.clone(),
                server.replica.clone(),
            ),
        );
        crate::metrics::init();
        spawn_sampler(&tasks, &stop, &server);
        if server.config.register_sidecars
            && let Some(registration) = crate::registration::run(
                engine.store.clone(),
                &engine.registrar,
                server.replica.clone(),
                server.config.sidecar_grace_period,
                crate::report::SYNC_INTERVAL,
            )
        {
            spawn(&tasks, &stop_registration, registration);
        }
        tasks.close();
        RunningXds {
            server,
            tasks,
            stop,
            stop_registration,
        }
    }
}

/// Runs the metrics sampler (heartbeat, replicas, change-log lag) until `stop`, then removes
/// this replica from the store's list of replicas: a replica that stopped is not missing.
fn spawn_sampler(tasks: &TaskTracker, stop: &CancellationToken, server: &XdsServer) {
    let (stop, store) = (stop.clone(), server.engine.store.clone());
    let (cache, replica) = (server.engine.cache.clone(), server.replica.clone());
    tasks.spawn(async move {
        tokio::select! {
            biased;
            () = stop.cancelled() => {}
            () = crate::sampler::sample(store.clone(), cache, replica.clone()) => {}
        }
        crate::sampler::remove(&store, &replica).await;
    });
}

/// Runs `task` on `tasks` until it ends or `stop` is cancelled, whichever is first: a
/// cancelled task does no further work, as if aborted.
fn spawn(
    tasks: &TaskTracker,
    stop: &CancellationToken,
    task: impl Future<Output = ()> + Send + 'static,
) {
    let stop = stop.clone();
    tasks.spawn(async move {
        tokio::select! {
            biased;
            () = stop.cancelled() => {}
            () = task => {}
        }
    });
}

impl RunningXds {
    /// The server, for the REST API and for tests (cheap to clone).
    pub fn server(&self) -> &XdsServer {
        &self.server
    }

    /// Serves the xDS port on `listener` until `signal` resolves, then shuts down: sidecar
    /// registration stops at once (a stopping replica deregisters nothing: its sidecars come
    /// back, here or on another replica, within the grace period), the listener closes, the
    /// connections drain (spread over `XdsConfig::drain`'s period when set), and the other
    /// tasks end last, so streams still open meanwhile keep getting updates.
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future,
    ) -> Result<(), tonic::transport::Error> {
        let incoming = TcpListenerStream::new(listener).map(|tcp| {
            let tcp = tcp?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(tcp)
        });
        self.serve_incoming(incoming, signal).await
    }

    /// As [`RunningXds::serve`], on connections from `incoming`: TLS streams, say, whose
    /// handshake the caller ran (with tonic's `tls-connect-info`, requests of a
    /// `tokio_rustls` stream still know their peer address and certificates).
    pub async fn serve_incoming<I, IO, IE>(
        self,
        incoming: I,
        signal: impl Future,
    ) -> Result<(), tonic::transport::Error>
    where
        I: Stream<Item = Result<IO, IE>>,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stop_registration = self.stop_registration.clone();
        crate::conn::serve(
            self.server.routes().await,
            self.server.config.connections,
            self.server.config.drain,
            incoming,
            async move {
                signal.await;
                stop_registration.cancel();
            },
        )
        .await;
        self.shutdown().await;
        Ok(())
    }

    /// Ends every background task, registration first, and waits until they have.
    pub async fn shutdown(self) {
        self.stop_registration.cancel();
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

impl Drop for RunningXds {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
