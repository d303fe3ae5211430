//! Serving the ports over TLS. Handshakes run concurrently, each under [`HANDSHAKE_TIMEOUT`],
//! so one slow or hostile client delays nobody; the REST port serves the connections with
//! hyper-util, the xDS port with tonic.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use switchboard_xds_server::RunningXds;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::{ClientAuth, REST_ALPN, ReloadingCert, XDS_ALPN, server_config};

/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Established connections waiting for the server to take them.
const BACKLOG: usize = 64;

/// Accepts connections on `listener` and yields those whose handshake completes within
/// `timeout`. A failed or slow handshake is logged at debug with the peer address and
/// dropped. Dropping the stream stops accepting.
pub(super) fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, typically: pause rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(tls) = handshake(&acceptor, tcp, peer, timeout).await {
                    let _ = tx.send(Ok(tls)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
            None
        }
    }
}

/// Serves the REST API `app` on `listener` over TLS with `cert` (HTTP/1.1 or HTTP/2 as ALPN
/// chose) until `signal` resolves; then stops accepting and waits for open connections to
/// finish, as `axum::serve`'s graceful shutdown does.
pub async fn serve_rest(
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
    app: axum::Router,
    signal: impl Future<Output = ()>,
) -> Result<(), rustls::Error> {
    let config = server_config(cert, REST_ALPN, ClientAuth::None)?;
    let mut incoming = incoming(listener, config, HANDSHAKE_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(signal);
    loop {
        let tls = tokio::select! {
            () = &mut signal => break,
            next = incoming.next() => match next {
                Some(Ok(tls)) => tls,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tls), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "REST connection ended with an error");
            }
        });
    }
    drop(incoming);
    graceful.shutdown().await;
    Ok(())
}

/// Serves the xDS port on `listener` over TLS with `cert`, shutting down as
/// [`RunningXds::serve`] does. Clients may present a certificate (checked per mesh by the
/// xDS server); requests keep their peer address and `Request::peer_certs`.
pub async fn serve_xds(
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
    xds: RunningXds,
    signal: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let config = server_config(cert, XDS_ALPN, ClientAuth::Deferred)?;
    xds.serve_incoming(incoming(listener, config, HANDSHAKE_TIMEOUT), signal)
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}
