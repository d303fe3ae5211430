//! The body of an upstream response, from either path of the pools: hyper's client or the
//! request-driven HTTP/1 path ([`h1`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};

use super::h1;
use crate::body::BoxError;

/// An upstream response's body, from either path. Hyper's body goes inline, so hyper's
/// path pays no allocation for it; the [`h1`] body, which owns its connection and buffers,
/// is boxed, so that what moves through the callers' futures stays small.
pub(crate) struct UpstreamBody(Either);

impl UpstreamBody {
    pub(super) fn hyper(body: Incoming) -> Self {
        Self(Either::Hyper(body))
    }

    pub(super) fn direct(body: h1::ResponseBody) -> Self {
        Self(Either::Direct(Box::new(body)))
    }
}

enum Either {
    Hyper(Incoming),
    Direct(Box<h1::ResponseBody>),
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Either::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Either::Direct(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Either::Hyper(b) => b.is_end_stream(),
            Either::Direct(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Either::Hyper(b) => b.size_hint(),
            Either::Direct(b) => b.size_hint(),
        }
    }
}
