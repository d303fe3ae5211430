//! Upstream connection pools, one hyper-util client per cluster and transport socket, whose
//! connector counts the cluster's connections and waiting requests for the
//! `max_connections` and `max_pending_requests` circuit breakers, and wraps connections in
//! TLS when the transport socket says so. A cluster whose endpoints use different transport
//! sockets (`transport_socket_matches`) has one pool per socket, so TLS and plaintext
//! connections to an endpoint are never mixed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchboard_proxy_xds::Snapshot;
use switchboard_proxy_xds::config::Secret;
use switchboard_proxy_xds::config::cluster::{Cluster, TransportChoice, UpstreamProtocol};
use switchboard_proxy_xds::config::tls::UpstreamTls;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

use super::state::{ClusterState, ConnectionSlot};
use crate::body::Body;
use crate::tls::{Secrets, client_config, same_secrets, secrets_in_use};

/// The hyper client of one cluster, over its counting connector.
pub(crate) type HttpClient = Client<CountingConnector, Body>;

/// Connection pools, one per cluster (its connections are what `max_connections`
/// counts); each pools connections per endpoint, and an HTTP/2 one multiplexes requests
/// over one connection per endpoint.
#[derive(Default)]
pub(crate) struct ConnectionPools {
    /// By cluster name, then transport socket (keyed so that a lookup borrows the name).
    pools: Mutex<HashMap<String, Vec<(TransportChoice, Pool)>>>,
}

struct Pool {
    http2: bool,
    connect_timeout: Duration,
    state: Arc<ClusterState>,
    /// The TLS configuration and the secrets it was built from (`None`: plaintext).
    tls: Option<(UpstreamTls, Vec<Option<Arc<Secret>>>)>,
    client: HttpClient,
}

impl ConnectionPools {
    /// The client of `cluster` for endpoints using transport socket `choice`; a new one
    /// when its protocol, connect timeout, TLS configuration or secrets changed (open
    /// connections of the old one finish what they carry), or its state was replaced. Pools
    /// of clusters gone from `snapshot` are dropped then.
    pub(crate) fn client(
        &self,
        cluster: &Cluster,
        choice: TransportChoice,
        state: &Arc<ClusterState>,
        snapshot: &Snapshot,
    ) -> HttpClient {
        let http2 = cluster.protocol == UpstreamProtocol::Http2;
        let tls = cluster.tls_of(choice).map(|t| {
            let secrets = secrets_in_use(&t.secret_names(), &snapshot.secrets);
            (t.clone(), secrets)
        });
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = pools
            .get(cluster.name.as_str())
            .and_then(|ps| ps.iter().find(|(c, _)| *c == choice))
            .map(|(_, p)| p)
            && p.http2 == http2
            && p.connect_timeout == cluster.connect_timeout
            && Arc::ptr_eq(&p.state, state)
            && same_tls(p.tls.as_ref(), tls.as_ref())
        {
            return p.client.clone();
        }
        pools.retain(|name, _| snapshot.clusters.contains_key(name));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cluster.connect_timeout));
        let upstream_tls = tls.as_ref().map(|(config, _)| {
            Arc::new(TlsSetup {
                config: config.clone(),
                secrets: snapshot.secrets.clone(),
                built: OnceCell::new(),
            })
        });
        let connector = CountingConnector::new(
            connector,
            state.clone(),
            cluster.connect_timeout,
            upstream_tls,
        );
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(60));
        if http2 {
            builder.http2_only(true);
        }
        let client = builder.build(connector);
        let pool = Pool {
            http2,
            connect_timeout: cluster.connect_timeout,
            state: state.clone(),
            tls,
            client: client.clone(),
        };
        let of_cluster = pools.entry(cluster.name.clone()).or_default();
        of_cluster.retain(|(c, _)| *c != choice);
        of_cluster.push((choice, pool));
        client
    }
}

type TlsKey = (UpstreamTls, Vec<Option<Arc<Secret>>>);

fn same_tls(a: Option<&TlsKey>, b: Option<&TlsKey>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some((ca, sa)), Some((cb, sb))) => ca == cb && same_secrets(sa, sb),
        _ => false,
    }
}

/// A pool's TLS: built on its first connection (reading files and secrets), then shared.
pub(crate) struct TlsSetup {
    config: UpstreamTls,
    secrets: Secrets,
    built: OnceCell<Result<(TlsConnector, Option<ServerName<'static>>), String>>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TlsSetup {
    async fn connector(&self) -> Result<(TlsConnector, Option<ServerName<'static>>), BoxError> {
        let built = self
            .built
            .get_or_init(|| async {
                client_config(&self.config, &self.secrets)
                    .await
                    .map(|(config, sni)| (TlsConnector::from(config), sni))
                    .map_err(|e| e.to_string())
            })
            .await;
        built
            .clone()
            .map_err(|e| format!("upstream TLS: {e}").into())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper-util's `HttpConnector`, counting the cluster's connections and the requests
/// waiting for one, under `max_connections` and `max_pending_requests`, then the TLS
/// handshake when the pool's transport socket is TLS.
#[derive(Debug, Clone)]
pub(crate) struct CountingConnector {
    inner: HttpConnector,
    cluster: Arc<ClusterState>,
    /// How long a new connection may wait for a slot (the connect timeout); also the bound
    /// on the TLS handshake.
    wait: Duration,
    tls: Option<Arc<TlsSetup>>,
}

impl CountingConnector {
    fn new(
        inner: HttpConnector,
        cluster: Arc<ClusterState>,
        wait: Duration,
        tls: Option<Arc<TlsSetup>>,
    ) -> Self {
        Self {
            inner,
            cluster,
            wait,
            tls,
        }
    }
}

impl tower::Service<Uri> for CountingConnector {
    type Response = CountedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<CountedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let cluster = self.cluster.clone();
        let endpoint = dst.authority().map(|a| a.to_string()).unwrap_or_default();
        let connect = self.inner.call(dst);
        let wait = self.wait;
        let tls = self.tls.clone();
        Box::pin(async move {
            let _pending = cluster.begin_pending()?;
            let slot = cluster.connection_slot(endpoint.clone(), wait).await?;
            let tcp = connect.await?;
            let io = match tls {
                None => Io::Plain(tcp),
                Some(tls) => {
                    let (connector, sni) = tls.connector().await?;
                    let name = match sni {
                        Some(name) => name,
                        None => {
                            let addr: std::net::SocketAddr = endpoint.parse()?;
                            ServerName::IpAddress(addr.ip().into())
                        }
                    };
                    let handshake = connector.connect(name, tcp.into_inner());
                    let stream = tokio::time::timeout(wait, handshake)
                        .await
                        .map_err(|_| "upstream TLS handshake timed out")??;
                    Io::Tls(Box::new(TokioIo::new(stream)))
                }
            };
            Ok(CountedIo { io, _slot: slot })
        })
    }
}

/// An upstream connection, plaintext or TLS.
#[derive(Debug)]
enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

/// A connection that frees its slot when closed.
#[derive(Debug)]
pub(crate) struct CountedIo {
    io: Io,
    _slot: ConnectionSlot,
}

impl Connection for CountedIo {
    fn connected(&self) -> Connected {
        match &self.io {
            Io::Plain(io) => io.connected(),
            Io::Tls(io) => {
                let (tcp, conn) = io.inner().get_ref();
                let connected = tcp.connected();
                if conn.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

/// Forwards to whichever stream `$io` holds.
macro_rules! either {
    ($io:expr, $s:ident => $e:expr) => {
        match $io {
            Io::Plain($s) => $e,
            Io::Tls($s) => {
                let $s = &mut **$s;
                $e
            }
        }
    };
}

impl Read for CountedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        either!(&mut self.get_mut().io, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl Write for CountedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        either!(&mut self.get_mut().io, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        either!(&mut self.get_mut().io, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        either!(&mut self.get_mut().io, s => Pin::new(s).poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        either!(&mut self.get_mut().io, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
}
