//! What the load generator's test files share: an in-process backend and a target for it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use switchboard_loadtest::backend;
use switchboard_loadtest::load::{Protocol, Target};

/// The benchmark's backend on a free loopback port, answering every request with
/// `body_len` bytes.
pub async fn start_backend(body_len: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(backend::serve(listener, Bytes::from(vec![b'x'; body_len])));
    addr
}

/// `GET /` over HTTP/1.1 to `addr`, expecting `body_len` bytes.
pub fn target(addr: SocketAddr, body_len: usize) -> Target {
    Target {
        addr,
        host: "bench.local".into(),
        path: "/".into(),
        body_len,
        timeout: Duration::from_secs(5),
        protocol: Protocol::Http1,
        h2_connections: 1,
    }
}
