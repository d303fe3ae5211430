//! A stream's queue of responses towards tonic.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use super::response::SotwResponse;

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
