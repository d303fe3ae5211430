//! The discovery services: ADS, and LDS, RDS, CDS, EDS and SDS for clients that open one
//! stream per type. All run the same engine; the single-type services are ADS limited to one type.
//! Each serves state-of-the-world and delta (incremental) xDS.
//!
//! On the port, the stream methods are served by [`crate::wire`] (responses written around
//! the resources' shared encodings); these implementations of the generated traits answer
//! Fetch there, and serve streams as prost messages for whoever mounts a generated server
//! directly.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use switchboard_xds_proto::service::{ads, cds, eds, lds, rds, sds};
use switchboard_xds_proto::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    ResourceType,
};
use tonic::{Request, Response, Status, Streaming};

use crate::ads::Engine;
use crate::auth::cert::check_claim;
use crate::auth::{self, Admitted, Presented};
use crate::cache::MeshState;
use crate::node::{has_certificate_providers, node_role};
use crate::protocol::StreamState;
use crate::sds::secrets::node_secret;
use crate::sds::wants_default;
use crate::view::NodeView;

/// A stream's responses as prost messages.
type ResponseStream = BoxStream<'static, Result<DiscoveryResponse, Status>>;

/// A delta stream's responses as prost messages.
type DeltaResponseStream = BoxStream<'static, Result<DeltaDiscoveryResponse, Status>>;

/// Opens a stream on the engine, with its responses as prost messages.
fn open_messages(
    engine: &Arc<Engine>,
    only: Option<ResourceType>,
    request: Request<Streaming<DiscoveryRequest>>,
) -> Response<ResponseStream> {
    engine
        .open(only, request)
        .map(|responses| responses.map(|r| r.map(|m| m.to_message())).boxed())
}

/// Opens a delta stream on the engine, with its responses as prost messages.
fn open_delta_messages(
    engine: &Arc<Engine>,
    only: Option<ResourceType>,
    request: Request<Streaming<DeltaDiscoveryRequest>>,
) -> Response<DeltaResponseStream> {
    engine
        .open_delta(only, request)
        .map(|responses| responses.map(|r| r.map(|m| m.to_message())).boxed())
}

/// The aggregated discovery service.
#[derive(Debug, Clone)]
pub struct AdsService {
    engine: Arc<Engine>,
}

impl AdsService {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

#[tonic::async_trait]
impl ads::AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        Ok(open_messages(&self.engine, None, request))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponseStream>, Status> {
        Ok(open_delta_messages(&self.engine, None, request))
    }
}

/// Answers a unary Fetch request: the current state for the request's subscription.
async fn fetch(
    engine: &Engine,
    rtype: ResourceType,
    request: Request<DiscoveryRequest>,
) -> Result<Response<DiscoveryResponse>, Status> {
    let token = auth::bearer(request.metadata()).map_err(|e| e.status())?;
    let certificates = request.peer_certs();
    let request = request.into_inner();
    let mut state = StreamState::single(rtype, engine.limits);
    state
        .handle(&request)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let (Some(node), Some(node_id)) = (state.node(), state.node_id()) else {
        return Err(Status::internal("the request was accepted without a node"));
    };
    let role = node_role(node).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let presented = Presented {
        token: token.as_deref(),
        certificates: certificates.as_deref().map(Vec::as_slice),
    };
    let certificate_providers =
        has_certificate_providers(node).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let Admitted {
        mut mesh,
        authenticated,
        identity,
        ..
    } = auth::authorize(
        &engine.store,
        &engine.cache,
        &engine.roots,
        &engine.known,
        presented,
        node_id,
        std::time::SystemTime::now(),
    )
    .await
    .map_err(|e| e.status())?;
    if let Some(identity) = &identity {
        check_claim(identity, &role).map_err(|e| e.status())?;
    }
    let MeshState::Ready(snapshot) = mesh.current() else {
        return Err(Status::unavailable("the mesh is not loaded; retry"));
    };
    let mut view = NodeView::new(snapshot, role).with_certificate_providers(certificate_providers);
    if authenticated {
        view = view.with_secrets();
    }
    // A unary fetch of `default` gets a certificate of its own; nothing renews it.
    if let (true, Some(issuer), Some(identity)) =
        (wants_default(&state), &engine.issuer, view.identity())
    {
        let lifetime = view.snapshot().spec.mtls.certificate_lifetime.as_std();
        let cert = issuer
            .issue(&node_id.tenant, &node_id.mesh, &identity, lifetime)
            .await
            .map_err(|e| {
                crate::metrics::certificate_issue_failed(&node_id.tenant);
                Status::unavailable(e.to_string())
            })?;
        crate::metrics::certificate_issued(&node_id.tenant);
        view.set_certificate(Some(std::sync::Arc::new(node_secret(&identity, &cert))));
    }
    let response = state
        .next_response(&view)
        .map(|out| out.response)
        .unwrap_or_else(|| crate::wire::SotwResponse {
            type_url: rtype.type_url().to_owned(),
            ..Default::default()
        });
    let identity = view.identity();
    let certificates: Vec<&str> = view.gateway_certificate_names().collect();
    let may = crate::sds::guard::Entitlement {
        secrets: view.serves_secrets(),
        identity: identity.as_deref(),
        gateway_certificates: &certificates,
    };
    if let Err(v) = crate::sds::guard::check(&response, may) {
        tracing::error!(violation = %v, "refusing to send a secret");
        debug_assert!(false, "SDS isolation violated: {v}");
        return Err(Status::internal(
            "internal error: refusing to send a secret this client may not have",
        ));
    }
    Ok(Response::new(response.to_message()))
}

/// Defines a single-type discovery service backed by the engine.
macro_rules! single_type_service {
    (
        $(#[$doc:meta])* $name:ident, $module:ident :: $trait:ident, $rtype:expr,
        stream: $stream_fn:ident / $stream_ty:ident,
        delta: $delta_fn:ident / $delta_ty:ident,
        fetch: $fetch_fn:ident
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            engine: Arc<Engine>,
        }

        impl $name {
            pub(crate) fn new(engine: Arc<Engine>) -> Self {
                Self { engine }
            }
        }

        #[tonic::async_trait]
        impl $module::$trait for $name {
            type $stream_ty = ResponseStream;
            type $delta_ty = DeltaResponseStream;

            async fn $stream_fn(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<ResponseStream>, Status> {
                Ok(open_messages(&self.engine, Some($rtype), request))
            }

            async fn $delta_fn(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<DeltaResponseStream>, Status> {
                Ok(open_delta_messages(&self.engine, Some($rtype), request))
            }

            async fn $fetch_fn(
                &self,
                request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                fetch(&self.engine, $rtype, request).await
            }
        }
    };
}

single_type_service!(
    /// LDS on its own stream.
    LdsService, lds::ListenerDiscoveryService, ResourceType::Listener,
    stream: stream_listeners / StreamListenersStream,
    delta: delta_listeners / DeltaListenersStream,
    fetch: fetch_listeners
);
single_type_service!(
    /// RDS on its own stream.
    RdsService, rds::RouteDiscoveryService, ResourceType::RouteConfiguration,
    stream: stream_routes / StreamRoutesStream,
    delta: delta_routes / DeltaRoutesStream,
    fetch: fetch_routes
);
single_type_service!(
    /// CDS on its own stream.
    CdsService, cds::ClusterDiscoveryService, ResourceType::Cluster,
    stream: stream_clusters / StreamClustersStream,
    delta: delta_clusters / DeltaClustersStream,
    fetch: fetch_clusters
);
single_type_service!(
    /// EDS on its own stream.
    EdsService, eds::EndpointDiscoveryService, ResourceType::ClusterLoadAssignment,
    stream: stream_endpoints / StreamEndpointsStream,
    delta: delta_endpoints / DeltaEndpointsStream,
    fetch: fetch_endpoints
);
single_type_service!(
    /// SDS on its own stream (Envoy opens one per secret name when not on ADS).
    SdsService, sds::SecretDiscoveryService, ResourceType::Secret,
    stream: stream_secrets / StreamSecretsStream,
    delta: delta_secrets / DeltaSecretsStream,
    fetch: fetch_secrets
);
