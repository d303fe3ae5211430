//! Test helpers (feature `testing`): a hand-driven ADS server on 127.0.0.1, and builders of
//! the Envoy resources the proxy supports.
//!
//! The server answers nothing by itself: the test reads each request the client sends
//! ([`AdsServer::next_request`]) and pushes each response ([`AdsServer::respond`]), so it can
//! assert every ACK and NACK. [`AdsServer::stop`] kills it (the stream fails and the port
//! closes); [`AdsServer::start_on`] brings one back on the same address.
//!
//! It serves one protocol ([`Serves`]) and answers the other `UNIMPLEMENTED`, as a control
//! plane without it would: [`AdsServer::start`] is state of the world, and
//! [`AdsServer::start_delta`] incremental (read with [`AdsServer::next_delta`], answer with
//! [`AdsServer::respond_delta`]).

pub mod rbac;
pub mod resources;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::Stream;
use switchboard_xds_proto::service::ads::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use switchboard_xds_proto::{
    Any, DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// How long [`AdsServer::next_request`] waits.
pub const WAIT: Duration = Duration::from_secs(10);

/// A request as the server received it, with the stream it came on (1, 2, ... in order of
/// connection) and that stream's `authorization` metadata.
#[derive(Debug, Clone)]
pub struct Received<R = DiscoveryRequest> {
    pub stream: u64,
    pub authorization: Option<String>,
    pub request: R,
}

/// A delta request as the server received it.
pub type DeltaReceived = Received<DeltaDiscoveryRequest>;

/// Forwards the requests of stream number `stream` to the test until either side ends.
fn forward<R: prost::Message + Default + Send + 'static>(
    mut incoming: Streaming<R>,
    stream: u64,
    authorization: Option<String>,
    requests: mpsc::UnboundedSender<Received<R>>,
) {
    tokio::spawn(async move {
        while let Ok(Some(request)) = incoming.message().await {
            let received = Received {
                stream,
                authorization: authorization.clone(),
                request,
            };
            if requests.send(received).is_err() {
                break;
            }
        }
    });
}

/// Which ADS protocol a server answers; it refuses the other with `UNIMPLEMENTED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    Sotw,
    Delta,
}

type ResponseTx = mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>;
type DeltaTx = mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>;

#[derive(Debug, Default)]
struct Streams {
    opened: u64,
    /// Calls of the protocol not served, answered `UNIMPLEMENTED`.
    refused: u64,
    current: Option<ResponseTx>,
    current_delta: Option<DeltaTx>,
}

#[derive(Debug, Clone)]
struct Service {
    serves: Serves,
    requests: mpsc::UnboundedSender<Received>,
    delta_requests: mpsc::UnboundedSender<DeltaReceived>,
    streams: Arc<Mutex<Streams>>,
}

impl Service {
    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refuse(&self, what: &str) -> Status {
        self.lock().refused += 1;
        Status::unimplemented(format!("this test server does not serve {what}"))
    }
}

fn authorization<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        if self.serves != Serves::Sotw {
            return Err(self.refuse("StreamAggregatedResources"));
        }
        let authorization = authorization(&request);
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = {
            let mut streams = self.lock();
            streams.opened += 1;
            streams.current = Some(tx);
            streams.opened
        };
        forward(
            request.into_inner(),
            stream,
            authorization,
            self.requests.clone(),
        );
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        if self.serves != Serves::Delta {
            return Err(self.refuse("DeltaAggregatedResources"));
        }
        let authorization = authorization(&request);
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = {
            let mut streams = self.lock();
            streams.opened += 1;
            streams.current_delta = Some(tx);
            streams.opened
        };
        forward(
            request.into_inner(),
            stream,
            authorization,
            self.delta_requests.clone(),
        );
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// A hand-driven ADS server; stops when dropped.
#[derive(Debug)]
pub struct AdsServer {
    pub addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Received>,
    delta_requests: mpsc::UnboundedReceiver<DeltaReceived>,
    streams: Arc<Mutex<Streams>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl AdsServer {
    /// A state-of-the-world server on 127.0.0.1 with a free port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A delta server on 127.0.0.1 with a free port.
    pub async fn start_delta() -> std::io::Result<Self> {
        Self::start_serving(SocketAddr::from(([127, 0, 0, 1], 0)), Serves::Delta).await
    }

    /// A state-of-the-world server on `addr` (a restart on the address of a stopped server).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_serving(addr, Serves::Sotw).await
    }

    /// A server of `serves` on `addr`.
    pub async fn start_serving(addr: SocketAddr, serves: Serves) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, requests) = mpsc::unbounded_channel();
        let (delta_tx, delta_requests) = mpsc::unbounded_channel();
        let streams = Arc::new(Mutex::new(Streams::default()));
        let service = Service {
            serves,
            requests: tx,
            delta_requests: delta_tx,
            streams: streams.clone(),
        };
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(service))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop.await;
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "test ADS server failed");
            }
        });
        Ok(Self {
            addr,
            requests,
            delta_requests,
            streams,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many streams have been opened.
    pub fn streams_opened(&self) -> u64 {
        self.lock().opened
    }

    /// How many calls of the protocol it does not serve it answered `UNIMPLEMENTED`.
    pub fn calls_refused(&self) -> u64 {
        self.lock().refused
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next request from any stream, or `None` after [`WAIT`].
    pub async fn next_request(&mut self) -> Option<Received> {
        self.next_request_within(WAIT).await
    }

    pub async fn next_request_within(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.requests.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next request of `type_url`, skipping others.
    pub async fn next_of(&mut self, type_url: &str) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self.next_request_within(left).await?;
            if r.request.type_url == type_url {
                return Some(r);
            }
        }
    }

    /// Sends `response` on the latest stream; `false` if there is none.
    pub fn respond(&self, response: DiscoveryResponse) -> bool {
        self.lock()
            .current
            .as_ref()
            .is_some_and(|tx| tx.send(Ok(response)).is_ok())
    }

    /// The next delta request from any stream, or `None` after [`WAIT`].
    pub async fn next_delta(&mut self) -> Option<DeltaReceived> {
        tokio::time::timeout(WAIT, self.delta_requests.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends a delta `response` on the latest stream; `false` if there is none.
    pub fn respond_delta(&self, response: DeltaDiscoveryResponse) -> bool {
        self.lock()
            .current_delta
            .as_ref()
            .is_some_and(|tx| tx.send(Ok(response)).is_ok())
    }

    /// Ends the latest stream with `status`.
    pub fn fail_stream(&self, status: Status) {
        let mut streams = self.lock();
        if let Some(tx) = streams.current.take() {
            let _ = tx.send(Err(status.clone()));
        }
        if let Some(tx) = streams.current_delta.take() {
            let _ = tx.send(Err(status));
        }
    }

    /// Kills the server: the stream fails with UNAVAILABLE and the port closes.
    pub async fn stop(mut self) {
        self.fail_stream(Status::unavailable("test server stopped"));
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Graceful shutdown waits for open connections, which the client closes when its
        // stream fails; do not wait longer than that.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        self.fail_stream(Status::unavailable("test server dropped"));
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// A response of `type_url` with `resources`.
pub fn response(
    type_url: &str,
    version: &str,
    nonce: &str,
    resources: Vec<Any>,
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.to_owned(),
        resources,
        type_url: type_url.to_owned(),
        nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// A delta response of `type_url`: `resources` as (version, resource) and `removed` names.
pub fn delta_response(
    type_url: &str,
    nonce: &str,
    resources: Vec<(&str, Any)>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.to_owned(),
        nonce: nonce.to_owned(),
        resources: resources
            .into_iter()
            .map(|(version, any)| Resource {
                name: resource_name(&any),
                version: version.to_owned(),
                resource: Some(any),
                ..Default::default()
            })
            .collect(),
        removed_resources: removed.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

/// The name inside a packed resource of a type the client handles (`""` for others).
fn resource_name(any: &Any) -> String {
    use crate::client::XdsResource;
    use crate::config::{Cluster, Listener, LoadAssignment, RouteConfig, Secret};
    use switchboard_xds_proto::unpack;
    fn name<T: XdsResource>(any: &Any) -> Option<String> {
        unpack::<T::Proto>(any)
            .ok()
            .map(|p| T::name_of(&p).to_owned())
    }
    name::<Listener>(any)
        .or_else(|| name::<RouteConfig>(any))
        .or_else(|| name::<Cluster>(any))
        .or_else(|| name::<LoadAssignment>(any))
        .or_else(|| name::<Secret>(any))
        .unwrap_or_default()
}
