//! The incremental (delta) xDS stream: the SotW stream's admission, status, metrics, SDS
//! guard and flow control around the delta protocol state ([`DeltaState`]).
//!
//! **Half-close.** A client that half-closes still gets the responses owed to the requests it
//! sent (what [`DeltaState::next_response`] has for the current snapshot), then the stream
//! ends OK. It waits for no ACK, and is held no longer than [`HALF_CLOSE_GRACE`] (a client
//! that does not read).

use std::sync::Arc;
use std::time::SystemTime;

use switchboard_translator::XdsResource;
use switchboard_xds_proto::{DeltaDiscoveryRequest, ResourceType};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, field};

use super::{Client, Engine, Protocol, Stream};
use crate::metrics;
use crate::protocol::Handled;
use crate::protocol::Resources;
use crate::protocol::delta::{DeltaError, DeltaState};
use crate::sds::DEFAULT;
use crate::sds::guard::{self, Entitlement};
use crate::status::Sent;
use crate::view::NodeView;
use crate::wire::{DeltaResponse, DeltaResponseStream, Queued, WireMessage};

/// The service name a delta stream reports in its status.
fn service_name(only: Option<ResourceType>) -> &'static str {
    match only {
        None => "delta ADS",
        Some(ResourceType::Listener) => "delta LDS",
        Some(ResourceType::RouteConfiguration) => "delta RDS",
        Some(ResourceType::Cluster) => "delta CDS",
        Some(ResourceType::ClusterLoadAssignment) => "delta EDS",
        Some(ResourceType::Secret) => "delta SDS",
    }
}

fn invalid(e: DeltaError) -> Status {
    Status::invalid_argument(e.to_string())
}

impl Engine {
    /// Starts serving a delta stream of `only` one type, or of every type (ADS). Returns at
    /// once, as [`Engine::open`] does.
    pub(crate) fn open_delta(
        self: &Arc<Self>,
        only: Option<ResourceType>,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Response<DeltaResponseStream> {
        let id = self.registry.next_stream_id();
        let service = service_name(only);
        let client = Client {
            token: crate::auth::bearer(request.metadata()),
            peer: request.remote_addr(),
            certificates: request.peer_certs(),
        };
        let requests = request.into_inner();
        let (tx, responses) = DeltaResponseStream::channel(self.queue);
        let span = tracing::info_span!(
            "xds_stream",
            stream = id,
            service,
            peer = ?client.peer,
            node = field::Empty,
            role = field::Empty,
        );
        let engine = Arc::clone(self);
        tokio::spawn(
            async move {
                let out = tx.clone();
                match engine.drive_delta(id, only, client, requests, tx).await {
                    Ok(()) => tracing::debug!("stream closed"),
                    Err(status) => {
                        tracing::info!(code = ?status.code(), message = status.message(), "stream ended");
                        let _ = out.send(Err(status)).await;
                    }
                }
            }
            .instrument(span),
        );
        Response::new(responses)
    }

    async fn drive_delta(
        &self,
        id: u64,
        only: Option<ResourceType>,
        client: Client,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Queued<DeltaResponse>>,
    ) -> Result<(), Status> {
        let mut state = match only {
            Some(t) => DeltaState::single(t, self.limits),
            None => DeltaState::aggregated(self.limits),
        };
        // Dropped once taken in, and the admission boxed, as in `Engine::drive`.
        let handled = match requests.message().await {
            Ok(Some(first)) => state.handle(&first).map_err(invalid)?,
            Ok(None) => return Ok(()),
            Err(status) => return Err(status),
        };
        let (Some(node), Some(node_id)) = (state.shared_node(), state.node_id().cloned()) else {
            return Err(Status::internal(
                "the first request was accepted without a node",
            ));
        };
        let admission =
            Box::pin(self.admit(id, service_name(only), client, node, &node_id)).await?;
        self.serve(state, handled, admission, node_id, requests, tx)
            .await
    }
}

impl Protocol for DeltaState {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;

    fn handle(&mut self, request: &DeltaDiscoveryRequest) -> Result<Handled, Status> {
        DeltaState::handle(self, request).map_err(invalid)
    }

    fn next(stream: &mut Stream<Self>) -> Option<DeltaResponse> {
        stream.next_delta()
    }

    fn check(response: &DeltaResponse, may: Entitlement<'_>) -> Result<(), guard::Violation> {
        guard::check_delta(response, may)
    }
}

/// The node's view, and whether its `default` certificate is being issued: a delta client
/// waiting for it is not told it does not exist.
struct Awaiting<'a> {
    view: &'a NodeView,
    certificate: bool,
}

impl Resources for Awaiting<'_> {
    fn revision(&self) -> i64 {
        self.view.revision()
    }

    fn get(&self, t: ResourceType, name: &str) -> Option<&Arc<XdsResource>> {
        self.view.get(t, name)
    }

    fn wildcard(&self, t: ResourceType) -> Box<dyn Iterator<Item = &Arc<XdsResource>> + '_> {
        self.view.wildcard(t)
    }

    fn pending(&self, t: ResourceType, name: &str) -> bool {
        self.certificate && t == ResourceType::Secret && name == DEFAULT
    }
}

impl Stream<DeltaState> {
    /// The next delta response to write, if any, recorded in the status and metrics.
    fn next_delta(&mut self) -> Option<DeltaResponse> {
        let awaiting = Awaiting {
            view: &self.view,
            certificate: self.renewal.is_some() && self.view.certificate().is_none(),
        };
        let out = self.state.next_response(&awaiting)?;
        let response = out.response();
        let Some(rtype) = out.rtype else {
            return Some(response);
        };
        metrics::pushed(&self.tenant, rtype, response.encoded_len());
        if let Some(at) = self.view.snapshot().committed_at {
            // As in SotW: the first push of a newly committed revision measures it.
            let measured = self.measured.get_or_insert(rtype, self.admitted_revision);
            if out.revision > *measured {
                *measured = out.revision;
                self.convergence.insert(rtype, (out.nonce.clone(), at));
            }
        }
        let sent = Sent {
            version: out.system_version_info.clone(),
            nonce: out.nonce.clone(),
            revision: out.revision,
            time: SystemTime::now(),
        };
        tracing::debug!(
            r#type = %rtype,
            version = %sent.version,
            nonce = %sent.nonce,
            revision = sent.revision,
            resources = out.resources.len(),
            removed = out.removed.len(),
            phase = ?out.phase,
            "delta push"
        );
        if rtype == ResourceType::Secret
            && let Some(c) = self.view.certificate()
            && out.state.iter().any(|r| Arc::ptr_eq(r, &c.resource))
        {
            self.registration.record_certificate(c.info.clone());
        }
        let snapshot = self.view.snapshot();
        self.pushes.pushed(
            &snapshot.trace,
            (snapshot.tenant.as_str(), snapshot.mesh.as_str()),
            rtype,
            &sent,
        );
        self.registration.record_sent(rtype, sent, out.state);
        Some(response)
    }
}
