//! A bidirectional stream method served without tonic's response encoder: requests decode
//! through tonic's `Streaming`, and each response goes out as its own gRPC frame
//! ([`frame`]), so that no stream keeps a send buffer between responses.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::Stream;
use http_body::Frame;
use tonic::body::Body;
use tonic::codec::Streaming;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, header};
use tonic::{Request, Response, Status};

use super::codec::{ProstDecoder, WireMessage, frame};

/// Serves one call of a streaming method: decodes the request body as `D`s, hands the
/// request to `open` and sends what its response stream yields, then the call's status as
/// trailers. As tonic's `Grpc::streaming` does, less compression, which this server never
/// offers: a compressed request is refused as unimplemented.
pub(crate) fn streaming<D, E, S>(
    request: http::Request<Body>,
    open: impl FnOnce(Request<Streaming<D>>) -> Response<S>,
) -> http::Response<Body>
where
    D: prost::Message + Default + Send + 'static,
    E: WireMessage,
    S: Stream<Item = Result<E, Status>> + Unpin + Send + 'static,
{
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
        return Status::unimplemented(format!(
            "the request is compressed with {encoding:?}; this server takes uncompressed messages"
        ))
        .into_http();
    }
    let request = Request::from_http(
        request.map(|body| Streaming::new_request(ProstDecoder::<D>::default(), body, None, None)),
    );
    let (metadata, responses, extensions) = open(request).into_parts();
    let mut response = http::Response::new(Body::new(WireBody {
        responses: Some(responses),
    }));
    *response.headers_mut() = metadata.into_headers();
    *response.extensions_mut() = extensions;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The response body: one data frame per response, then the trailers with the status (OK when
/// the responses end, else the error they ended with).
struct WireBody<S> {
    /// `None` once the trailers are sent.
    responses: Option<S>,
}

impl<E, S> http_body::Body for WireBody<S>
where
    E: WireMessage,
    S: Stream<Item = Result<E, Status>> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Status>>> {
        let this = self.get_mut();
        let Some(responses) = this.responses.as_mut() else {
            return Poll::Ready(None);
        };
        let status = match ready!(Pin::new(responses).poll_next(cx)) {
            Some(Ok(message)) => match frame(&message) {
                Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(status) => status,
            },
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        // Dropping the responses ends the stream's task, as tonic does after the trailers.
        this.responses = None;
        Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
    }

    fn is_end_stream(&self) -> bool {
        self.responses.is_none()
    }
}

/// `grpc-status`, `grpc-message` and the status's details as trailers.
fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Err(unencodable) = status.add_header(&mut map) {
        map.clear();
        // The message did not fit a header: say so, with an empty message.
        let _ = Status::internal("").add_header(&mut map);
        tracing::warn!(error = %unencodable, "a stream's status could not be sent as trailers");
    }
    map
}
