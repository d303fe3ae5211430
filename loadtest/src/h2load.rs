//! The load generator's HTTP/2 side: h2c with prior knowledge (hyper 1's HTTP/2 client
//! connection), many concurrent requests ("lanes") sharing a few connections, each lane one
//! stream at a time. Two kinds of request: a `GET` like the HTTP/1.1 one (200 and the body's
//! length), and a unary call of the benchmark's gRPC method ([`crate::grpc`]: 200,
//! `grpc-status: 0` in the trailers, one well-framed message of the body's length).
//!
//! A connection is shared through a [`Shared`] slot: a lane clones its sender, and after a
//! failure takes the slot's current one, which is reopened only when the connection itself
//! has closed (a reset stream leaves the connection to the other lanes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::grpc;
use crate::target::{Failure, Protocol, Target, check, check_response};

type Sender = SendRequest<Full<Bytes>>;

/// One HTTP/2 connection that lanes share, opened on first use and reopened once closed.
pub(crate) struct Shared {
    addr: SocketAddr,
    slot: Mutex<Option<Sender>>,
    opened: AtomicU64,
}

impl Shared {
    pub(crate) fn new(addr: SocketAddr) -> Arc<Shared> {
        Arc::new(Shared {
            addr,
            slot: Mutex::new(None),
            opened: AtomicU64::new(0),
        })
    }

    /// The connection's sender; a new connection when there is none or it has closed.
    async fn sender(&self) -> Result<Sender, Failure> {
        let mut slot = self.slot.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        *slot = None;
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|_| Failure::Connect)?;
        tcp.set_nodelay(true).map_err(|_| Failure::Connect)?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(slot.insert(sender).clone())
    }

    /// Connections opened again after the first.
    pub(crate) fn reconnects(&self) -> u64 {
        self.opened.load(Ordering::Relaxed).saturating_sub(1)
    }
}

/// One request at a time over a shared connection.
pub(crate) struct Lane {
    shared: Arc<Shared>,
    sender: Option<Sender>,
    uri: Uri,
    /// gRPC: the request message, framed.
    message: Option<Bytes>,
}

impl Lane {
    /// A lane of `shared` for `target` (HTTP/2 or gRPC); fails on a host or path that do not
    /// make a URI.
    pub(crate) fn new(shared: Arc<Shared>, target: &Target) -> Result<Lane, http::Error> {
        let path = match target.protocol {
            Protocol::Grpc => grpc::PATH,
            Protocol::Http1 | Protocol::Http2 => target.path.as_str(),
        };
        let uri = Uri::builder()
            .scheme("http")
            .authority(target.host.as_str())
            .path_and_query(path)
            .build()?;
        let message =
            (target.protocol == Protocol::Grpc).then(|| grpc::frame(target.body_len, b'q'));
        Ok(Lane {
            shared,
            sender: None,
            uri,
            message,
        })
    }

    /// A sender on an open connection.
    pub(crate) async fn ready(&mut self) -> Result<&mut Sender, Failure> {
        if self.sender.as_ref().is_none_or(Sender::is_closed) {
            self.sender = Some(self.shared.sender().await?);
        }
        let sender = self.sender.as_mut().ok_or(Failure::Connect)?;
        sender.ready().await.map_err(|_| Failure::Io)?;
        Ok(sender)
    }

    /// Forgets this lane's sender after a failure: the next request takes the slot's.
    pub(crate) fn reset(&mut self) {
        self.sender = None;
    }

    /// One request, its response read and checked against `target`.
    pub(crate) async fn request(&mut self, target: &Target) -> Result<(), Failure> {
        let request = match &self.message {
            None => Request::get(self.uri.clone()).body(Full::new(Bytes::new())),
            Some(message) => Request::builder()
                .method(Method::POST)
                .uri(self.uri.clone())
                .header(header::CONTENT_TYPE, grpc::CONTENT_TYPE)
                .header(header::TE, "trailers")
                .body(Full::new(message.clone())),
        }
        .map_err(|_| Failure::Io)?;
        let grpc = self.message.is_some();
        let sender = self.ready().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| Failure::Io)?;
        if !grpc {
            return check_response(response, target).await;
        }
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| Failure::Io)?;
        if status != StatusCode::OK {
            return Err(Failure::Status);
        }
        // A trailers-only answer (the status in the headers) has no trailers: not a success.
        if !body.trailers().is_some_and(grpc::is_ok) {
            return Err(Failure::Grpc);
        }
        check(
            status,
            grpc::message_len(&body.to_bytes()) == Some(target.body_len),
        )
    }
}
