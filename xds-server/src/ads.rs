//! One xDS stream, from its first request to its end: admission, then a loop that takes in
//! requests and snapshot changes and writes responses.
//!
//! **Flow control.** Each stream has a small bounded queue towards the client. The stream
//! computes the next response only when the queue has room, from the snapshot current at
//! that moment: a slow client skips intermediate snapshots instead of piling them up, and
//! never holds up another stream (each has its own task and queue; snapshots are shared,
//! read-only `Arc`s).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchboard_model::identity::TrustBundle;
use switchboard_store::Store;
use switchboard_translator::NodeRole;
use switchboard_xds_proto::{DiscoveryRequest, Node, ResourceType};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, field};

use crate::admission::{self, InitialPushes};
use crate::auth::cert::{RootsCache, check_claim, reverify};
use crate::auth::known::KnownCredentials;
use crate::auth::{self, Admitted, AuthError, Presented};
use crate::cache::{MeshHandle, MeshState, SnapshotCache};
use crate::expiry::Expiry;
use crate::metrics::{self, StreamGauge};
use crate::node::{
    NodeId, describe_role, has_certificate_providers, node_role, sidecar_endpoint_meta,
};
use crate::protocol::{Handled, Limits, ProtocolError, StreamState, Subscriptions};
use crate::push_trace::PushTraces;
use crate::quotas::StreamSlot;
use crate::registration::{Desired, Registered, Registrar};
use crate::revocation::{Held, Revocations};
use crate::sds::guard::{self, Entitlement};
use crate::sds::renewal::{Renewal, Wanted};
use crate::sds::{NodeSecret, WorkloadIssuer, wants_default};
use crate::snapshot::MeshSnapshot;
use crate::status::{Acked, Nacked, ProxyRegistry, ProxyStatus, Registration, Sent};
use crate::view::NodeView;
use crate::wire::{Queued, ResponseStream, SotwResponse, WireMessage};

mod delta;
mod per_type;

use per_type::PerType;

/// How long a stream the client half-closed may take to write what it owes before it ends
/// anyway: a client that half-closes and then stops reading cannot hold it open.
pub(crate) const HALF_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// What every stream shares.
pub(crate) struct Engine {
    pub(crate) store: Store,
    pub(crate) cache: SnapshotCache,
    pub(crate) registry: ProxyRegistry,
    pub(crate) limits: Limits,
    /// Responses queued towards one client at most.
    pub(crate) queue: usize,
    /// Where authenticated sidecar streams register their endpoint.
    pub(crate) registrar: Registrar,
    /// The proxy tokens of open streams, to end them when revoked.
    pub(crate) revocations: Revocations,
    /// Parsed trust bundles, for client certificates.
    pub(crate) roots: RootsCache,
    /// Proxy tokens verified here, admitted while the store is unreachable.
    pub(crate) known: KnownCredentials,
    /// The mesh CA, for `default` certificates; `None` serves none.
    pub(crate) issuer: Option<Arc<dyn WorkloadIssuer>>,
    /// Open streams per tenant, against the tenant's `streams` quota.
    pub(crate) streams: Arc<crate::quotas::TenantStreams>,
    /// Turns for streams to push their initial responses.
    pub(crate) initial_pushes: InitialPushes,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cache", &self.cache)
            .field("registry", &self.registry)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts serving a stream of `only` one type (single-type services) or of every type
    /// (ADS). Returns at once; admission happens on the first request, and a refusal ends
    /// the response stream with its status.
    pub(crate) fn open(
        self: &Arc<Self>,
        only: Option<ResourceType>,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Response<ResponseStream> {
        let id = self.registry.next_stream_id();
        let service = only.map_or("ADS", ResourceType::short_name);
        let token = auth::bearer(request.metadata());
        let peer = request.remote_addr();
        let certificates = request.peer_certs();
        let requests = request.into_inner();
        let (tx, responses) = ResponseStream::channel(self.queue);
        let span = tracing::info_span!(
            "xds_stream",
            stream = id,
            service,
            peer = ?peer,
            node = field::Empty,
            role = field::Empty,
        );
        let engine = Arc::clone(self);
        tokio::spawn(
            async move {
                let out = tx.clone();
                let client = Client {
                    token,
                    peer,
                    certificates,
                };
                match engine.drive(id, only, client, requests, tx).await {
                    Ok(()) => tracing::debug!("stream closed"),
                    Err(status) => {
                        metrics::stream_failed(status.code());
                        tracing::info!(code = ?status.code(), message = status.message(), "stream ended");
                        let _ = out.send(Err(status)).await;
                    }
                }
            }
            .instrument(span),
        );
        Response::new(responses)
    }

    async fn drive(
        &self,
        id: u64,
        only: Option<ResourceType>,
        client: Client,
        mut requests: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Queued>,
    ) -> Result<(), Status> {
        let service = only.map_or("ADS", ResourceType::short_name);
        let mut state = match only {
            Some(t) => StreamState::single(t, self.limits),
            None => StreamState::aggregated(self.limits),
        };
        // The first request is dropped once taken in: held in this future, it would stay for
        // the stream's whole life (with its copy of the node).
        let handled = match requests.message().await {
            Ok(Some(first)) => state.handle(&first).map_err(invalid)?,
            Ok(None) => return Ok(()),
            // A request that does not decode (too large, not protobuf): say so.
            Err(status) => return Err(status),
        };
        let (Some(node), Some(node_id)) = (state.shared_node(), state.node_id().cloned()) else {
            return Err(Status::internal(
                "the first request was accepted without a node",
            ));
        };
        // Boxed: the admission's future (store reads) is freed once it is done, instead of
        // sizing the stream's task for its whole life.
        let admission = Box::pin(self.admit(id, service, client, node, &node_id)).await?;
        self.serve(state, handled, admission, node_id, requests, tx)
            .await
    }

    /// Admits a stream whose first request named `node`, for SotW and delta alike: checks
    /// its credential and claim, holds it for revocation and expiry, registers its status
    /// (and a sidecar's endpoint) and builds its view. An error ends the stream.
    async fn admit(
        &self,
        id: u64,
        service: &'static str,
        client: Client,
        node: Arc<Node>,
        node_id: &NodeId,
    ) -> Result<Admission, Status> {
        let role = node_role(&node).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let certificate_providers = has_certificate_providers(&node)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A sidecar's endpoint metadata is checked whether or not it will register.
        let endpoint_meta = match &role {
            NodeRole::Sidecar(_) => Some(
                sidecar_endpoint_meta(&node)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
            _ => None,
        };
        let span = tracing::Span::current();
        span.record("node", field::display(&node_id));
        span.record("role", field::display(describe_role(&role)));
        let Client {
            token,
            peer,
            certificates,
        } = client;
        let token = token.map_err(|e| e.status())?;
        let presented = Presented {
            token: token.as_deref(),
            certificates: certificates.as_deref().map(Vec::as_slice),
        };
        let Admitted {
            mut mesh,
            authenticated,
            credential,
            identity,
            expires,
        } = Box::pin(auth::authorize(
            &self.store,
            &self.cache,
            &self.roots,
            &self.known,
            presented,
            node_id,
            SystemTime::now(),
        ))
        // Boxed: the admission's future (store reads) is large, and inline it would size the
        // stream's task for its whole life.
        .await
        .map_err(|e| e.status())?;
        let quota = self.streams.admit(&self.store, &node_id.tenant).await?;
        // A certificate speaks for one service: the node may claim no other.
        if let Some(identity) = &identity {
            check_claim(identity, &role).map_err(|e| e.status())?;
        }
        // Held for the stream's life: a revoked token ends the stream, on any replica.
        let token_hold = credential.map(|id| self.revocations.hold(&id));
        // And no longer than the credential is valid.
        let expiry = Expiry::new(expires);
        // A certificate is checked again whenever the mesh's bundle changes (a completed CA
        // rotation stops trusting the old root).
        let mut trusted = match (&identity, certificates) {
            (Some(_), Some(chain)) if token.is_none() => Some(Trusted {
                chain,
                bundle: TrustBundle::default(),
            }),
            _ => None,
        };
        let MeshState::Ready(snapshot) = mesh.current() else {
            return Err(Status::unavailable("the mesh is not loaded; retry"));
        };
        if let Some(t) = &mut trusted {
            t.follow(&snapshot, &self.roots, node_id)?;
        }
        let registration = self.registry.register(ProxyStatus {
            stream_id: id,
            node_id: node_id.clone(),
            node,
            role: describe_role(&role),
            service,
            authenticated,
            connected_since: SystemTime::now(),
            types: BTreeMap::new(),
            certificate: None,
            acked_revision: None,
        });
        tracing::info!(
            authenticated,
            identity = identity.as_ref().map(|i| i.to_uri()),
            revision = snapshot.revision,
            "stream admitted"
        );
        metrics::admitted(&node_id.tenant, service);
        let admitted_revision = snapshot.revision;
        // Only a stream that proved who it is may write to the store.
        let endpoint = match (&role, endpoint_meta) {
            (NodeRole::Sidecar(params), Some(meta))
                if authenticated && self.registrar.enabled() =>
            {
                match Desired::new(&node_id.name, params, &meta, peer) {
                    Ok(desired) => self.registrar.register(id, node_id, desired),
                    Err(e) => {
                        tracing::warn!(error = %e, "not registering the sidecar as an endpoint");
                        None
                    }
                }
            }
            _ => None,
        };
        let view = NodeView::new(snapshot, role).with_certificate_providers(certificate_providers);
        // Only a stream that proved who it is may receive secrets.
        let view = if authenticated {
            view.with_secrets()
        } else {
            view
        };
        Ok(Admission {
            mesh,
            authenticated,
            token_hold,
            expiry,
            trusted,
            registration,
            endpoint,
            view,
            admitted_revision,
            quota,
        })
    }

    /// The loop of an admitted stream, state of the world or delta (`P`): takes in requests
    /// and snapshot changes, and writes responses when the client's queue has room.
    async fn serve<P: Protocol>(
        &self,
        state: P,
        handled: Handled,
        admission: Admission,
        node_id: NodeId,
        mut requests: Streaming<P::Request>,
        tx: mpsc::Sender<Queued<P::Response>>,
    ) -> Result<(), Status> {
        let Admission {
            mut mesh,
            authenticated,
            mut token_hold,
            mut expiry,
            mut trusted,
            registration,
            endpoint,
            view,
            admitted_revision,
            quota: _quota,
        } = admission;
        let mut stream = Stream {
            admitted_revision,
            state,
            view,
            registration,
            gauge: StreamGauge::new(&node_id.tenant),
            tenant: node_id.tenant.clone(),
            _endpoint: endpoint,
            convergence: PerType::default(),
            measured: PerType::default(),
            renewal: None,
            pushes: PushTraces::new(&node_id),
        };
        stream.took(handled);
        stream.sync_certificate(self.issuer.as_ref());
        // The initial responses wait for a turn (admission control; see `admission`).
        let mut initial = Some(self.initial_pushes.acquire().await);
        let mut dirty = true;
        // Set when the client half-closes (ghz sends its request and closes at once): from
        // then on nothing is read, what is owed to the requests received is written, and the
        // stream ends with OK, at the latest at this deadline.
        let mut half_closed: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            tokio::select! {
                biased;
                message = requests.message(), if half_closed.is_none() => match message {
                    Ok(Some(req)) => {
                        let handled = stream.state.handle(&req)?;
                        stream.took(handled);
                        stream.sync_certificate(self.issuer.as_ref());
                        dirty = true;
                    }
                    Ok(None) => {
                        tracing::debug!("the client half-closed; writing what its requests are owed");
                        half_closed = Some(Box::pin(tokio::time::sleep(HALF_CLOSE_GRACE)));
                    }
                    Err(status) => {
                        // Either the client went away (then nobody hears this) or its request
                        // did not decode (too large, not protobuf): it should learn why.
                        tracing::debug!(%status, "the client's request stream failed");
                        return Err(status);
                    }
                },
                () = admission::expired(&mut initial) => {
                    tracing::debug!("the initial responses took longer than a turn; letting the next stream go");
                    initial = None;
                }
                () = until(&mut half_closed) => {
                    tracing::debug!(grace = ?HALF_CLOSE_GRACE, "the half-closed client did not take what it was owed in time; ending the stream");
                    return Ok(());
                }
                () = revoked(&mut token_hold) => {
                    return Err(Status::unauthenticated(
                        "the proxy token of this stream was revoked: create a new proxy token \
                         and reconnect with it",
                    ));
                }
                expired = expiry.reached() => {
                    return Err(expired.status());
                }
                certificate = issued(&mut stream.renewal) => {
                    stream.view.set_certificate(Some(certificate));
                    dirty = true;
                }
                changed = mesh.changed() => {
                    let followed = self.follow(changed, authenticated, &mut trusted, &node_id)?;
                    if let Some(snapshot) = followed {
                        stream.view.update(snapshot);
                        stream.sync_certificate(self.issuer.as_ref());
                        dirty = true;
                    }
                }
                permit = tx.reserve(), if dirty => {
                    let Ok(permit) = permit else {
                        return Ok(());
                    };
                    match P::next(&mut stream) {
                        Some(response) => {
                            release(&stream.view, &node_id, |may| P::check(&response, may))?;
                            permit.send(Ok(Box::new(response)))
                        }
                        None => {
                            dirty = false;
                            // Everything owed for the first snapshot is written.
                            initial = None;
                            // And for the current one: with every answer in, the proxy has it.
                            stream.registration.caught_up(stream.view.snapshot().revision);
                        }
                    }
                }
            }
            // Half-closed and nothing more owed for the current snapshot: done.
            if half_closed.is_some() && !dirty {
                return Ok(());
            }
        }
    }
}

/// What the stream loop ([`Engine::serve`]) needs of a protocol: how a request is taken in,
/// the next response, and the SDS guard's check of it.
trait Protocol: Subscriptions + Sized + Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    /// Applies a request; an error ends the stream with its status.
    fn handle(&mut self, request: &Self::Request) -> Result<Handled, Status>;
    /// The next response to write, recorded in the stream's status and metrics.
    fn next(stream: &mut Stream<Self>) -> Option<Self::Response>;
    fn check(response: &Self::Response, may: Entitlement<'_>) -> Result<(), guard::Violation>;
}

impl Protocol for StreamState {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;

    fn handle(&mut self, request: &DiscoveryRequest) -> Result<Handled, Status> {
        StreamState::handle(self, request).map_err(invalid)
    }

    fn next(stream: &mut Stream<Self>) -> Option<SotwResponse> {
        stream.next()
    }

    fn check(response: &SotwResponse, may: Entitlement<'_>) -> Result<(), guard::Violation> {
        guard::check(response, may)
    }
}

impl Engine {
    /// What a mesh change means for an admitted stream: the snapshot to serve from now on
    /// (`None`: keep the current one), or the status that ends the stream.
    fn follow(
        &self,
        changed: Result<MeshState, crate::cache::CacheError>,
        authenticated: bool,
        trusted: &mut Option<Trusted>,
        node_id: &NodeId,
    ) -> Result<Option<Arc<MeshSnapshot>>, Status> {
        match changed {
            Ok(MeshState::Ready(snapshot)) => {
                if !authenticated && !snapshot.spec.allow_unauthenticated_xds {
                    return Err(AuthError::Unauthenticated.status());
                }
                if let Some(t) = trusted {
                    t.follow(&snapshot, &self.roots, node_id)?;
                }
                Ok(Some(snapshot))
            }
            Ok(MeshState::Missing) => Err(Status::not_found(format!(
                "mesh {:?} of tenant {:?} was deleted",
                node_id.mesh, node_id.tenant
            ))),
            Ok(MeshState::Loading | MeshState::Unavailable(_)) => Ok(None),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

/// What admission gives a stream: everything it holds for its life besides its protocol
/// state.
struct Admission {
    mesh: MeshHandle,
    authenticated: bool,
    /// Held for the stream's life: a revoked token ends the stream, on any replica.
    token_hold: Option<Held>,
    expiry: Expiry,
    /// The client certificate, checked again when the mesh's bundle changes.
    trusted: Option<Trusted>,
    registration: Registration,
    endpoint: Option<Registered>,
    view: NodeView,
    admitted_revision: i64,
    /// The stream's place in its tenant's `streams` quota, given back when the stream ends.
    quota: StreamSlot,
}

/// The last check before a response leaves, SotW or delta: it comes from the node's own
/// tenant and mesh, and `check` (the SDS guard) passes it for what the stream may receive.
fn release(
    view: &NodeView,
    node_id: &NodeId,
    check: impl FnOnce(Entitlement<'_>) -> Result<(), guard::Violation>,
) -> Result<(), Status> {
    // Isolation, checked on every response: what goes out comes from the node's own tenant
    // and mesh, or not at all.
    let from = view.snapshot();
    if from.tenant != node_id.tenant || from.mesh != node_id.mesh {
        tracing::error!(
            snapshot_tenant = %from.tenant, snapshot_mesh = %from.mesh,
            "a response was built from another mesh's snapshot; ending the stream"
        );
        return Err(Status::internal(
            "internal error: refusing to send another mesh's configuration",
        ));
    }
    let identity = view.identity();
    let certificates: Vec<&str> = view.gateway_certificate_names().collect();
    let may = Entitlement {
        secrets: view.serves_secrets(),
        identity: identity.as_deref(),
        gateway_certificates: &certificates,
    };
    if let Err(v) = check(may) {
        tracing::error!(violation = %v, "refusing to send a secret; ending the stream");
        // Debug builds (the test suite) fail loudly on a violation.
        debug_assert!(false, "SDS isolation violated: {v}");
        return Err(Status::internal(
            "internal error: refusing to send a secret this stream may not have",
        ));
    }
    Ok(())
}

/// What a client brought to its stream, taken from the request before its body is read.
struct Client {
    token: Result<Option<String>, AuthError>,
    peer: Option<SocketAddr>,
    /// The TLS client certificate chain (leaf first), if it presented one.
    certificates: Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>>,
}

/// The client certificate that admitted a stream, and the trust bundle it last verified
/// against.
struct Trusted {
    chain: Arc<Vec<rustls_pki_types::CertificateDer<'static>>>,
    bundle: TrustBundle,
}

impl Trusted {
    /// Verifies the chain again if `snapshot`'s bundle is not the one it was checked against.
    fn follow(
        &mut self,
        snapshot: &MeshSnapshot,
        roots: &RootsCache,
        node: &NodeId,
    ) -> Result<(), Status> {
        if self.bundle == snapshot.trust {
            return Ok(());
        }
        self.bundle = snapshot.trust.clone();
        reverify(
            &self.chain,
            roots,
            &self.bundle,
            node,
            &snapshot.trust_domain,
            SystemTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.status())
    }
}

/// Resolves with each certificate the stream's renewal task issues; never without one.
async fn issued(renewal: &mut Option<Renewal>) -> Arc<NodeSecret> {
    match renewal {
        Some(r) => r.issued().await,
        None => std::future::pending().await,
    }
}

/// Resolves when `deadline` passes; never without one.
async fn until(deadline: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match deadline {
        Some(d) => d.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the stream's proxy token is revoked; never for an anonymous stream.
async fn revoked(hold: &mut Option<Held>) {
    match hold {
        Some(h) => h.revoked().await,
        None => std::future::pending().await,
    }
}

fn invalid(e: ProtocolError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// An admitted stream's state, `S` its protocol state (SotW or delta).
struct Stream<S = StreamState> {
    state: S,
    view: NodeView,
    registration: Registration,
    gauge: StreamGauge,
    tenant: String,
    /// A registered sidecar's registration; dropping it tells the registration task the
    /// stream ended.
    _endpoint: Option<Registered>,
    /// Per type: the nonce of the first response of a newly committed revision, and when
    /// that revision was committed (`MeshSnapshot::committed_at`); its ACK observes the
    /// convergence time.
    convergence: PerType<(String, SystemTime)>,
    /// Per type, the latest revision whose convergence was measured.
    measured: PerType<i64>,
    /// The mesh revision when the stream was admitted.
    admitted_revision: i64,
    /// Issues and renews the node's `default` certificate while the stream wants it.
    renewal: Option<Renewal>,
    /// Spans of pushes awaiting their answer (sampled, bounded per snapshot).
    pushes: PushTraces,
}

impl<S: Subscriptions> Stream<S> {
    /// Starts, updates or stops the `default` certificate's renewal task to match what the
    /// stream subscribes to and what the mesh says now.
    fn sync_certificate(&mut self, issuer: Option<&Arc<dyn WorkloadIssuer>>) {
        let identity = match issuer {
            Some(issuer) if wants_default(&self.state) => {
                self.view.identity().map(|id| (issuer, id))
            }
            _ => None,
        };
        let snapshot = self.view.snapshot();
        let wanted = Wanted {
            lifetime: snapshot.spec.mtls.certificate_lifetime.as_std(),
            signer_id: snapshot.signer_id.clone(),
        };
        match (identity, &self.renewal) {
            (Some((_, id)), Some(renewal)) if renewal.identity() == id => renewal.want(wanted),
            (Some((issuer, id)), _) => {
                let (tenant, mesh) = (snapshot.tenant.clone(), snapshot.mesh.clone());
                self.view.set_certificate(None);
                self.renewal = Some(Renewal::start(
                    Arc::clone(issuer),
                    &tenant,
                    &mesh,
                    id,
                    wanted,
                ));
            }
            (None, _) => {
                if self.renewal.take().is_some() {
                    self.view.set_certificate(None);
                }
            }
        }
    }

    /// Records what a request did.
    fn took(&mut self, handled: Handled) {
        let (rtype, first, ack, nack, stale) = match handled {
            Handled::Known {
                rtype,
                first,
                ack,
                nack,
                stale,
            } => (rtype, first, ack, nack, stale),
            Handled::Unknown { type_url, first } => {
                if first {
                    tracing::info!(%type_url, "not a resource type Switchboard serves; answering with an empty response");
                }
                return;
            }
        };
        if first {
            self.gauge.subscribed(rtype);
        }
        if stale {
            tracing::debug!(r#type = %rtype, "request with a stale nonce: subscription applied, no ACK/NACK");
        }
        let now = SystemTime::now();
        let (wildcard, names) = self.state.subscription(rtype).unwrap_or_default();
        self.registration.update_type(rtype, |t| {
            t.wildcard = wildcard;
            t.names = names;
            if let Some(ack) = &ack {
                t.acked = Some(Acked {
                    version: ack.version.clone(),
                    nonce: ack.nonce.clone(),
                    revision: ack.revision,
                    time: now,
                });
            }
            if let Some(nack) = &nack {
                t.nack = Some(Nacked {
                    version: nack.version.clone(),
                    nonce: nack.nonce.clone(),
                    revision: nack.revision,
                    message: nack.message.clone(),
                    names: nack.names.clone(),
                    time: now,
                });
            }
        });
        if let Some(ack) = ack {
            self.pushes.answered(rtype, &ack.nonce, None);
            metrics::acked(&self.tenant, rtype);
            tracing::debug!(r#type = %rtype, version = %ack.version, revision = ack.revision, "ACK");
            if let Some((nonce, at)) = self.convergence.get(rtype)
                && *nonce == ack.nonce
            {
                // A commit stamped by a replica whose clock runs ahead counts as no wait.
                let elapsed = SystemTime::now().duration_since(*at).unwrap_or_default();
                metrics::converged(rtype, elapsed);
                self.convergence.remove(rtype);
            }
        }
        if let Some(nack) = nack {
            self.pushes
                .answered(rtype, &nack.nonce, Some(&nack.message));
            metrics::nacked(&self.tenant, rtype);
            self.convergence.remove(rtype);
            tracing::warn!(
                r#type = %rtype,
                version = %nack.version,
                kept_version = %nack.kept_version,
                revision = nack.revision,
                resources = ?nack.names,
                error = %nack.message,
                "NACK: the client rejected the update and keeps its previous configuration"
            );
        }
    }
}

impl Stream {
    /// The next response to write, if any.
    fn next(&mut self) -> Option<SotwResponse> {
        let out = self.state.next_response(&self.view)?;
        let Some(rtype) = out.rtype else {
            return Some(out.response);
        };
        metrics::pushed(&self.tenant, rtype, out.response.encoded_len());
        let snapshot = self.view.snapshot();
        if let Some(at) = snapshot.committed_at {
            // Only the first push of a revision measures it; later pushes of the same revision
            // answer subscription changes.
            // A stream that connected after the commit did not wait for it.
            let measured = self.measured.get_or_insert(rtype, self.admitted_revision);
            if out.revision > *measured {
                *measured = out.revision;
                self.convergence
                    .insert(rtype, (out.response.nonce.clone(), at));
            }
        }
        let sent = Sent {
            version: out.response.version_info.clone(),
            nonce: out.response.nonce.clone(),
            revision: out.revision,
            time: SystemTime::now(),
        };
        tracing::debug!(
            r#type = %rtype,
            version = %sent.version,
            nonce = %sent.nonce,
            revision = sent.revision,
            resources = out.response.resources.len(),
            phase = ?out.phase,
            "push"
        );
        if rtype == ResourceType::Secret
            && let Some(c) = self.view.certificate()
            && out.state.iter().any(|r| Arc::ptr_eq(r, &c.resource))
        {
            self.registration.record_certificate(c.info.clone());
        }
        self.pushes.pushed(
            &snapshot.trace,
            (snapshot.tenant.as_str(), snapshot.mesh.as_str()),
            rtype,
            &sent,
        );
        self.registration.record_sent(rtype, sent, out.state);
        Some(out.response)
    }
}
