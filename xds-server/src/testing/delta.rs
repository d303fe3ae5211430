//! A delta (incremental) xDS client driven by hand, over ADS or one per-type service.

use std::collections::HashMap;
use std::time::Duration;

use switchboard_xds_proto::service::ads::AggregatedDiscoveryServiceClient;
use switchboard_xds_proto::service::cds::ClusterDiscoveryServiceClient;
use switchboard_xds_proto::service::eds::EndpointDiscoveryServiceClient;
use switchboard_xds_proto::service::lds::ListenerDiscoveryServiceClient;
use switchboard_xds_proto::service::rds::RouteDiscoveryServiceClient;
use switchboard_xds_proto::service::sds::SecretDiscoveryServiceClient;
use switchboard_xds_proto::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, ResourceType, Status as RpcStatus,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::RECV_TIMEOUT;

/// A delta stream driven by hand. The node goes with the first request only.
#[derive(Debug)]
pub struct DeltaClient {
    requests: Option<mpsc::Sender<DeltaDiscoveryRequest>>,
    responses: Streaming<DeltaDiscoveryResponse>,
    node: Node,
    node_sent: bool,
}

impl DeltaClient {
    /// Opens a delta ADS stream to `url` as `node`, with `token` as a bearer proxy token.
    pub async fn connect(url: &str, node: Node, token: Option<&str>) -> Result<Self, Status> {
        Self::connect_to(url, None, node, token).await
    }

    /// Opens a delta stream of the per-type service of `only` (`DeltaClusters`, ...), or of
    /// ADS when `None`.
    pub async fn connect_to(
        url: &str,
        only: Option<ResourceType>,
        node: Node,
        token: Option<&str>,
    ) -> Result<Self, Status> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| Status::invalid_argument(format!("bad URL {url}: {e}")))?
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot connect to {url}: {e}")))?;
        let (requests, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::invalid_argument("the token is not valid metadata"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let responses = open(channel, only, request).await?;
        Ok(Self {
            requests: Some(requests),
            responses,
            node,
            node_sent: false,
        })
    }

    /// Sends a request as is.
    pub async fn send(&mut self, request: DeltaDiscoveryRequest) -> Result<(), Status> {
        let closed = || Status::cancelled("the stream is closed");
        self.requests
            .as_ref()
            .ok_or_else(closed)?
            .send(request)
            .await
            .map_err(|_| closed())
    }

    /// A request of `type_url`; the node goes along on the first.
    pub fn request(&mut self, type_url: &str) -> DeltaDiscoveryRequest {
        let node = (!self.node_sent).then(|| self.node.clone());
        self.node_sent = true;
        DeltaDiscoveryRequest {
            node,
            type_url: type_url.to_owned(),
            ..Default::default()
        }
    }

    /// Subscribes to `subscribe` and unsubscribes `unsubscribe` of `type_url`.
    pub async fn subscribe(
        &mut self,
        type_url: &str,
        subscribe: &[&str],
        unsubscribe: &[&str],
    ) -> Result<(), Status> {
        let mut req = self.request(type_url);
        req.resource_names_subscribe = subscribe.iter().map(|n| (*n).to_owned()).collect();
        req.resource_names_unsubscribe = unsubscribe.iter().map(|n| (*n).to_owned()).collect();
        self.send(req).await
    }

    /// The first request of a type after a reconnect: `subscribe`, saying the client still
    /// holds `initial` (name, version).
    pub async fn resume(
        &mut self,
        type_url: &str,
        subscribe: &[&str],
        initial: HashMap<String, String>,
    ) -> Result<(), Status> {
        let mut req = self.request(type_url);
        req.resource_names_subscribe = subscribe.iter().map(|n| (*n).to_owned()).collect();
        req.initial_resource_versions = initial;
        self.send(req).await
    }

    /// ACKs `response`.
    pub async fn ack(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), Status> {
        let mut req = self.request(&response.type_url);
        req.response_nonce = response.nonce.clone();
        self.send(req).await
    }

    /// NACKs `response` with `message`.
    pub async fn nack(
        &mut self,
        response: &DeltaDiscoveryResponse,
        message: &str,
    ) -> Result<(), Status> {
        let mut req = self.request(&response.type_url);
        req.response_nonce = response.nonce.clone();
        req.error_detail = Some(RpcStatus {
            code: tonic::Code::InvalidArgument as i32,
            message: message.to_owned(),
            details: vec![],
        });
        self.send(req).await
    }

    /// Half-closes the stream: no more requests; responses can still be read.
    pub fn close(&mut self) {
        self.requests = None;
    }

    /// The next response, waiting up to [`RECV_TIMEOUT`]. The stream's end is an error: its
    /// status, or CANCELLED when it ended OK.
    pub async fn recv(&mut self) -> Result<DeltaDiscoveryResponse, Status> {
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
    ) -> Option<Result<DeltaDiscoveryResponse, Status>> {
        match tokio::time::timeout(wait, self.responses.message()).await {
            Err(_) => None,
            Ok(Ok(Some(r))) => Some(Ok(r)),
            Ok(Ok(None)) => Some(Err(Status::cancelled("the server closed the stream"))),
            Ok(Err(status)) => Some(Err(status)),
        }
    }

    /// Receives and ACKs one response.
    pub async fn recv_and_ack(&mut self) -> Result<DeltaDiscoveryResponse, Status> {
        let response = self.recv().await?;
        self.ack(&response).await?;
        Ok(response)
    }

    /// Waits for the stream to end, skipping responses: its status, or CANCELLED when it
    /// ended OK.
    pub async fn ended(&mut self) -> Status {
        loop {
            match self.recv().await {
                Ok(_) => continue,
                Err(status) => return status,
            }
        }
    }
}

async fn open(
    channel: Channel,
    only: Option<ResourceType>,
    request: tonic::Request<ReceiverStream<DeltaDiscoveryRequest>>,
) -> Result<Streaming<DeltaDiscoveryResponse>, Status> {
    const MAX: usize = 64 << 20;
    let response = match only {
        None => {
            AggregatedDiscoveryServiceClient::new(channel)
                .max_decoding_message_size(MAX)
                .delta_aggregated_resources(request)
                .await?
        }
        Some(ResourceType::Listener) => {
            ListenerDiscoveryServiceClient::new(channel)
                .max_decoding_message_size(MAX)
                .delta_listeners(request)
                .await?
        }
        Some(ResourceType::RouteConfiguration) => {
            RouteDiscoveryServiceClient::new(channel)
                .max_decoding_message_size(MAX)
                .delta_routes(request)
                .await?
        }
        Some(ResourceType::Cluster) => {
            ClusterDiscoveryServiceClient::new(channel)
                .max_decoding_message_size(MAX)
                .delta_clusters(request)
                .await?
        }
        Some(ResourceType::ClusterLoadAssignment) => {
            EndpointDiscoveryServiceClient::new(channel)
                .max_decoding_message_size(MAX)
                .delta_endpoints(request)
                .await?
        }
        Some(ResourceType::Secret) => {
            SecretDiscoveryServiceClient::new(channel)
                .max_decoding_message_size(MAX)
                .delta_secrets(request)
                .await?
        }
    };
    Ok(response.into_inner())
}
