#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The bare TCP relay, in-process on loopback: requests go through it on a connection of its
//! own per client, a half-close passes through both ways, and an upstream that refuses ends
//! the client's connection instead of leaving it hanging.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{start_backend, target};
use switchboard_loadtest::load::{self, FixedRate, get};
use switchboard_loadtest::{backend, relay};

/// The relay on a free loopback port, relaying to `upstream` from threads of its own.
fn start_relay(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || relay::serve(listener, upstream));
    addr
}

#[tokio::test]
async fn requests_go_through_on_a_connection_per_client() {
    let backend_addr = start_backend(1024).await;
    let relay_addr = start_relay(backend_addr);
    let shape = FixedRate {
        rate: 200,
        connections: 4,
        warmup: Duration::from_millis(100),
        duration: Duration::from_secs(1),
    };
    let outcome = load::fixed_rate(&target(relay_addr, 1024), shape, || {})
        .await
        .unwrap();
    assert_eq!(outcome.errors.total(), 0, "{}", outcome.errors.describe());
    assert_eq!(outcome.ok, 200);
    // The load's 4 keep-alive connections, each relayed on one upstream connection.
    let accepted = get(backend_addr, backend::CONNECTIONS_PATH).await.unwrap();
    assert_eq!(&accepted[..], b"4");
}

#[test]
fn a_half_close_passes_through_both_ways() {
    // An upstream that reads to the end of the request, then answers how much it read and
    // closes.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(format!("read {} bytes", got.len()).as_bytes())
            .unwrap();
    });
    let mut client = TcpStream::connect(start_relay(upstream_addr)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"hello, upstream").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "read 15 bytes");
}

#[test]
fn an_upstream_that_refuses_ends_the_client_connection() {
    // A port that was bound and released: nothing listens there.
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut client = TcpStream::connect(start_relay(refused)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    match client.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "read {n} bytes from a refused upstream"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the client's connection was left open: {e}"
        ),
    }
}

#[test]
fn its_arguments_are_checked() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        relay::parse(&args(&["--upstream", "127.0.0.1:8080"])).unwrap(),
        SocketAddr::from(([127, 0, 0, 1], 8080))
    );
    let bad = relay::parse(&args(&["--upstream", "localhost"])).unwrap_err();
    assert!(
        format!("{bad:#}").contains("--upstream \"localhost\""),
        "{bad:#}"
    );
    let missing = relay::parse(&args(&[])).unwrap_err();
    assert!(
        format!("{missing:#}").contains("--upstream <address>"),
        "{missing:#}"
    );
}
