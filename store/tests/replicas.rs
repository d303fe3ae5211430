//! Replica heartbeats and the reads behind the change-log-lag metrics, on both backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use switchboard_model::{Kind, Spec};
use switchboard_store::testing::store;
use switchboard_store::{Backend, REPLICA_FORGET_MS, WriteOptions, both_backends};

async fn heartbeats(b: Backend) {
    let Some((s, _db)) = store(b).await else {
        return;
    };
    let t0 = 1_700_000_000_000;
    let rows = s.replica_heartbeat("a", t0).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].id.as_str(), rows[0].started, rows[0].heartbeat),
        ("a", t0, t0)
    );
    let rows = s.replica_heartbeat("b", t0 + 1_000).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    // A heartbeat moves the row's heartbeat, never its start.
    let rows = s.replica_heartbeat("a", t0 + 5_000).await.unwrap();
    assert_eq!((rows[0].started, rows[0].heartbeat), (t0, t0 + 5_000));
    // A replica silent for REPLICA_FORGET_MS is forgotten; one that stops removes itself.
    let later = t0 + 1_000 + REPLICA_FORGET_MS + 1;
    let rows = s.replica_heartbeat("c", later).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a", "c"],
        "b's last heartbeat is older than the limit, a's is not"
    );
    s.remove_replica("a").await.unwrap();
    s.remove_replica("a").await.unwrap();
    let rows = s.replica_heartbeat("c", later + 1).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
}
both_backends!(heartbeats_, heartbeats);

async fn revisions_and_commit_times(b: Backend) {
    let Some((s, _db)) = store(b).await else {
        return;
    };
    for t in ["acme", "beta"] {
        s.create_tenant(t, &json!({}), false).await.unwrap();
    }
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut revisions = Vec::new();
    for name in ["prod", "staging"] {
        let spec = Spec::parse(Kind::Mesh, json!({})).unwrap();
        let stored = s
            .put_spec("acme", "", name, &spec, &WriteOptions::default())
            .await
            .unwrap();
        revisions.push(stored.revision);
    }
    let tenants = ["acme".to_owned(), "beta".to_owned(), "gone".to_owned()];
    let mut got = s.tenant_revisions(&tenants).await.unwrap();
    got.sort();
    let acme = s.revision("acme").await.unwrap();
    let beta = s.revision("beta").await.unwrap();
    assert_eq!(acme, revisions[1]);
    assert_eq!(got, [("acme".to_owned(), acme), ("beta".to_owned(), beta)]);
    assert!(s.tenant_revisions(&[]).await.unwrap().is_empty());
    // Many tenants at once (more than one batch of parameters).
    let many: Vec<String> = (0..1200).map(|i| format!("t{i}")).collect();
    assert!(s.tenant_revisions(&many).await.unwrap().is_empty());

    // The first commit after a revision is the oldest one a replica current through it lacks.
    let first = s
        .first_commit_after("acme", revisions[0] - 1)
        .await
        .unwrap()
        .expect("a commit after it");
    let second = s
        .first_commit_after("acme", revisions[0])
        .await
        .unwrap()
        .expect("a commit after it");
    assert!(
        before <= first && first <= second,
        "{before} {first} {second}"
    );
    assert_eq!(s.first_commit_after("acme", acme).await.unwrap(), None);
    assert_eq!(s.first_commit_after("gone", 0).await.unwrap(), None);
    // Pruned: the tenant's last write time stands in (taken when that write locked the
    // tenant, after the first commit it lacks: the lag it gives is a lower bound).
    s.prune_changes(i64::MAX).await.unwrap();
    let pruned = s
        .first_commit_after("acme", revisions[0] - 1)
        .await
        .unwrap()
        .expect("the last write time");
    assert!(pruned >= first, "{pruned} {first}");
}
both_backends!(revisions_and_commit_times_, revisions_and_commit_times);
