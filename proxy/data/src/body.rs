//! The one response body type of the data path, shared by the HTTP handler, the upstream
//! pools and telemetry's body wrappers so that none of them depends on another for it.

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// The body of every response the proxy sends: upstream bodies stream through unchanged
/// (trailers included), local ones are buffered.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body's error: hyper's, or one of the proxy's own upstream HTTP/1 path
/// (`cluster::h1`), which hyper's error type cannot carry. A type of its own rather than
/// a bare `Box<dyn Error>`, whose conversion hyper's server cannot prove for every lifetime.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BoxError(Box<dyn std::error::Error + Send + Sync>);

impl From<hyper::Error> for BoxError {
    fn from(e: hyper::Error) -> Self {
        Self(Box::new(e))
    }
}

impl BoxError {
    pub(crate) fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }
}

/// Boxes a body whose errors cannot happen into [`Body`].
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
