#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The load generator against the in-process backend: request counts, windows and error kinds.
//! (An integration test, so that `load` and `backend` need not know each other's tests.)

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use switchboard_loadtest::backend;
use switchboard_loadtest::load::{
    Errors, Failure, FixedRate, Saturation, Target, fixed_rate, get, probe, saturation,
};

async fn start_backend(body_len: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(backend::serve(listener, Bytes::from(vec![b'x'; body_len])));
    addr
}

fn target(addr: SocketAddr, body_len: usize) -> Target {
    Target {
        addr,
        host: "bench.local".into(),
        path: "/".into(),
        body_len,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn fixed_rate_sends_every_request_of_the_window_once() {
    let t = target(start_backend(1024).await, 1024);
    let mut marks = 0;
    let shape = FixedRate {
        rate: 400,
        connections: 4,
        warmup: Duration::from_millis(250),
        duration: Duration::from_secs(1),
    };
    let o = fixed_rate(&t, shape, || marks += 1).await.unwrap();
    assert_eq!(marks, 2);
    assert_eq!(o.errors.total(), 0, "{}", o.errors.describe());
    assert_eq!(o.ok, 400);
    assert_eq!(o.latency.len(), 400);
    assert_eq!(o.pacer_lag.as_ref().map(Histogram::len), Some(400));
    // The window is one second; the last response may come a little after it.
    assert!(o.elapsed >= Duration::from_millis(990), "{:?}", o.elapsed);
    // The backend saw exactly the 4 keep-alive connections (the question is not counted).
    let accepted = get(t.addr, backend::CONNECTIONS_PATH).await.unwrap();
    assert_eq!(&accepted[..], b"4");
}

#[tokio::test]
async fn saturation_counts_responses_of_the_window() {
    let t = target(start_backend(1024).await, 1024);
    let mut marks = 0;
    let shape = Saturation {
        connections: 8,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(500),
    };
    let o = saturation(&t, shape, || marks += 1).await.unwrap();
    assert_eq!(marks, 2);
    assert_eq!(o.errors.total(), 0, "{}", o.errors.describe());
    assert!(o.ok > 0 && o.latency.len() >= o.ok);
    assert_eq!(o.elapsed, Duration::from_millis(500));
}

#[tokio::test]
async fn wrong_answers_are_errors_of_their_kind() {
    let addr = start_backend(1000).await;
    assert_eq!(probe(&target(addr, 1024)).await, Err(Failure::Body));
    assert_eq!(probe(&target(addr, 1000)).await, Ok(()));
    // A port nobody listens on (bound, then closed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(probe(&target(closed, 1024)).await, Err(Failure::Connect));
    let mut e = Errors::default();
    e.add(Failure::Io);
    e.add(Failure::Io);
    e.add(Failure::Timeout);
    assert_eq!(e.describe(), "3 (io 2, timeout 1)");
}
