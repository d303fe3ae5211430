//! Workload certificates from the control plane, as a sidecar gets them: an ADS stream
//! authenticated with a proxy token, node metadata `role: sidecar`, and a Secret
//! subscription to `default` (the node's certificate and key, issued for its service's
//! SPIFFE ID when the stream asks) and `ROOTCA` (the mesh's trust bundle).
//!
//! The proxy benchmark uses one such certificate as its TLS client identity; `sds-issue`
//! opens many such streams to measure issuance by the control plane.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use switchboard_xds_proto::pb::envoy::config::core::v3::DataSource;
use switchboard_xds_proto::pb::envoy::config::core::v3::data_source::Specifier;
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::secret;
use switchboard_xds_proto::pb::google::protobuf::{Struct, Value, value};
use switchboard_xds_proto::service::ads::AggregatedDiscoveryServiceClient;
use switchboard_xds_proto::{DiscoveryRequest, DiscoveryResponse, Node, Secret, type_url, unpack};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// The secret names Envoy and Istio use, which the control plane serves.
pub const DEFAULT: &str = "default";
pub const ROOTCA: &str = "ROOTCA";

/// A sidecar's certificate, key and trust bundle, all PEM.
#[derive(Clone)]
pub struct WorkloadCertificate {
    pub chain_pem: String,
    pub key_pem: String,
    pub roots_pem: String,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("WorkloadCertificate")
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
}

/// The node of a sidecar of `service` in `tenant/mesh`, named `name`. `inbound_port` is only
/// where the control plane registers it as an endpoint of its service; nothing listens there
/// unless the caller is a real sidecar.
pub fn sidecar_node(
    tenant: &str,
    mesh: &str,
    name: &str,
    service: &str,
    app_port: u16,
    inbound_port: u16,
) -> Node {
    let text = |s: String| Value {
        kind: Some(value::Kind::StringValue(s)),
    };
    let fields = [
        ("role", "sidecar".to_owned()),
        ("service", service.to_owned()),
        ("app_port", app_port.to_string()),
        ("inbound_port", inbound_port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), text(v)))
    .collect();
    Node {
        id: format!("tenants/{tenant}/meshes/{mesh}/nodes/{name}"),
        user_agent_name: "switchboard-loadtest".into(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

/// An HTTP/2 connection to the xDS port (`http://host:port`), which many streams may share.
pub async fn connect(xds_url: &str) -> Result<Channel> {
    Endpoint::from_shared(xds_url.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to the xDS port {xds_url}"))
}

/// One ADS stream subscribed to `default` and `ROOTCA`; the stream ends when this is dropped.
pub struct SecretStream {
    tx: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
    default: Option<(String, String)>,
    roots: Option<String>,
}

impl SecretStream {
    /// Opens the stream on `channel` as `node`, with `token` as its proxy token, and sends the
    /// subscription.
    pub async fn open(channel: Channel, token: &str, node: Node) -> Result<SecretStream> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(DiscoveryRequest {
            node: Some(node),
            resource_names: vec![DEFAULT.into(), ROOTCA.into()],
            type_url: type_url::SECRET.into(),
            ..Default::default()
        })
        .await
        .map_err(|_| anyhow!("the request stream is closed"))?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .context("the proxy token is not a valid header value")?,
        );
        let responses = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(request)
            .await
            .map_err(|s| {
                anyhow!(
                    "the ADS stream was refused: {} ({:?})",
                    s.message(),
                    s.code()
                )
            })?
            .into_inner();
        Ok(SecretStream {
            tx,
            responses,
            default: None,
            roots: None,
        })
    }

    /// Reads (and ACKs) responses until both secrets have arrived, within `timeout`.
    pub async fn certificate(&mut self, timeout: Duration) -> Result<WorkloadCertificate> {
        tokio::time::timeout(timeout, self.read_until_both())
            .await
            .map_err(|_| anyhow!("no `default` and `ROOTCA` within {timeout:?}"))?
    }

    async fn read_until_both(&mut self) -> Result<WorkloadCertificate> {
        loop {
            if let (Some((chain_pem, key_pem)), Some(roots_pem)) = (&self.default, &self.roots) {
                return Ok(WorkloadCertificate {
                    chain_pem: chain_pem.clone(),
                    key_pem: key_pem.clone(),
                    roots_pem: roots_pem.clone(),
                });
            }
            let response = self
                .responses
                .message()
                .await
                .map_err(|s| anyhow!("the ADS stream failed: {} ({:?})", s.message(), s.code()))?
                .context("the ADS stream ended")?;
            if response.type_url != type_url::SECRET {
                bail!(
                    "a response of type {} to a Secret subscription",
                    response.type_url
                );
            }
            for any in &response.resources {
                let s: Secret = unpack(any).context("a Secret resource")?;
                match s.r#type {
                    Some(secret::Type::TlsCertificate(tls)) if s.name == DEFAULT => {
                        let chain =
                            text(tls.certificate_chain.as_ref()).context("default: chain")?;
                        let key = text(tls.private_key.as_ref()).context("default: key")?;
                        self.default = Some((chain, key));
                    }
                    Some(secret::Type::ValidationContext(v)) if s.name == ROOTCA => {
                        self.roots = Some(text(v.trusted_ca.as_ref()).context("ROOTCA")?);
                    }
                    _ => bail!("an unexpected secret {:?}", s.name),
                }
            }
            // ACK, keeping the subscription.
            self.tx
                .send(DiscoveryRequest {
                    version_info: response.version_info.clone(),
                    resource_names: vec![DEFAULT.into(), ROOTCA.into()],
                    type_url: type_url::SECRET.into(),
                    response_nonce: response.nonce.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|_| anyhow!("the request stream is closed"))?;
        }
    }
}

/// An inline data source as text.
fn text(source: Option<&DataSource>) -> Result<String> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => {
            String::from_utf8(b.clone()).context("not UTF-8 (PEM expected)")
        }
        Some(Specifier::InlineString(s)) => Ok(s.clone()),
        _ => bail!("not inline"),
    }
}

/// A certificate for node `name` of `service` from the xDS port at `xds_url`, on a stream
/// that is closed again once it has arrived.
pub async fn fetch(
    xds_url: &str,
    token: &str,
    node: Node,
    timeout: Duration,
) -> Result<WorkloadCertificate> {
    let channel = connect(xds_url).await?;
    let mut stream = SecretStream::open(channel, token, node).await?;
    stream.certificate(timeout).await
}
