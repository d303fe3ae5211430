#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Targets measured in turns, against in-process backends: each target gets its whole
//! window's requests on its own connections, and a target that refuses connections does not
//! stop the others' turns.

mod common;

use std::time::Duration;

use common::{start_backend, target};

use hdrhistogram::Histogram;
use switchboard_loadtest::load::{FixedRate, Saturation, get};
use switchboard_loadtest::{backend, turns};

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
