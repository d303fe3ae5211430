//! Fault tests on a real installation (deploy/local: PostgreSQL, three `switchboard serve`
//! replicas behind HAProxy, two sidecars with apps), each asserting what users are promised
//! (issue 11): data-plane traffic never fails because the control plane does, proxies find
//! another replica and converge, and no acknowledged write is lost. Each test prints its
//! figures. The tests take one installation at a time (a lock), each bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::{Local, NODES, Traffic, Writer, lost_writes};

/// One installation at a time: two would share 2 cores and blur the timings.
/// (tokio's: it is held across awaits, and each test has its own runtime.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Data-plane requests a second, through both sidecars together.
const RPS: u32 = 20;
/// Route writes a second through the load balancer.
const WRITES_PER_SECOND: u32 = 5;
/// The promise: a proxy on a killed replica reaches the latest revision within this.
const CONVERGENCE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_replica_loses_no_request_and_no_write() {
    let _one = ONE_AT_A_TIME.lock().await;
    let local = tokio::task::block_in_place(Local::up);
    let traffic = Traffic::start(&local, RPS, Duration::from_secs(120));
    let mut writer = Writer::start(&local, WRITES_PER_SECOND, Duration::from_secs(120), 10_000);

    // Settled: both sidecars at the writer's latest revision.
    let warm = Instant::now();
    let first = writer
        .first_acked_after(warm, Duration::from_secs(10))
        .await
        .expect("no route write was acknowledged in 10s");
    local
        .converged(first.revision, Duration::from_secs(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The replica holding the most xDS connections (HAProxy's count) dies.
    let before = local.xds_connections().await;
    let (&victim, &affected) = before
        .iter()
        .max_by_key(|(_, n)| **n)
        .expect("HAProxy reports no xDS backend");
    assert!(
        affected > 0,
        "no replica holds a sidecar's xDS connection: {before:?}"
    );
    eprintln!("xDS connections per replica before: {before:?}; killing replica {victim}");
    let killed = Instant::now();
    tokio::task::block_in_place(|| local.run(&["kill-replica", &victim.to_string()]));

    // Its proxies reconnect through HAProxy to the other two.
    let reconnected = loop {
        let now = local.xds_connections().await;
        let elsewhere: u64 = now
            .iter()
            .filter(|(r, _)| **r != victim)
            .map(|(_, n)| n)
            .sum();
        if elsewhere >= NODES.len() as u64 && now.get(&victim).copied().unwrap_or(0) == 0 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the sidecars did not reconnect to the other replicas within 30s: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // A write committed after the kill reaches both sidecars, from the kill within 5 s.
    let after = writer
        .first_acked_after(killed, Duration::from_secs(10))
        .await
        .expect("no route write was acknowledged within 10s of the kill");
    local
        .converged(after.revision, Duration::from_secs(30))
        .await
        .unwrap();
    let converged = killed.elapsed();

    // Then a while more of both, and every acknowledged write converges and is stored.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes = writer.stop().await;
    let last = writes.acked.last().expect("no acknowledged write").revision;
    let final_convergence = local.converged(last, CONVERGENCE).await;
    let report = traffic.stop().await;
    let lost = lost_writes(&local, &writes.acked).await;

    eprintln!(
        "FIGURES kill -9: data-plane requests {} ok, {} failed; affected connections {affected}; \
         reconnected {reconnected:?} after the kill; first post-kill write (revision {}) \
         ACKed by both sidecars {converged:?} after the kill; writes {} acknowledged, {} not \
         acknowledged, {} lost; last write ACKed by both {final_convergence:?} after it was \
         answered",
        report.ok,
        report.failed,
        after.revision,
        writes.acked.len(),
        writes.unacknowledged,
        lost.len(),
    );
    assert_eq!(
        report.failed, 0,
        "data-plane requests failed: {:?}",
        report.failures
    );
    assert!(report.ok > 0, "no data-plane request was made");
    assert!(
        lost.is_empty(),
        "acknowledged writes missing from the store: {lost:?}"
    );
    assert!(
        converged <= CONVERGENCE,
        "the sidecars reached the first post-kill revision {converged:?} after the kill, \
         over {CONVERGENCE:?}"
    );
    final_convergence.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_control_plane_down_for_60s_keeps_traffic_flowing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let local = tokio::task::block_in_place(Local::up);
    let traffic = Traffic::start(&local, RPS, Duration::from_secs(240));

    // A few writes, converged, before the outage.
    let mut writer = Writer::start(&local, WRITES_PER_SECOND, Duration::from_secs(10), 20_000);
    let started = Instant::now();
    writer
        .first_acked_after(started, Duration::from_secs(10))
        .await
        .expect("no route write was acknowledged in 10s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = writer.stop().await;
    let last = before.acked.last().expect("no acknowledged write").revision;
    local
        .converged(last, Duration::from_secs(20))
        .await
        .unwrap();

    // All three replicas killed; the sidecars keep their last configuration for 60 s.
    let down = Instant::now();
    for r in ["1", "2", "3"] {
        tokio::task::block_in_place(|| local.run(&["kill-replica", r]));
    }
    let ok_at_down = traffic.ok_so_far();
    let outage = Duration::from_secs(60);
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    let ok_during = traffic.ok_so_far() - ok_at_down;

    // Back: each replica waits for its /readyz.
    for r in ["1", "2", "3"] {
        tokio::task::block_in_place(|| local.run(&["start-replica", r]));
    }
    let back = Instant::now();
    // The proxies reconnect (their backoff is capped at 30 s) …
    let reconnected = loop {
        let now = local.xds_connections().await;
        if now.values().sum::<u64>() >= NODES.len() as u64 {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "the sidecars did not reconnect within 60s of the control plane's return: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // … and a write made now reaches both within the convergence promise.
    let mut writer = Writer::start(&local, WRITES_PER_SECOND, Duration::from_secs(20), 30_000);
    let fresh = writer
        .first_acked_after(back, Duration::from_secs(10))
        .await
        .expect("no route write was acknowledged within 10s of the control plane's return");
    let reconverged = local
        .converged(fresh.revision, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = writer.stop().await;
    let report = traffic.stop().await;
    let mut acked = before.acked.clone();
    acked.extend(after.acked.iter().copied());
    let lost = lost_writes(&local, &acked).await;

    eprintln!(
        "FIGURES control plane down {outage:?}: data-plane requests {} ok ({ok_during} during \
         the outage), {} failed; sidecars reconnected {reconnected:?} after the replicas were \
         ready again; first write after the return (revision {}) ACKed by both {:?} after it \
         was answered; writes {} acknowledged, {} lost",
        report.ok,
        report.failed,
        fresh.revision,
        reconverged,
        acked.len(),
        lost.len(),
    );
    assert_eq!(
        report.failed, 0,
        "data-plane requests failed: {:?}",
        report.failures
    );
    // At 20 rps for 60 s, about 1,200 requests during the outage; allow for a slow machine.
    assert!(
        ok_during >= u64::from(RPS) * outage.as_secs() / 2,
        "only {ok_during} requests succeeded while the control plane was down"
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes missing from the store: {lost:?}"
    );
    let reconverged = reconverged.unwrap();
    assert!(
        reconverged <= CONVERGENCE,
        "a write after the control plane's return took {reconverged:?} to reach both sidecars"
    );
}
