//! The one response body type of the data path, shared by the HTTP handler, the upstream
//! pools and telemetry's body wrappers so that none of them depends on another for it.

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// The body of every response the proxy sends: upstream bodies stream through unchanged
/// (trailers included), local ones are buffered.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Boxes a body whose errors cannot happen into [`Body`].
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
