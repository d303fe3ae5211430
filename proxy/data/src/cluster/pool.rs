//! Upstream connection pools, one hyper-util client per cluster, whose connector counts the
//! cluster's connections and waiting requests for the `max_connections` and
//! `max_pending_requests` circuit breakers.

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
use switchboard_proxy_xds::config::cluster::{Cluster, UpstreamProtocol};
use tokio::net::TcpStream;

use super::state::{ClusterState, ConnectionSlot};
use crate::body::Body;

/// The hyper client of one cluster, over its counting connector.
pub(crate) type HttpClient = Client<CountingConnector, Body>;

/// Connection pools, one per cluster (its connections are what `max_connections`
/// counts); each pools connections per endpoint, and an HTTP/2 one multiplexes requests
/// over one connection per endpoint.
#[derive(Default)]
pub(crate) struct ConnectionPools {
    pools: Mutex<HashMap<String, Pool>>,
}

struct Pool {
    http2: bool,
    connect_timeout: Duration,
    state: Arc<ClusterState>,
    client: HttpClient,
}

impl ConnectionPools {
    /// The client of `cluster`; a new one when its protocol or connect timeout changed, or
    /// its state was replaced. Pools of clusters gone from `snapshot` are dropped then.
    pub(crate) fn client(
        &self,
        cluster: &Cluster,
        state: &Arc<ClusterState>,
        snapshot: &Snapshot,
    ) -> HttpClient {
        let http2 = cluster.protocol == UpstreamProtocol::Http2;
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = pools.get(&cluster.name)
            && p.http2 == http2
            && p.connect_timeout == cluster.connect_timeout
            && Arc::ptr_eq(&p.state, state)
        {
            return p.client.clone();
        }
        pools.retain(|name, _| snapshot.clusters.contains_key(name));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cluster.connect_timeout));
        let connector = CountingConnector::new(connector, state.clone(), cluster.connect_timeout);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(60));
        if http2 {
            builder.http2_only(true);
        }
        let client = builder.build(connector);
        pools.insert(
            cluster.name.clone(),
            Pool {
                http2,
                connect_timeout: cluster.connect_timeout,
                state: state.clone(),
                client: client.clone(),
            },
        );
        client
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper-util's `HttpConnector`, counting the cluster's connections and the requests
/// waiting for one, under `max_connections` and `max_pending_requests`.
#[derive(Debug, Clone)]
pub(crate) struct CountingConnector {
    inner: HttpConnector,
    cluster: Arc<ClusterState>,
    /// How long a new connection may wait for a slot (the connect timeout).
    wait: Duration,
}

impl CountingConnector {
    fn new(inner: HttpConnector, cluster: Arc<ClusterState>, wait: Duration) -> Self {
        Self {
            inner,
            cluster,
            wait,
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
        Box::pin(async move {
            let _pending = cluster.begin_pending()?;
            let slot = cluster.connection_slot(endpoint, wait).await?;
            let io = connect.await?;
            Ok(CountedIo { io, _slot: slot })
        })
    }
}

/// A TCP connection that frees its slot when closed.
#[derive(Debug)]
pub(crate) struct CountedIo {
    io: TokioIo<TcpStream>,
    _slot: ConnectionSlot,
}

impl Connection for CountedIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for CountedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for CountedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
