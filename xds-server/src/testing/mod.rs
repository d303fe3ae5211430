//! Test helpers (feature `testing`): a real xDS server on 127.0.0.1:0, an ADS (or SDS)
//! client driven by hand, so tests send each request and assert each response, ACK and NACK,
//! and a mesh CA for SDS ([`TestIssuer`]).

mod delta;
mod issuer;

pub use delta::DeltaClient;
pub use issuer::TestIssuer;

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_store::{CredentialKind, Store, StoreError};
use switchboard_xds_proto::pb::google::protobuf::{Struct, Value, value::Kind};
use switchboard_xds_proto::service::ads::AggregatedDiscoveryServiceClient;
use switchboard_xds_proto::service::sds::SecretDiscoveryServiceClient;
use switchboard_xds_proto::{DiscoveryRequest, DiscoveryResponse, Node, Status as RpcStatus};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::server::{XdsConfig, XdsServer};

/// How long [`AdsClient::recv`] waits by default.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A running xDS server; stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub xds: XdsServer,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts a server on 127.0.0.1:0 reading `store`, with a short debounce and without sidecar
/// registration.
pub async fn start(store: Store) -> std::io::Result<TestServer> {
    start_with(
        store,
        XdsConfig {
            debounce: Duration::from_millis(5),
            register_sidecars: false,
            ..Default::default()
        },
    )
    .await
}

/// Starts a server on 127.0.0.1:0 with `config`, and every background task it asks for, as
/// `switchboard serve` does.
pub async fn start_with(store: Store, config: XdsConfig) -> std::io::Result<TestServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let running = XdsServer::start(store, config);
    let xds = running.server().clone();
    let (shutdown, stop) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopped = async {
            let _ = stop.await;
        };
        if let Err(e) = running.serve(listener, stopped).await {
            tracing::warn!(error = %e, "test xDS server failed");
        }
    });
    Ok(TestServer {
        addr,
        xds,
        shutdown: Some(shutdown),
    })
}

/// Starts a server like [`start`] whose mesh CA is `issuer`.
pub async fn start_with_issuer(
    store: Store,
    issuer: std::sync::Arc<TestIssuer>,
) -> std::io::Result<TestServer> {
    start_with(
        store,
        XdsConfig {
            debounce: Duration::from_millis(5),
            register_sidecars: false,
            issuer: Some(issuer),
            ..Default::default()
        },
    )
    .await
}

/// Starts a server like [`start`] that also registers authenticated sidecars as endpoints,
/// deregistering them `grace` after their last stream ended.
pub async fn start_registering(store: Store, grace: Duration) -> std::io::Result<TestServer> {
    start_with(
        store,
        XdsConfig {
            debounce: Duration::from_millis(5),
            register_sidecars: true,
            sidecar_grace_period: grace,
            ..Default::default()
        },
    )
    .await
}

/// Creates a credential of `kind` for `tenant` (for `mesh` alone when given) and returns its
/// secret.
pub async fn secret(
    store: &Store,
    tenant: &str,
    kind: CredentialKind,
    mesh: Option<&str>,
) -> Result<String, StoreError> {
    Ok(store
        .create_credential(tenant, kind, mesh, "test")
        .await?
        .secret)
}

/// A node named `tenants/{tenant}/meshes/{mesh}/nodes/{name}` with no metadata (proxyless).
pub fn node(tenant: &str, mesh: &str, name: &str) -> Node {
    Node {
        id: format!("tenants/{tenant}/meshes/{mesh}/nodes/{name}"),
        ..Default::default()
    }
}

/// `node` with string metadata fields (`role`, `service`, `app_port`, ...).
pub fn with_metadata(mut node: Node, fields: &[(&str, &str)]) -> Node {
    node.metadata = Some(Struct {
        fields: fields
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    Value {
                        kind: Some(Kind::StringValue((*v).to_owned())),
                    },
                )
            })
            .collect(),
    });
    node
}

/// A request of `type_url` for `names`, carrying `version` and `nonce`.
pub fn request(
    node: Option<&Node>,
    type_url: &str,
    names: &[&str],
    version: &str,
    nonce: &str,
) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        node: node.cloned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: type_url.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// An ADS stream driven by hand. The node goes with the first request only, as Envoy sends
/// it with `set_node_on_first_message_only`.
#[derive(Debug)]
pub struct AdsClient {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
    node: Node,
    node_sent: bool,
}

impl AdsClient {
    /// Opens an ADS stream to `url` as `node`, with `token` as a bearer proxy token.
    pub async fn connect(url: &str, node: Node, token: Option<&str>) -> Result<Self, Status> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| Status::invalid_argument(format!("bad URL {url}: {e}")))?
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot connect to {url}: {e}")))?;
        Self::over(channel, node, token).await
    }

    /// Opens an ADS stream over `channel` (one set up for TLS, say).
    pub async fn over(
        channel: tonic::transport::Channel,
        node: Node,
        token: Option<&str>,
    ) -> Result<Self, Status> {
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let (requests, request) = Self::request_stream(token)?;
        let responses = client
            .stream_aggregated_resources(request)
            .await?
            .into_inner();
        Ok(Self::new(requests, responses, node))
    }

    /// Opens a stream of the per-type SDS service (`StreamSecrets`); drive it like ADS with
    /// the Secret type URL.
    pub async fn connect_sds(url: &str, node: Node, token: Option<&str>) -> Result<Self, Status> {
        let mut client = SecretDiscoveryServiceClient::connect(url.to_owned())
            .await
            .map_err(|e| Status::unavailable(format!("cannot connect to {url}: {e}")))?;
        let (requests, request) = Self::request_stream(token)?;
        let responses = client.stream_secrets(request).await?.into_inner();
        Ok(Self::new(requests, responses, node))
    }

    #[allow(clippy::type_complexity)]
    fn request_stream(
        token: Option<&str>,
    ) -> Result<
        (
            mpsc::Sender<DiscoveryRequest>,
            tonic::Request<ReceiverStream<DiscoveryRequest>>,
        ),
        Status,
    > {
        let (requests, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::invalid_argument("the token is not valid metadata"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok((requests, request))
    }

    fn new(
        requests: mpsc::Sender<DiscoveryRequest>,
        responses: Streaming<DiscoveryResponse>,
        node: Node,
    ) -> Self {
        Self {
            requests,
            responses,
            node,
            node_sent: false,
        }
    }

    /// The node this client sends.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Sends a request as is.
    pub async fn send(&mut self, request: DiscoveryRequest) -> Result<(), Status> {
        self.requests
            .send(request)
            .await
            .map_err(|_| Status::cancelled("the stream is closed"))
    }

    /// Sends a request for `names` of `type_url` with `version` and `nonce`; the node goes
    /// along on the first.
    pub async fn request(
        &mut self,
        type_url: &str,
        names: &[&str],
        version: &str,
        nonce: &str,
    ) -> Result<(), Status> {
        let node = (!self.node_sent).then_some(&self.node);
        let req = request(node, type_url, names, version, nonce);
        self.node_sent = true;
        self.send(req).await
    }

    /// Subscribes (first request of a type, or a change without ACK).
    pub async fn subscribe(&mut self, type_url: &str, names: &[&str]) -> Result<(), Status> {
        self.request(type_url, names, "", "").await
    }

    /// ACKs `response`, keeping the subscription `names`.
    pub async fn ack(
        &mut self,
        response: &DiscoveryResponse,
        names: &[&str],
    ) -> Result<(), Status> {
        self.request(
            &response.type_url,
            names,
            &response.version_info,
            &response.nonce,
        )
        .await
    }

    /// NACKs `response` with `message`, saying the client keeps `kept_version`.
    pub async fn nack(
        &mut self,
        response: &DiscoveryResponse,
        names: &[&str],
        kept_version: &str,
        message: &str,
    ) -> Result<(), Status> {
        let node = (!self.node_sent).then_some(&self.node);
        let mut req = request(
            node,
            &response.type_url,
            names,
            kept_version,
            &response.nonce,
        );
        req.error_detail = Some(RpcStatus {
            code: tonic::Code::InvalidArgument as i32,
            message: message.to_owned(),
            details: vec![],
        });
        self.node_sent = true;
        self.send(req).await
    }

    /// The next response, waiting up to [`RECV_TIMEOUT`]. The stream's end is an error: its
    /// status, or CANCELLED without one.
    pub async fn recv(&mut self) -> Result<DiscoveryResponse, Status> {
        match self.recv_within(RECV_TIMEOUT).await {
            Some(r) => r,
            None => Err(Status::deadline_exceeded(format!(
                "no response within {RECV_TIMEOUT:?}"
            ))),
        }
    }

    /// The next response within `wait`, or `None` if none came.
    pub async fn recv_within(
        &mut self,
        wait: Duration,
    ) -> Option<Result<DiscoveryResponse, Status>> {
        match tokio::time::timeout(wait, self.responses.message()).await {
            Err(_) => None,
            Ok(Ok(Some(r))) => Some(Ok(r)),
            Ok(Ok(None)) => Some(Err(Status::cancelled("the server closed the stream"))),
            Ok(Err(status)) => Some(Err(status)),
        }
    }

    /// Receives and ACKs one response.
    pub async fn recv_and_ack(&mut self, names: &[&str]) -> Result<DiscoveryResponse, Status> {
        let response = self.recv().await?;
        self.ack(&response, names).await?;
        Ok(response)
    }

    /// Half-closes the request side, as ghz does right after its request: nothing more
    /// can be sent on this stream.
    pub fn half_close(&mut self) {
        let (closed, _) = mpsc::channel(1);
        self.requests = closed;
    }

    /// Every response until the stream ends (each waited for up to [`RECV_TIMEOUT`]), and
    /// how it ended: `Ok` for status OK.
    pub async fn until_end(&mut self) -> (Vec<DiscoveryResponse>, Result<(), Status>) {
        let mut responses = Vec::new();
        loop {
            match tokio::time::timeout(RECV_TIMEOUT, self.responses.message()).await {
                Ok(Ok(Some(r))) => responses.push(r),
                Ok(Ok(None)) => return (responses, Ok(())),
                Ok(Err(status)) => return (responses, Err(status)),
                Err(_) => {
                    let late = Status::deadline_exceeded(format!(
                        "the stream neither sent nor ended within {RECV_TIMEOUT:?}"
                    ));
                    return (responses, Err(late));
                }
            }
        }
    }

    /// Waits for the stream to end with an error status, skipping responses.
    pub async fn ended(&mut self) -> Status {
        loop {
            match self.recv().await {
                Ok(_) => continue,
                Err(status) => return status,
            }
        }
    }
}
