//! Fault tests on a real installation (deploy/local: PostgreSQL, three `switchboard serve`
//! replicas behind HAProxy, two sidecars with apps), each asserting what users are promised
//! (issue 11): data-plane traffic never fails because the control plane does, proxies find
//! another replica and converge, no acknowledged write is lost, a database outage leaves
//! the proxies connected and REST answering 503 promptly, and a rolling restart moves 1,000
//! streams spread over the drain period. Each test prints its figures (lines starting with
//! `FIGURES`). The tests take one installation at a time (a lock), each bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::streams::{Streams, per_second};
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

/// How long a REST write may take to be answered while the database is down: a behaviour
/// bound (an answer, not a hang), well above the store's 3 s acquire timeout.
const ANSWER_BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_60s_keeps_xds_and_traffic_and_rest_answers_503() {
    let _one = ONE_AT_A_TIME.lock().await;
    let local = tokio::task::block_in_place(Local::up);
    let traffic = Traffic::start(&local, RPS, Duration::from_secs(240));
    let mut writer = Writer::start(&local, WRITES_PER_SECOND, Duration::from_secs(200), 40_000);

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

    // What must not change across the outage: the replicas' processes, the sidecars' xDS
    // connections and streams.
    let replicas = ["replica-1", "replica-2", "replica-3"];
    let pids: Vec<_> = replicas.iter().map(|r| local.pid(r)).collect();
    let sessions = local.xds_stat("stot").await;
    let connections = local.xds_connections().await;
    let opened = |local: &Local| -> Vec<usize> {
        NODES
            .iter()
            .map(|n| {
                let sidecar = format!("sidecar-{}", n.trim_end_matches("-1"));
                local.log_lines(&sidecar, "xDS stream open")
            })
            .collect()
    };
    let streams_opened = opened(&local);
    assert!(
        streams_opened.iter().all(|n| *n >= 1),
        "the sidecars' logs show no open xDS stream: {streams_opened:?}"
    );

    let stopping = Instant::now();
    tokio::task::block_in_place(|| local.run(&["stop-pg"]));
    let down = Instant::now();
    let ok_at_down = traffic.ok_so_far();
    let outage = Duration::from_secs(60);
    tokio::time::sleep(outage.saturating_sub(stopping.elapsed())).await;
    let ok_during = traffic.ok_so_far() - ok_at_down;
    // The sidecars still hold their configuration and say so.
    for n in ["web", "api"] {
        let url = format!(
            "http://127.0.0.1:{}/ready",
            local.port(&format!("PADMIN_{n}"))
        );
        let status = local.client.get(url).send().await.map(|r| r.status());
        assert!(
            status.as_ref().is_ok_and(|s| *s == 200),
            "sidecar {n} not ready during the outage: {status:?}"
        );
    }
    let restarting = Instant::now();
    tokio::task::block_in_place(|| local.run(&["start-pg"]));
    let back = Instant::now();

    // The replicas resume by themselves: the writer's writes are acknowledged again, and a
    // write made now reaches both sidecars within the promise.
    let fresh = writer
        .first_acked_after(back, Duration::from_secs(30))
        .await
        .expect("no route write was acknowledged within 30s of the database's return");
    let resumed = back.elapsed();
    let reconverged = local
        .converged(fresh.revision, Duration::from_secs(30))
        .await;
    // Each replica, asked directly, writes again (none was restarted).
    let mut direct = Vec::new();
    for i in 1..=3u32 {
        let url = format!(
            "http://127.0.0.1:{}/v1/tenants/local/meshes/demo/services/after-outage-{i}",
            local.port(&format!("REST_{i}"))
        );
        let started = Instant::now();
        let answered = loop {
            let r = local
                .client
                .put(&url)
                .bearer_auth(local.admin_token())
                .json(&serde_json::json!({"spec": {"protocol": "http", "port": 80}}))
                .send()
                .await;
            if r.as_ref().is_ok_and(|r| r.status() == 200) {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "replica {i} did not accept a write within 30s of the database's return: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        direct.push(answered);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = writer.stop().await;
    let report = traffic.stop().await;
    let lost = lost_writes(&local, &writes.acked).await;
    let acked_before = writes.acked.iter().filter(|a| a.at < stopping).count();

    // The writes sent while the database was down (after it stopped, answered before it
    // was asked to start): every one a prompt 503 with Retry-After.
    let during: Vec<_> = writes
        .attempts
        .iter()
        .filter(|a| a.sent >= down && a.sent + a.took <= restarting)
        .collect();
    let slowest = during.iter().map(|a| a.took).max().unwrap_or_default();
    let refused = during
        .iter()
        .filter(|a| a.status == Some(503) && a.retry_after.is_some())
        .count();
    let straddling: Vec<_> = writes
        .attempts
        .iter()
        .filter(|a| {
            a.sent < restarting
                && a.sent + a.took > stopping
                && !(a.sent >= down && a.sent + a.took <= restarting)
        })
        .map(|a| a.status)
        .collect();
    let (pids_after, sessions_after, connections_after) = (
        replicas.iter().map(|r| local.pid(r)).collect::<Vec<_>>(),
        local.xds_stat("stot").await,
        local.xds_connections().await,
    );
    let streams_opened_after = opened(&local);

    eprintln!(
        "FIGURES PostgreSQL down {outage:?}: data-plane requests {} ok ({ok_during} during the \
         outage), {} failed; REST writes during the outage {} ({refused} answered 503 with \
         Retry-After), slowest answer {slowest:?}; writes across its edges: {straddling:?}; \
         writes accepted again {resumed:?} after the database was back; each replica's direct \
         write accepted after {direct:?}; first write after the return (revision {}) ACKed by \
         both sidecars {reconverged:?} after it was answered; sidecar xDS streams opened \
         {streams_opened:?} before, {streams_opened_after:?} after; HAProxy xDS connections \
         {connections:?} before, {connections_after:?} after (ever made: {sessions:?}, then \
         {sessions_after:?}); writes {} acknowledged ({acked_before} before the outage), {} \
         lost",
        report.ok,
        report.failed,
        during.len(),
        fresh.revision,
        writes.acked.len(),
        lost.len(),
    );
    assert_eq!(
        report.failed, 0,
        "data-plane requests failed: {:?}",
        report.failures
    );
    assert!(
        ok_during >= u64::from(RPS) * outage.as_secs() / 2,
        "only {ok_during} requests succeeded while the database was down"
    );
    assert!(
        during.len() >= 5,
        "only {} writes were sent during the outage",
        during.len()
    );
    for a in &during {
        assert!(
            a.status == Some(503) && a.retry_after.is_some() && a.took <= ANSWER_BOUND,
            "a write during the outage was answered {:?} (Retry-After {:?}) after {:?}; every \
             one must be a 503 with Retry-After within {ANSWER_BOUND:?}",
            a.status,
            a.retry_after,
            a.took
        );
    }
    // Across the outage's edges too (a write in flight when the database stopped, or sent
    // while it started), and before and after it: every write answered within the bound,
    // stored (2xx) or refused with 503, never left hanging or failed otherwise.
    for a in &writes.attempts {
        assert!(
            a.took <= ANSWER_BOUND
                && a.status
                    .is_some_and(|s| (200..300).contains(&s) || s == 503),
            "a write sent {:?} after the database stopped was answered {:?} after {:?}",
            a.sent.saturating_duration_since(stopping),
            a.status,
            a.took
        );
    }
    assert_eq!(pids_after, pids, "a replica was restarted");
    assert_eq!(
        streams_opened_after, streams_opened,
        "a sidecar opened a new xDS stream (it reconnected)"
    );
    assert_eq!(
        sessions_after, sessions,
        "a new xDS connection was made through HAProxy during the outage"
    );
    assert!(
        acked_before > 0,
        "no write was acknowledged before the outage"
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes missing from the store: {lost:?}"
    );
    let reconverged = reconverged.unwrap();
    assert!(
        reconverged <= CONVERGENCE,
        "a write after the database's return took {reconverged:?} to reach both sidecars"
    );
}

/// The 1,000 streams of the rolling restart and the HTTP/2 connections they share (a
/// connection closed by a draining replica moves its 25 streams together).
const STREAMS: usize = 1000;
const STREAM_CONNECTIONS: usize = 40;
/// The replicas' drain period in the rolling restart.
const DRAIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_1000_streams_spreads_reconnects_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let local = tokio::task::block_in_place(|| {
        Local::up_with(&["--drain-period", &format!("{}s", DRAIN.as_secs())])
    });
    let traffic = Traffic::start(&local, RPS, Duration::from_secs(300));
    let xds = format!("http://127.0.0.1:{}", local.port("LB_XDS"));
    let mut streams = Streams::start(&xds, &local.proxy_token(), STREAMS, STREAM_CONNECTIONS);
    let opening = Instant::now();
    streams
        .until(Duration::from_secs(60), "opening every stream", |s| {
            s.open.len() == s.count
        })
        .await
        .unwrap();
    let all_open = opening.elapsed();
    let mut writer = Writer::start(&local, WRITES_PER_SECOND, Duration::from_secs(280), 50_000);
    let first = writer
        .first_acked_after(Instant::now(), Duration::from_secs(10))
        .await
        .expect("no route write was acknowledged in 10s");
    local
        .converged(first.revision, Duration::from_secs(20))
        .await
        .unwrap();
    let before = local.xds_connections().await;

    // Each replica in turn: SIGTERM, drained over DRAIN, exited; started again and routed to
    // by HAProxy before the next one.
    let mut steps = Vec::new();
    for i in 1..=3u32 {
        let (ended_before, connected_before) = (streams.ended.len(), streams.connected.len());
        let term = Instant::now();
        tokio::task::block_in_place(|| local.run(&["restart-replica", &i.to_string()]));
        let restarted = term.elapsed();
        streams
            .until(
                Duration::from_secs(30),
                &format!("every stream open again after replica {i}'s restart"),
                |s| s.open.len() == s.count,
            )
            .await
            .unwrap();
        let moved = streams.ended.len() - ended_before;
        let ends = per_second(
            &streams.ended[ended_before..],
            term,
            DRAIN.as_secs() as usize,
        );
        let reconnects = per_second(
            &streams.connected[connected_before..],
            term,
            DRAIN.as_secs() as usize,
        );
        eprintln!(
            "replica {i}: restarted in {restarted:?}; {moved} streams moved; ends per second \
             after SIGTERM: {ends:?}; reconnects per second: {reconnects:?}"
        );
        steps.push((i, moved, ends, reconnects, restarted));
    }

    // A write made after the restart reaches every stream and both sidecars.
    let (status, body) = local
        .rest(
            reqwest::Method::PUT,
            "/tenants/local/meshes/demo/services/after-restart",
            Some(serde_json::json!({"spec": {"protocol": "http", "port": 80}})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let written = Instant::now();
    let revision = body["revision"].as_i64().unwrap();
    let streams_converged = streams
        .until(
            Duration::from_secs(30),
            "every stream getting the write made after the restart",
            |s| s.without("after-restart") == 0,
        )
        .await
        .map(|()| {
            streams
                .last_response()
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(written))
        });
    let sidecars_converged = local.converged(revision, CONVERGENCE).await;
    let on_replicas: Vec<Option<u64>> = {
        let mut v = Vec::new();
        for i in 1..=3 {
            v.push(local.replica_cds_streams(i).await);
        }
        v
    };
    let after = local.xds_connections().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = writer.stop().await;
    let report = traffic.stop().await;
    let lost = lost_writes(&local, &writes.acked).await;

    let moved_total: usize = steps.iter().map(|s| s.1).sum();
    let busiest: Vec<(u32, usize, usize)> = steps
        .iter()
        .map(|(i, moved, _, reconnects, _)| (*i, *reconnects.iter().max().unwrap_or(&0), *moved))
        .collect();
    eprintln!(
        "FIGURES rolling restart of 3 replicas (drain {DRAIN:?}) with {STREAMS} ADS streams over \
         {STREAM_CONNECTIONS} connections: all open {all_open:?} after start; streams moved \
         {moved_total}; busiest second of reconnects per replica (replica, reconnects, of \
         streams moved) {busiest:?}; restart steps took {:?}; a write after the restart reached \
         every stream {streams_converged:?} and both sidecars {sidecars_converged:?} after it \
         was answered; CDS streams per replica after {on_replicas:?}; HAProxy xDS connections \
         {before:?} before, {after:?} after; data-plane requests {} ok, {} failed; writes {} \
         acknowledged, {} not acknowledged, {} lost",
        steps.iter().map(|s| s.4).collect::<Vec<_>>(),
        report.ok,
        report.failed,
        writes.acked.len(),
        writes.unacknowledged,
        lost.len(),
    );
    assert_eq!(
        report.failed, 0,
        "data-plane requests failed: {:?}",
        report.failures
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes missing from the store: {lost:?}"
    );
    // Every replica was stopped once, so every stream moved at least once.
    assert!(
        moved_total >= STREAMS,
        "only {moved_total} stream ends over the restart of every replica"
    );
    // Spread, not a storm: no second of a replica's drain takes more than half of the streams
    // it held (they leave in 40 connections' worth of groups at moments drawn over the drain).
    for (i, moved, ends, reconnects, _) in &steps {
        assert!(
            reconnects.iter().all(|n| n * 2 <= *moved) && ends.iter().all(|n| n * 2 <= *moved),
            "replica {i}: more than half of its {moved} streams ended or reconnected in one \
             second: ends {ends:?}, reconnects {reconnects:?}"
        );
    }
    streams_converged.unwrap();
    sidecars_converged.unwrap();
    // Every stream is on a live replica: the replicas' own counts add up to every stream.
    let counted: u64 = on_replicas.iter().map(|n| n.unwrap_or(0)).sum();
    assert!(
        counted >= STREAMS as u64,
        "the replicas count {counted} open CDS streams, fewer than {STREAMS}: {on_replicas:?}"
    );
}
