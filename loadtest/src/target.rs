//! What the load generator asks of a target, and how a request can fail: shared by the
//! loops and HTTP/1.1 connections of [`crate::load`] (which re-exports these) and the HTTP/2
//! lanes (`h2load`).

use std::net::SocketAddr;
use std::time::Duration;

/// What the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `GET` over HTTP/1.1.
    #[default]
    Http1,
    /// `GET` over HTTP/2 without TLS, prior knowledge (h2c).
    Http2,
    /// A unary call of the benchmark's gRPC method ([`crate::grpc`]) over h2c.
    Grpc,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::Grpc];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
            Protocol::Grpc => "gRPC",
        }
    }
}

/// What to request, and what a good answer is.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header (HTTP/2 and gRPC: the `:authority`).
    pub host: String,
    /// The path of a `GET` (gRPC calls [`crate::grpc::PATH`]).
    pub path: String,
    /// The body length a good response has (gRPC: the response message's length; the
    /// request's is the same).
    pub body_len: usize,
    /// A request that takes longer fails with [`Failure::Timeout`].
    pub timeout: Duration,
    pub protocol: Protocol,
    /// HTTP/2 and gRPC: the connections that a phase's lanes share.
    pub h2_connections: usize,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection or the HTTP/1.1 handshake failed.
    Connect,
    /// The request or the response failed on the wire.
    Io,
    /// An answer other than 200.
    Status,
    /// A 200 whose body did not have the expected length.
    Body,
    /// A gRPC answer without `grpc-status: 0` in its trailers.
    Grpc,
    Timeout,
}

/// A plain response's outcome: its status must be 200 and its body as long as the target's
/// (read to the end, counting bytes, so nothing is kept).
pub(crate) async fn check_response(
    response: http::Response<hyper::body::Incoming>,
    target: &Target,
) -> Result<(), Failure> {
    use http_body_util::BodyExt;
    let status = response.status();
    let mut body = response.into_body();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Failure::Io)?;
        if let Some(data) = frame.data_ref() {
            len += data.len();
        }
    }
    check(status, len == target.body_len)
}

/// 200 and a body as expected, else the failure's kind.
pub(crate) fn check(status: http::StatusCode, body_ok: bool) -> Result<(), Failure> {
    if status != http::StatusCode::OK {
        return Err(Failure::Status);
    }
    if !body_ok {
        return Err(Failure::Body);
    }
    Ok(())
}
