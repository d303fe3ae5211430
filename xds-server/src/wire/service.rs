//! The state-of-the-world stream methods, served with [`XdsCodec`]; the service's other
//! methods go to the generated server.

use std::convert::Infallible;
use std::future::Ready;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::future::BoxFuture;
use switchboard_xds_proto::{DiscoveryRequest, ResourceType};
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::codec::XdsCodec;
use super::response::SotwResponse;
use crate::ads::Engine;

/// One discovery service: its state-of-the-world stream method (`Stream…`) through the
/// engine and [`XdsCodec`]; Delta and Fetch through `generated`, the envoy-types server of
/// the same service.
#[derive(Debug, Clone)]
pub(crate) struct Discovery<G> {
    engine: Arc<Engine>,
    /// `None` for ADS; else the one type of the service.
    only: Option<ResourceType>,
    /// `/{service}/{method}` of the stream method.
    path: String,
    generated: G,
}

impl<G: NamedService> Discovery<G> {
    /// Serves `method` of `generated`'s service through the engine (`only` one type, or
    /// every type for ADS).
    pub(crate) fn new(
        engine: Arc<Engine>,
        only: Option<ResourceType>,
        method: &str,
        generated: G,
    ) -> Self {
        Self {
            engine,
            only,
            path: format!("/{}/{method}", G::NAME),
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
        if request.uri().path() != self.path {
            return Box::pin(self.generated.call(request));
        }
        let open = Open {
            engine: Arc::clone(&self.engine),
            only: self.only,
        };
        Box::pin(async move {
            let mut grpc = Grpc::new(XdsCodec::<SotwResponse, DiscoveryRequest>::default());
            Ok(grpc.streaming(open, request).await)
        })
    }
}

/// Opens one stream on the engine.
struct Open {
    engine: Arc<Engine>,
    only: Option<ResourceType>,
}

impl StreamingService<DiscoveryRequest> for Open {
    type Response = SotwResponse;
    type ResponseStream = ResponseStream;
    type Future = Ready<Result<Response<ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        std::future::ready(Ok(self.engine.open(self.only, request)))
    }
}

/// What a stream's task queues towards its client. Boxed, so that the queue's slots (tokio
/// allocates them 32 at a time, whatever the bound) cost a pointer each, not a response.
pub(crate) type Queued = Result<Box<SotwResponse>, Status>;

/// The responses of one stream, as tonic sends them.
#[derive(Debug)]
pub struct ResponseStream {
    rx: mpsc::Receiver<Queued>,
}

impl ResponseStream {
    /// A queue of at most `bound` responses, and its sending side for the stream's task.
    pub(crate) fn channel(bound: usize) -> (mpsc::Sender<Queued>, Self) {
        let (tx, rx) = mpsc::channel(bound.max(1));
        (tx, Self { rx })
    }
}

impl Stream for ResponseStream {
    type Item = Result<SotwResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|queued| queued.map(|r| r.map(|boxed| *boxed)))
    }
}
