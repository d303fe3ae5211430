//! History and rollback, on SQLite and on PostgreSQL: every write keeps the spec it stored
//! and who wrote it; a resource and a whole mesh roll back to the exact specs of a revision,
//! as a new revision; a rollback that cannot apply writes nothing; pruning keeps what a
//! rollback within the retention needs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use switchboard_model::{Kind, Spec};
use switchboard_store::testing::store;
use switchboard_store::{
    Actor, AuditQuery, Backend, BatchOptions, BatchWrite, HistoryOp, ResourceKey, Store,
    StoreError, WriteOptions, both_backends,
};

fn alice() -> Actor {
    Actor {
        id: "k-alice".into(),
        description: "alice's laptop".into(),
    }
}

fn ci() -> Actor {
    Actor {
        id: "k-ci".into(),
        description: "CI pipeline".into(),
    }
}

fn by(actor: Actor) -> WriteOptions {
    WriteOptions {
        actor: Some(actor),
        ..Default::default()
    }
}

async fn put(s: &Store, actor: Actor, kind: Kind, name: &str, spec: serde_json::Value) -> i64 {
    let spec = Spec::parse(kind, spec).unwrap();
    spec.validate().unwrap();
    let mesh = if kind == Kind::Mesh { "" } else { "prod" };
    s.put_spec("acme", mesh, name, &spec, &by(actor))
        .await
        .unwrap()
        .revision
}

async fn setup(b: Backend) -> Option<(Store, switchboard_store::testing::TestDb)> {
    let (s, db) = store(b).await?;
    s.create_tenant("acme", &json!({}), false).await.unwrap();
    s.create_tenant("other", &json!({}), false).await.unwrap();
    put(&s, alice(), Kind::Mesh, "prod", json!({})).await;
    Some((s, db))
}

fn svc(port: u16) -> serde_json::Value {
    json!({"protocol": "http", "port": port})
}

/// The spec as the store keeps it (canonical JSON).
fn canon(kind: Kind, v: serde_json::Value) -> serde_json::Value {
    Spec::parse(kind, v).unwrap().to_json()
}

fn key(kind: Kind, name: &str) -> ResourceKey {
    ResourceKey::new("acme", "prod", kind, name)
}

/// The specs of the mesh's resources, by (kind, name), as JSON.
async fn specs(s: &Store) -> Vec<(String, String, serde_json::Value)> {
    let snap = s.mesh_snapshot("acme", "prod").await.unwrap();
    let mut all: Vec<_> = snap
        .resources
        .iter()
        .map(|r| {
            (
                r.key.kind.plural().to_owned(),
                r.key.name.clone(),
                r.spec.clone(),
            )
        })
        .collect();
    all.push(("meshes".into(), "prod".into(), snap.mesh.spec.clone()));
    all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    all
}

async fn history_names_the_credential_of_each_write(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let r1 = put(&s, alice(), Kind::Service, "pay", svc(8080)).await;
    let r2 = put(&s, ci(), Kind::Service, "pay", svc(9090)).await;
    s.delete(&key(Kind::Service, "pay"), &by(ci()))
        .await
        .unwrap();
    let page = s
        .resource_history(&key(Kind::Service, "pay"), None, 10)
        .await
        .unwrap();
    let got: Vec<_> = page
        .items
        .iter()
        .map(|e| (e.revision, e.op, e.spec.clone(), e.actor.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (r2 + 1, HistoryOp::Delete, None, Some(ci())),
            (
                r2,
                HistoryOp::Update,
                Some(canon(Kind::Service, svc(9090))),
                Some(ci())
            ),
            (
                r1,
                HistoryOp::Create,
                Some(canon(Kind::Service, svc(8080))),
                Some(alice())
            ),
        ]
    );
    // Paged, newest first.
    let first = s
        .resource_history(&key(Kind::Service, "pay"), None, 2)
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    let rest = s
        .resource_history(&key(Kind::Service, "pay"), first.next.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [r1]
    );
    assert!(rest.next.is_none());
    // The audit log: by credential, and never another tenant's.
    let q = AuditQuery {
        credential: Some("k-ci".into()),
        limit: 100,
        ..Default::default()
    };
    let audit = s.audit("acme", &q).await.unwrap();
    assert_eq!(audit.items.len(), 2, "{:?}", audit.items);
    assert!(audit.items.iter().all(|e| e.actor == Some(ci())));
    let q = AuditQuery {
        limit: 100,
        ..Default::default()
    };
    assert!(s.audit("other", &q).await.unwrap().items.is_empty());
    // A batch records its actor too.
    let batch = vec![BatchWrite::put(
        "prod",
        "pay",
        Spec::parse(Kind::Service, svc(7070)).unwrap(),
    )];
    let opts = BatchOptions {
        actor: Some(alice()),
        ..Default::default()
    };
    let out = s.write_many("acme", batch, &opts).await.unwrap();
    let latest = s
        .resource_history(&key(Kind::Service, "pay"), None, 1)
        .await
        .unwrap();
    assert_eq!(latest.items[0].revision, out.revision.unwrap());
    assert_eq!(latest.items[0].op, HistoryOp::Create);
    assert_eq!(latest.items[0].actor, Some(alice()));
}
both_backends!(
    history_names_the_credential,
    history_names_the_credential_of_each_write
);

async fn a_resource_rolls_back_to_its_exact_spec(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let spec1 = json!({"protocol": "http", "port": 8080, "description": "payments"});
    let r1 = put(&s, alice(), Kind::Service, "pay", spec1.clone()).await;
    put(&s, ci(), Kind::Service, "pay", svc(9090)).await;
    let done = s
        .rollback(&key(Kind::Service, "pay"), r1, &by(ci()), None)
        .await
        .unwrap();
    assert!(!done.deleted);
    let now = s.get(&key(Kind::Service, "pay")).await.unwrap();
    assert_eq!(now.spec, canon(Kind::Service, spec1));
    assert_eq!(
        now.revision,
        s.revision("acme").await.unwrap(),
        "a new revision"
    );
    let h = s
        .resource_history(&key(Kind::Service, "pay"), None, 1)
        .await
        .unwrap();
    assert_eq!(h.items[0].revision, now.revision);
    assert_eq!(h.items[0].actor, Some(ci()));
    // Back to before it existed: deleted.
    let gone = s
        .rollback(&key(Kind::Service, "pay"), r1 - 1, &by(ci()), None)
        .await
        .unwrap();
    assert!(gone.deleted);
    assert!(matches!(
        s.get(&key(Kind::Service, "pay")).await,
        Err(StoreError::NotFound { .. })
    ));
    // Again: nothing to delete, and it did not exist then.
    let err = s
        .rollback(&key(Kind::Service, "pay"), r1 - 1, &by(ci()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AbsentAt { revision, .. } if revision == r1 - 1),
        "{err}"
    );
    // Revisions outside the tenant's history.
    let current = s.revision("acme").await.unwrap();
    for bad in [-1, current + 1] {
        let err = s
            .rollback(&key(Kind::Service, "pay"), bad, &by(ci()), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::RevisionOutside { revision, .. } if revision == bad),
            "{err}"
        );
    }
    // Dry run: checked, nothing written.
    let dry = WriteOptions {
        dry_run: true,
        ..by(ci())
    };
    s.rollback(&key(Kind::Service, "pay"), r1, &dry, None)
        .await
        .unwrap();
    assert_eq!(s.revision("acme").await.unwrap(), current);
}
both_backends!(resource_rollback, a_resource_rolls_back_to_its_exact_spec);

async fn a_rollback_that_cannot_apply_writes_nothing(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    put(&s, alice(), Kind::Service, "pay", svc(8080)).await;
    let route =
        json!({"hostnames": ["pay.example"], "rules": [{"backends": [{"service": "pay"}]}]});
    let r = put(&s, alice(), Kind::Route, "pay", route).await;
    s.delete(&key(Kind::Route, "pay"), &by(ci())).await.unwrap();
    s.delete(&key(Kind::Service, "pay"), &by(ci()))
        .await
        .unwrap();
    let before = s.revision("acme").await.unwrap();
    // The route refers to a service that no longer exists.
    let err = s
        .rollback(&key(Kind::Route, "pay"), r, &by(ci()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DanglingReference { .. }), "{err}");
    assert_eq!(s.revision("acme").await.unwrap(), before);
    // A history the store no longer keeps.
    s.prune_history(i64::MAX).await.unwrap();
    let err = s
        .rollback(&key(Kind::Route, "pay"), r, &by(ci()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::HistoryPruned { .. }), "{err}");
    let err = s
        .rollback_mesh("acme", "prod", r, &BatchOptions::default(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err.error, StoreError::HistoryPruned { .. }),
        "{err}"
    );
    assert_eq!(s.revision("acme").await.unwrap(), before);
}
both_backends!(
    rollback_fails_whole,
    a_rollback_that_cannot_apply_writes_nothing
);

async fn a_mesh_rolls_back_in_one_revision(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    put(&s, alice(), Kind::Service, "pay", svc(8080)).await;
    put(&s, alice(), Kind::Service, "cart", svc(8081)).await;
    put(
        &s,
        alice(),
        Kind::Endpoint,
        "pay-1",
        json!({"service": "pay", "address": "10.0.0.1", "port": 8080}),
    )
    .await;
    let route =
        json!({"hostnames": ["pay.example"], "rules": [{"backends": [{"service": "pay"}]}]});
    let n = put(&s, alice(), Kind::Route, "pay", route).await;
    let then = specs(&s).await;
    // Changed, deleted (with what refers to it), created since.
    put(&s, ci(), Kind::Service, "pay", svc(9090)).await;
    s.delete(&key(Kind::Service, "cart"), &by(ci()))
        .await
        .unwrap();
    s.delete(&key(Kind::Route, "pay"), &by(ci())).await.unwrap();
    put(&s, ci(), Kind::Service, "new", svc(7000)).await;
    put(
        &s,
        ci(),
        Kind::Endpoint,
        "new-1",
        json!({"service": "new", "address": "10.0.0.9", "port": 7000}),
    )
    .await;
    put(
        &s,
        ci(),
        Kind::Mesh,
        "prod",
        json!({"description": "changed"}),
    )
    .await;
    let before = s.revision("acme").await.unwrap();
    let opts = BatchOptions {
        actor: Some(alice()),
        ..Default::default()
    };
    // Dry run: nothing written.
    let dry = BatchOptions {
        dry_run: true,
        ..opts.clone()
    };
    s.rollback_mesh("acme", "prod", n, &dry, None)
        .await
        .unwrap();
    assert_eq!(s.revision("acme").await.unwrap(), before);
    let out = s
        .rollback_mesh("acme", "prod", n, &opts, None)
        .await
        .unwrap();
    assert_eq!(out.revision, Some(before + 1), "one new revision");
    assert_eq!(specs(&s).await, then, "the exact specs of revision {n}");
    let audit = s
        .audit(
            "acme",
            &AuditQuery {
                mesh: Some("prod".into()),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let newest: Vec<_> = audit
        .items
        .iter()
        .filter(|e| e.revision == before + 1)
        .collect();
    assert_eq!(newest.len(), 6, "{newest:?}");
    assert!(newest.iter().all(|e| e.actor == Some(alice())));
    // Already as it was: nothing to write.
    let again = s
        .rollback_mesh("acme", "prod", n, &opts, None)
        .await
        .unwrap();
    assert_eq!(again.revision, None);
    // A mesh that did not exist then.
    let err = s
        .rollback_mesh("acme", "prod", 1, &opts, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.error,
            StoreError::AbsentAt {
                kind: Kind::Mesh,
                ..
            }
        ),
        "{err}"
    );
}
both_backends!(mesh_rollback, a_mesh_rolls_back_in_one_revision);

async fn a_deleted_mesh_comes_back_whole(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    put(&s, alice(), Kind::Service, "pay", svc(8080)).await;
    let n = put(
        &s,
        alice(),
        Kind::Endpoint,
        "pay-1",
        json!({"service": "pay", "address": "10.0.0.1", "port": 8080}),
    )
    .await;
    let then = specs(&s).await;
    s.delete(&ResourceKey::mesh("acme", "prod"), &by(ci()))
        .await
        .unwrap();
    // Its resources' history says the mesh's delete took them.
    let h = s
        .resource_history(&key(Kind::Service, "pay"), None, 1)
        .await
        .unwrap();
    assert_eq!(h.items[0].op, HistoryOp::Delete);
    assert_eq!(h.items[0].actor, Some(ci()));
    // Re-created empty: the old resources are not taken for its own.
    let m = put(&s, ci(), Kind::Mesh, "prod", json!({})).await;
    let out = s
        .rollback_mesh("acme", "prod", m, &BatchOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(out.revision, None);
    s.rollback_mesh("acme", "prod", n, &BatchOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(specs(&s).await, then);
}
both_backends!(deleted_mesh, a_deleted_mesh_comes_back_whole);

async fn pruning_keeps_what_a_rollback_needs(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    put(&s, alice(), Kind::Service, "old", svc(1000)).await;
    put(&s, alice(), Kind::Service, "pay", svc(8080)).await;
    let kept = put(&s, alice(), Kind::Service, "pay", svc(8081)).await;
    put(&s, alice(), Kind::Service, "gone", svc(1)).await;
    s.delete(&key(Kind::Service, "gone"), &by(alice()))
        .await
        .unwrap();
    s.record_audit("acme", "api-key", "k-ci", HistoryOp::Create, &alice())
        .await
        .unwrap();
    let horizon = s.revision("acme").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cutoff = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let later = put(&s, ci(), Kind::Service, "pay", svc(9090)).await;
    let removed = s.prune_history(cutoff).await.unwrap();
    // pay's first row, gone's two rows and the audit row; old, pay's row in effect at the
    // horizon and the mesh stay.
    assert_eq!(removed, 4);
    let h = s
        .resource_history(&key(Kind::Service, "pay"), None, 10)
        .await
        .unwrap();
    assert_eq!(
        h.items.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [later, kept]
    );
    // A rollback to the horizon or later still works; to before it, it is refused.
    s.rollback_mesh("acme", "prod", horizon, &BatchOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(
        s.get(&key(Kind::Service, "pay")).await.unwrap().spec,
        canon(Kind::Service, svc(8081))
    );
    assert_eq!(
        s.get(&key(Kind::Service, "old")).await.unwrap().spec,
        canon(Kind::Service, svc(1000))
    );
    let err = s
        .resource_at(&key(Kind::Service, "pay"), horizon - 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::HistoryPruned { pruned_through, .. } if pruned_through == horizon),
        "{err}"
    );
    assert_eq!(s.prune_history(cutoff).await.unwrap(), 0);
}
both_backends!(pruning, pruning_keeps_what_a_rollback_needs);
