//! The stream methods (state of the world and delta) of the discovery services, served
//! through the engine with [`streaming`] (responses written around the resources' shared
//! encodings); the services' other method (Fetch) goes to the generated servers.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use switchboard_xds_proto::{DeltaDiscoveryRequest, DiscoveryRequest, ResourceType};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

use crate::ads::Engine;
use crate::wire::body::streaming;

/// One discovery service: its stream methods (`Stream…` and `Delta…`) through the engine
/// and [`streaming`]; Fetch through `generated`, the envoy-types server of the same service.
#[derive(Debug, Clone)]
pub(crate) struct Discovery<G> {
    engine: Arc<Engine>,
    /// `None` for ADS; else the one type of the service.
    only: Option<ResourceType>,
    /// `/{service}/{method}` of the state-of-the-world stream method.
    path: String,
    /// `/{service}/{method}` of the delta stream method.
    delta_path: String,
    generated: G,
}

impl<G: NamedService> Discovery<G> {
    /// Serves the stream methods `method` and `delta_method` of `generated`'s service
    /// through the engine (`only` one type, or every type for ADS).
    pub(crate) fn new(
        engine: Arc<Engine>,
        only: Option<ResourceType>,
        [method, delta_method]: [&str; 2],
        generated: G,
    ) -> Self {
        Self {
            engine,
            only,
            path: format!("/{}/{method}", G::NAME),
            delta_path: format!("/{}/{delta_method}", G::NAME),
            generated,
        }
    }
}

impl<G: NamedService> NamedService for Discovery<G> {
    const NAME: &'static str = G::NAME;
}

impl<G> tonic::codegen::Service<http::Request<Body>> for Discovery<G>
where
    G: tonic::codegen::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        >,
    G::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.generated.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (engine, only) = (Arc::clone(&self.engine), self.only);
        let path = request.uri().path();
        if path == self.path {
            Box::pin(async move {
                Ok(streaming::<DiscoveryRequest, _, _>(request, |r| {
                    engine.open(only, r)
                }))
            })
        } else if path == self.delta_path {
            Box::pin(async move {
                Ok(streaming::<DeltaDiscoveryRequest, _, _>(request, |r| {
                    engine.open_delta(only, r)
                }))
            })
        } else {
            Box::pin(self.generated.call(request))
        }
    }
}
