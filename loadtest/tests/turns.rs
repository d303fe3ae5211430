#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Targets measured in turns, against in-process backends: each target gets its whole
//! window's requests on its own connections, over HTTP/1.1, h2c and gRPC (the `turns-h2` and
//! `turns-grpc` targets, the relay among them), and a target that refuses connections does
//! not stop the others' turns.

mod common;

use std::time::Duration;

use common::{start_backend, target};

use hdrhistogram::Histogram;
use switchboard_loadtest::load::{FixedRate, Protocol, Saturation, Target, get};
use switchboard_loadtest::{backend, relay, turns};

#[tokio::test]
async fn fixed_rate_gives_each_target_its_whole_window() {
    let targets = [
        target(start_backend(1024).await, 1024),
        target(start_backend(512).await, 512),
    ];
    let shape = FixedRate {
        rate: 400,
        connections: 4,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
    };
    let outcomes = turns::fixed_rate(&targets, shape, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 2);
    for (o, t) in outcomes.iter().zip(&targets) {
        assert_eq!(o.errors.total(), 0, "{}", o.errors.describe());
        // 10 turns of 100 ms at 400 rps: 400 recorded requests each, warm-up not counted.
        assert_eq!(o.ok, 400);
        assert_eq!(o.latency.len(), 400);
        assert_eq!(o.pacer_lag.as_ref().map(Histogram::len), Some(400));
        assert_eq!(o.elapsed, Duration::from_secs(1));
        // Each target kept its own 4 keep-alive connections through every turn.
        let accepted = get(t.addr, backend::CONNECTIONS_PATH).await.unwrap();
        assert_eq!(&accepted[..], b"4");
    }
}

/// `h2c` or gRPC to `addr` over 2 connections.
fn h2(addr: std::net::SocketAddr, protocol: Protocol) -> Target {
    Target {
        protocol,
        h2_connections: 2,
        ..target(addr, 1024)
    }
}

#[tokio::test]
async fn h2c_and_grpc_take_turns_as_streams_over_each_targets_own_connections() {
    for protocol in [Protocol::Http2, Protocol::Grpc] {
        let direct = start_backend(1024).await;
        // The bare relay, as the `turns-h2` and `turns-grpc` targets have it: bytes
        // through, so h2c's frames pass as they are.
        let relayed = start_backend(1024).await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let relay_addr = listener.local_addr().unwrap();
        std::thread::spawn(move || relay::serve(listener, relayed));
        let targets = [h2(direct, protocol), h2(relay_addr, protocol)];
        let fixed = FixedRate {
            rate: 400,
            connections: 4,
            warmup: Duration::from_millis(200),
            duration: Duration::from_secs(1),
        };
        let outcomes = turns::fixed_rate(&targets, fixed, Duration::from_millis(100))
            .await
            .unwrap();
        let saturation = Saturation {
            connections: 8,
            warmup: Duration::from_millis(250),
            duration: Duration::from_secs(1),
        };
        let saturated = turns::saturation(&targets, saturation, Duration::from_millis(250))
            .await
            .unwrap();
        for (o, backend_addr) in outcomes.iter().zip([direct, relayed]) {
            assert_eq!(o.errors.total(), 0, "{protocol:?}: {}", o.errors.describe());
            assert_eq!(o.ok, 400, "{protocol:?}");
            // The 4 lanes were streams over the target's 2 connections; the closed loop's
            // 8 lanes, over 2 connections of their own.
            let accepted = get(backend_addr, backend::CONNECTIONS_PATH).await.unwrap();
            assert_eq!(&accepted[..], b"4", "{protocol:?}");
        }
        for o in &saturated {
            assert_eq!(o.errors.total(), 0, "{protocol:?}: {}", o.errors.describe());
            assert!(o.ok > 0, "{protocol:?}");
        }
    }
}

#[tokio::test]
async fn saturation_goes_on_when_one_target_refuses_connections() {
    // A port that was bound and released: nothing listens there.
    let refused = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let targets = [
        target(start_backend(1024).await, 1024),
        target(refused, 1024),
    ];
    let shape = Saturation {
        connections: 4,
        warmup: Duration::from_millis(250),
        duration: Duration::from_secs(1),
    };
    let outcomes = turns::saturation(&targets, shape, Duration::from_millis(250))
        .await
        .unwrap();
    let (up, down) = (&outcomes[0], &outcomes[1]);
    assert_eq!(up.errors.total(), 0, "{}", up.errors.describe());
    assert!(up.ok > 0);
    assert_eq!(up.elapsed, Duration::from_secs(1));
    assert_eq!(down.ok, 0);
    assert!(down.errors.connect > 0, "{}", down.errors.describe());
    assert_eq!(down.errors.total(), down.errors.connect);
}

#[tokio::test]
async fn no_target_is_an_error() {
    let shape = FixedRate {
        rate: 10,
        connections: 1,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(1),
    };
    assert!(
        turns::fixed_rate(&[], shape, Duration::from_millis(100))
            .await
            .is_err()
    );
}
