//! The sweep of endpoints no replica looks after.

use serde_json::json;

use super::*;

/// Grace 200 ms: sweeps every 100 ms; four status syncs (1 s) outlast the grace period.
fn sweeping() -> Harness {
    let mut h = Harness::with_grace(ms(200));
    h.store.write(
        key("sidecar-gone-1"),
        json!({"service": "pay", "address": "10.0.0.1", "port": 15006, "node": "gone-1"}),
    );
    h
}

#[tokio::test(start_paused = true)]
async fn an_orphan_is_swept_after_four_status_syncs() {
    let mut h = sweeping();
    // Endpoints a user manages (no node) are never swept, prefix or not.
    h.store.write(
        key("sidecar-manual"),
        json!({"service": "pay", "address": "10.0.0.2", "port": 15006}),
    );
    // Nodes with a stream here or on another replica keep theirs.
    h.open(1, desired("pay-1", "pay", "10.0.0.3"));
    h.store.write(
        key("sidecar-elsewhere"),
        json!({"service": "pay", "address": "10.0.0.4", "node": "elsewhere"}),
    );
    h.store
        .live
        .insert(("acme".into(), "prod".into(), "elsewhere".into()));
    let kept: Vec<_> = ["sidecar-manual", "sidecar-pay-1", "sidecar-elsewhere"]
        .iter()
        .map(|n| h.store.endpoint(n).unwrap())
        .collect();
    h.advance(ms(990)).await;
    assert!(
        h.store.endpoint("sidecar-gone-1").is_some(),
        "not before 1 s"
    );
    h.advance(ms(20)).await;
    assert!(h.store.endpoint("sidecar-gone-1").is_none(), "swept");
    assert_eq!(h.store.deletes_of("sidecar-gone-1"), 1);
    h.advance(Duration::from_secs(5)).await;
    for k in kept {
        assert_eq!(h.store.endpoint(&k.key.name), Some(k.clone()));
    }
}

#[tokio::test(start_paused = true)]
async fn an_orphan_that_changes_is_timed_again() {
    let mut h = sweeping();
    h.advance(ms(600)).await;
    h.store.write(
        key("sidecar-gone-1"),
        json!({"service": "pay", "address": "10.0.0.7", "port": 15006, "node": "gone-1"}),
    );
    h.advance(ms(900)).await;
    assert!(
        h.store.endpoint("sidecar-gone-1").is_some(),
        "timed from its change"
    );
    h.advance(ms(300)).await;
    assert!(h.store.endpoint("sidecar-gone-1").is_none());
}

#[tokio::test(start_paused = true)]
async fn an_orphan_whose_node_comes_back_is_timed_again() {
    let mut h = sweeping();
    h.advance(ms(600)).await;
    h.store
        .live
        .insert(("acme".into(), "prod".into(), "gone-1".into()));
    h.advance(ms(200)).await;
    h.store.live.clear();
    h.advance(ms(900)).await;
    assert!(h.store.endpoint("sidecar-gone-1").is_some());
    h.advance(ms(200)).await;
    assert!(h.store.endpoint("sidecar-gone-1").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_grace_period_running_here_is_not_swept() {
    let mut h = Harness::with_grace(ms(200));
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    // Its rows say "there" when asked, but no replica counts it live (a stale heartbeat):
    // this replica still looks after it, so the sweep leaves it to the grace period.
    h.store
        .replicas
        .insert("pay-1".to_owned(), vec!["there".to_owned()]);
    h.close(1, "pay-1");
    h.advance(Duration::from_secs(30)).await;
    assert!(h.store.endpoint("sidecar-pay-1").is_some());
    assert_eq!(h.store.deletes_of("sidecar-pay-1"), 0);
    // Once the recheck finds nobody, the grace period deletes it.
    h.store.replicas.clear();
    h.advance(STALE).await;
    assert!(h.store.endpoint("sidecar-pay-1").is_none());
    assert_eq!(h.store.deletes_of("sidecar-pay-1"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_sweep_delete_keeps_the_orphan_timed() {
    let mut h = sweeping();
    h.advance(ms(950)).await;
    h.store.deletes_fail = true;
    h.advance(ms(100)).await;
    assert_eq!(h.store.deletes_of("sidecar-gone-1"), 1);
    assert!(h.store.endpoint("sidecar-gone-1").is_some());
    h.store.deletes_fail = false;
    h.advance(ms(100)).await;
    assert!(
        h.store.endpoint("sidecar-gone-1").is_none(),
        "at the next sweep, not 1 s later"
    );
}

#[tokio::test(start_paused = true)]
async fn sweeps_wait_for_the_grace_period_and_four_status_syncs() {
    assert_eq!(sweep_after(ms(200), SYNC), Duration::from_secs(1));
    assert_eq!(sweep_after(GRACE, SYNC), GRACE);
    assert_eq!(sweep_every(ms(100)), ms(100));
    assert_eq!(sweep_every(GRACE), GRACE / 2);
    assert_eq!(
        sweep_every(Duration::from_secs(600)),
        Duration::from_secs(60)
    );
}
