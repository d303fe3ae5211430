//! A node's endpoint from its first stream to its deregistration, and the change log.

use serde_json::json;

use super::*;
use crate::registration::RETRY;

#[tokio::test(start_paused = true)]
async fn a_sidecar_is_registered_and_deregistered_after_the_grace_period() {
    let mut h = Harness::new();
    let wanted = desired("pay-1", "pay", "10.0.0.1");
    h.open(1, wanted.clone());
    let stored = h
        .store
        .endpoint("sidecar-pay-1")
        .expect("registered at once");
    assert_eq!(stored.spec, wanted.spec.to_json());
    h.close(1, "pay-1");
    h.advance(GRACE - ms(1)).await;
    assert_eq!(h.store.endpoint("sidecar-pay-1"), Some(stored.clone()));
    h.advance(ms(1)).await;
    assert!(h.store.endpoint("sidecar-pay-1").is_none(), "deleted");
    assert!(
        h.store.log.contains(&Action::Delete {
            key: key("sidecar-pay-1"),
            etag: stored.etag()
        }),
        "only with If-Match the etag written: {:?}",
        h.store.log
    );
    assert!(h.machine.nodes.is_empty() && h.machine.tenants.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_within_the_grace_period_writes_nothing() {
    let mut h = Harness::new();
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    let stored = h.store.endpoint("sidecar-pay-1").unwrap();
    let revision = h.store.revision;
    h.close(1, "pay-1");
    h.advance(GRACE / 2).await;
    h.open(2, desired("pay-1", "pay", "10.0.0.1"));
    h.advance(GRACE * 3).await;
    assert_eq!(h.store.endpoint("sidecar-pay-1"), Some(stored));
    assert_eq!(h.store.revision, revision, "no revision bump");
    assert_eq!(h.store.deletes_of("sidecar-pay-1"), 0);
    assert_eq!(
        h.store.writes_of("sidecar-pay-1"),
        2,
        "checked, not written"
    );
}

#[tokio::test(start_paused = true)]
async fn the_newest_stream_decides_and_the_last_to_end_starts_the_grace_period() {
    let mut h = Harness::new();
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    h.open(2, desired("pay-1", "pay", "10.0.0.2"));
    let address = |h: &Harness| h.store.endpoint("sidecar-pay-1").unwrap().spec["address"].clone();
    assert_eq!(address(&h), "10.0.0.2");
    h.close(2, "pay-1");
    assert_eq!(
        address(&h),
        "10.0.0.1",
        "back to what the remaining stream asks"
    );
    h.advance(GRACE * 2).await;
    assert_eq!(address(&h), "10.0.0.1", "a stream is left: no grace period");
    h.close(1, "pay-1");
    h.advance(GRACE).await;
    assert!(h.store.endpoint("sidecar-pay-1").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_stream_gone_before_anything_was_written_leaves_nothing() {
    let mut h = Harness::new();
    h.step(Input::Opened {
        stream: 1,
        node: node("pay-1"),
        desired: desired("pay-1", "pay", "10.0.0.1"),
    });
    h.close(1, "pay-1");
    h.advance(GRACE * 2).await;
    assert_eq!(h.store.writes_of("sidecar-pay-1"), 0);
    assert_eq!(h.store.deletes_of("sidecar-pay-1"), 0);
    assert!(h.machine.nodes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_node_on_another_replica_keeps_its_endpoint() {
    let mut h = Harness::new();
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    let stored = h.store.endpoint("sidecar-pay-1").unwrap();
    h.store.replicas.insert(
        "pay-1".to_owned(),
        vec![HERE.to_owned(), "there".to_owned()],
    );
    h.store
        .live
        .insert(("acme".into(), "prod".into(), "pay-1".into()));
    h.close(1, "pay-1");
    h.advance(GRACE).await;
    assert_eq!(
        h.store.count(|a| matches!(a, Action::ListReplicas { .. })),
        1
    );
    // Looked at again once a dead replica's rows would have expired; still there: theirs.
    h.advance(STALE).await;
    assert_eq!(
        h.store.count(|a| matches!(a, Action::ListReplicas { .. })),
        2
    );
    assert!(h.machine.nodes.is_empty(), "forgotten");
    h.advance(GRACE * 10).await;
    assert_eq!(h.store.endpoint("sidecar-pay-1"), Some(stored));
    assert_eq!(h.store.deletes_of("sidecar-pay-1"), 0);
}

#[tokio::test(start_paused = true)]
async fn rows_of_a_replica_that_died_are_looked_at_again() {
    let mut h = Harness::new();
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    h.store
        .replicas
        .insert("pay-1".to_owned(), vec!["dead".to_owned()]);
    h.close(1, "pay-1");
    h.advance(GRACE).await;
    assert!(h.store.endpoint("sidecar-pay-1").is_some());
    // The dead replica's rows expire.
    h.store.replicas.clear();
    h.advance(STALE - ms(1)).await;
    assert!(h.store.endpoint("sidecar-pay-1").is_some());
    h.advance(ms(1)).await;
    assert!(h.store.endpoint("sidecar-pay-1").is_none());
}

#[tokio::test(start_paused = true)]
async fn rows_of_this_replica_do_not_keep_an_endpoint() {
    let mut h = Harness::new();
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    // Its own row, not yet removed by the status sync.
    h.store
        .replicas
        .insert("pay-1".to_owned(), vec![HERE.to_owned()]);
    h.close(1, "pay-1");
    h.advance(GRACE).await;
    assert!(h.store.endpoint("sidecar-pay-1").is_none());
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_the_user_replaced_is_theirs() {
    let mut h = Harness::new();
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    h.store.write(
        key("sidecar-pay-1"),
        json!({"service": "pay", "address": "10.0.0.9", "port": 9000}),
    );
    h.settle().await;
    let mine = h.store.endpoint("sidecar-pay-1").unwrap();
    assert_eq!(
        mine.spec["address"], "10.0.0.9",
        "a replaced endpoint is not rewritten"
    );
    h.close(1, "pay-1");
    h.advance(GRACE * 2).await;
    assert_eq!(h.store.deletes_of("sidecar-pay-1"), 1, "tried, If-Match");
    assert_eq!(h.store.endpoint("sidecar-pay-1"), Some(mine));
    assert!(h.machine.nodes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_deleted_endpoint_of_a_connected_sidecar_is_written_again() {
    let mut h = Harness::new();
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    let before = h.store.endpoint("sidecar-pay-1").unwrap();
    h.store.remove(&key("sidecar-pay-1"));
    h.settle().await;
    let after = h.store.endpoint("sidecar-pay-1").expect("written again");
    assert_eq!(after.spec, before.spec);
    assert!(after.revision > before.revision);
    // Once its grace period runs, a deleted endpoint stays deleted.
    h.close(1, "pay-1");
    h.store.remove(&key("sidecar-pay-1"));
    h.advance(GRACE * 2).await;
    assert!(h.store.endpoint("sidecar-pay-1").is_none());
    assert!(h.machine.nodes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_missing_service_is_tried_when_created_and_every_retry() {
    let mut h = Harness::new();
    h.open(1, desired("cart-1", "cart", "10.0.0.1"));
    assert!(h.store.endpoint("sidecar-cart-1").is_none());
    assert_eq!(h.store.writes_of("sidecar-cart-1"), 1);
    h.advance(RETRY - ms(1)).await;
    assert_eq!(h.store.writes_of("sidecar-cart-1"), 1);
    h.advance(ms(1)).await;
    assert_eq!(
        h.store.writes_of("sidecar-cart-1"),
        2,
        "retried every RETRY"
    );
    // Creating the service is noticed at once.
    h.advance(RETRY / 2).await;
    h.store.write(
        ResourceKey::new("acme", "prod", Kind::Service, "cart"),
        json!({"port": 80}),
    );
    h.settle().await;
    assert_eq!(
        h.store.endpoint("sidecar-cart-1").unwrap().spec["service"],
        "cart"
    );
}

#[tokio::test(start_paused = true)]
async fn store_failures_are_retried_and_keep_what_was_to_be_done() {
    let mut h = Harness::new();
    h.store.down = true;
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    h.advance(STORE_RETRY - ms(1)).await;
    assert_eq!(
        h.store.count(|a| matches!(a, Action::ReadRevision { .. })),
        1
    );
    h.store.down = false;
    h.advance(ms(1)).await;
    assert!(
        h.store.endpoint("sidecar-pay-1").is_some(),
        "registered once up"
    );
    // A failure while deregistering retries the deregistration, not a registration.
    h.close(1, "pay-1");
    h.store.down = true;
    h.advance(GRACE).await;
    h.store.down = false;
    h.advance(STORE_RETRY).await;
    assert!(h.store.endpoint("sidecar-pay-1").is_none());
    assert_eq!(h.store.writes_of("sidecar-pay-1"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_contended_write_is_retried_and_a_gone_mesh_is_not() {
    let mut h = Harness::new();
    h.store.contended = true;
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    h.store.contended = false;
    h.advance(STORE_RETRY).await;
    assert_eq!(h.store.writes_of("sidecar-pay-1"), 2);
    assert!(h.store.endpoint("sidecar-pay-1").is_some());

    h.store.mesh_gone = true;
    h.open(2, desired("pay-2", "pay", "10.0.0.2"));
    h.advance(RETRY * 2).await;
    assert_eq!(h.store.writes_of("sidecar-pay-2"), 1, "not retried");
}

#[tokio::test(start_paused = true)]
async fn lost_notices_check_every_connected_registration() {
    let mut h = Harness::new();
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    h.open(2, desired("pay-2", "pay", "10.0.0.2"));
    let revision = h.store.revision;
    let reads = |h: &Harness| h.store.count(|a| matches!(a, Action::ReadChanges { .. }));
    h.settle().await;
    let before = reads(&h);
    h.event(Input::NoticesLost);
    assert_eq!(h.store.writes_of("sidecar-pay-1"), 2);
    assert_eq!(h.store.writes_of("sidecar-pay-2"), 2);
    assert_eq!(h.store.revision, revision, "checked, nothing written");
    assert_eq!(reads(&h), before + 1, "and the change log read again");
}

#[tokio::test(start_paused = true)]
async fn a_compacted_change_log_checks_everything_and_follows_on() {
    let mut h = Harness::new();
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    // The endpoint is deleted, and the log pruned past the deletion before it is read.
    h.store.remove(&key("sidecar-pay-1"));
    h.store.pruned_through = h.store.revision;
    h.settle().await;
    assert!(
        h.store.endpoint("sidecar-pay-1").is_some(),
        "found by checking"
    );
    assert_eq!(h.machine.tenants["acme"].seen, h.store.revision);
    // Followed on from where the log starts.
    h.store.remove(&key("sidecar-pay-1"));
    h.settle().await;
    assert!(h.store.endpoint("sidecar-pay-1").is_some());
}

#[tokio::test(start_paused = true)]
async fn a_full_read_of_the_change_log_checks_every_registration() {
    let mut h = Harness::new();
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    for i in 0..CHANGE_LIMIT {
        h.store.write(
            ResourceKey::new("acme", "prod", Kind::Service, &format!("s{i}")),
            json!({"port": 80}),
        );
    }
    h.settle().await;
    assert_eq!(h.store.writes_of("sidecar-pay-1"), 2, "checked");
    assert!(!h.machine.tenants["acme"].pending, "read to the end");
}

#[tokio::test(start_paused = true)]
async fn a_round_works_on_a_batch_of_nodes_at_most() {
    let mut h = Harness::new();
    for i in 0..(BATCH as u64 + 10) {
        let name = format!("n{i}");
        h.step(Input::Opened {
            stream: i,
            node: node(&name),
            desired: desired(&name, "pay", "10.0.0.1"),
        });
    }
    h.round();
    let writes = |h: &Harness| h.store.count(|a| matches!(a, Action::Upsert { .. }));
    assert_eq!(writes(&h), BATCH);
    h.settle().await;
    assert_eq!(writes(&h), BATCH + 10);
}

#[tokio::test(start_paused = true)]
async fn the_next_round_is_due_at_the_earliest_of_what_waits() {
    let mut h = Harness::new();
    h.settle().await;
    let sweep = h.machine.next_sweep;
    assert_eq!(h.machine.wake_at(h.now), sweep, "nothing but the sweep");
    assert_eq!(sweep, h.now + sweep_every(GRACE));
    h.open(1, desired("pay-1", "pay", "10.0.0.1"));
    h.close(1, "pay-1");
    assert_eq!(h.machine.wake_at(h.now), sweep.min(h.now + GRACE));
    h.store.write(
        key("other"),
        json!({"service": "pay", "address": "10.0.0.5"}),
    );
    h.step(Input::Committed {
        tenant: "acme".to_owned(),
        revision: h.store.revision,
    });
    assert_eq!(h.machine.wake_at(h.now), h.now, "a change log to read");
}
