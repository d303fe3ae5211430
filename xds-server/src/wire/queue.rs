//! A stream's queue of responses towards tonic.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use super::response::{DeltaResponse, SotwResponse};

/// What a stream's task queues towards its client. Boxed, so that the queue's slots (tokio
/// allocates them 32 at a time, whatever the bound) cost a pointer each, not a response.
pub(crate) type Queued<R = SotwResponse> = Result<Box<R>, Status>;

/// The responses of one stream, as tonic sends them: [`SotwResponse`]s, or
/// [`DeltaResponse`]s for a delta stream ([`DeltaResponseStream`]).
#[derive(Debug)]
pub struct ResponseStream<R = SotwResponse> {
    rx: mpsc::Receiver<Queued<R>>,
}

/// The responses of one delta stream.
pub type DeltaResponseStream = ResponseStream<DeltaResponse>;

impl<R> ResponseStream<R> {
    /// A queue of at most `bound` responses, and its sending side for the stream's task.
    pub(crate) fn channel(bound: usize) -> (mpsc::Sender<Queued<R>>, Self) {
        let (tx, rx) = mpsc::channel(bound.max(1));
        (tx, Self { rx })
    }
}

impl<R> Stream for ResponseStream<R> {
    type Item = Result<R, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|queued| queued.map(|r| r.map(|boxed| *boxed)))
    }
}
