//! `Store::write_many`, on SQLite and on PostgreSQL: a batch is one transaction at one
//! revision (one change-log row per resource, one notice), ordered so that references exist,
//! all or nothing, and a batch that changes nothing commits nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::time::Duration;
use switchboard_model::{Kind, Spec};
use switchboard_store::testing::store;
use switchboard_store::{
    Backend, BatchEffect, BatchOptions, BatchWrite, ChangeOp, Notice, ResourceKey, Store,
    StoreError, both_backends,
};

fn put(kind: Kind, mesh: &str, name: &str, spec: serde_json::Value) -> BatchWrite {
    let spec = Spec::parse(kind, spec).unwrap();
    spec.validate().unwrap();
    BatchWrite::put(mesh, name, spec)
}

/// A mesh with a service, two endpoints, a route, a policy and a gateway, listed so that
/// everything comes before what it refers to.
fn mesh_batch() -> Vec<BatchWrite> {
    vec![
        put(
            Kind::Gateway,
            "prod",
            "edge",
            json!({"port": 8443, "protocol": "http", "routes": ["pay"]}),
        ),
        put(
            Kind::AuthorizationPolicy,
            "prod",
            "allow-all",
            json!({"service": "payments", "action": "allow", "from": [{"services": ["payments"]}]}),
        ),
        put(
            Kind::Route,
            "prod",
            "pay",
            json!({"hostnames": ["pay.example"], "rules": [{"backends": [{"service": "payments"}]}]}),
        ),
        put(
            Kind::Endpoint,
            "prod",
            "payments-1",
            json!({"service": "payments", "address": "10.0.0.1", "port": 8080}),
        ),
        put(
            Kind::Endpoint,
            "prod",
            "payments-2",
            json!({"service": "payments", "address": "10.0.0.2", "port": 8080}),
        ),
        put(
            Kind::Service,
            "prod",
            "payments",
            json!({"protocol": "http", "port": 8080}),
        ),
        put(Kind::Mesh, "", "prod", json!({})),
    ]
}

async fn setup(backend: Backend) -> Option<(Store, switchboard_store::testing::TestDb)> {
    let (s, db) = store(backend).await?;
    s.create_tenant("acme", &json!({}), false).await.unwrap();
    Some((s, db))
}

async fn count(s: &Store, mesh: &str, kind: Kind) -> usize {
    s.list("acme", mesh, kind, None, 1000)
        .await
        .unwrap()
        .items
        .len()
}

async fn one_revision_in_reference_order(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let mut rx = s.subscribe();
    if b == Backend::Postgres {
        // Give the listener a moment to LISTEN before the commit.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before = s.revision("acme").await.unwrap();
    let out = s
        .write_many("acme", mesh_batch(), &BatchOptions::default())
        .await
        .unwrap();
    let after = s.revision("acme").await.unwrap();
    assert_eq!(after, before + 1, "one revision for the whole batch");
    assert_eq!(out.revision, Some(after));
    assert_eq!(out.items.len(), 7);
    assert!(
        out.items.iter().all(|i| i.effect == BatchEffect::Created),
        "{:?}",
        out.items.iter().map(|i| i.effect).collect::<Vec<_>>()
    );
    // Items come back in the order given.
    assert_eq!(out.items[0].resource.key.name, "edge");
    assert_eq!(out.items[6].resource.key.kind, Kind::Mesh);
    assert!(out.items.iter().all(|i| i.resource.revision == after));
    let changes = s.changes_since("acme", before, 100).await.unwrap();
    assert_eq!(changes.len(), 7);
    assert!(
        changes
            .iter()
            .all(|c| c.revision == after && c.op == ChangeOp::Put)
    );
    // One notice, for that revision.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Ok(Notice::Committed { tenant, revision })) if tenant == "acme" => {
                assert_eq!(revision, after);
                break;
            }
            Ok(Ok(_)) => {}
            other => panic!("no notice: {other:?}"),
        }
    }
    // The mesh got its CA only when the write carried one: none here.
    assert!(s.list_cas("acme", "prod").await.unwrap().is_empty());
    assert_eq!(count(&s, "prod", Kind::Endpoint).await, 2);
    let snapshot = s.mesh_snapshot("acme", "prod").await.unwrap();
    assert_eq!(snapshot.resources.len(), 6);
}
both_backends!(
    one_revision_in_reference_order_,
    one_revision_in_reference_order
);

async fn unchanged_batch_commits_nothing(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    s.write_many("acme", mesh_batch(), &BatchOptions::default())
        .await
        .unwrap();
    let before = s.revision("acme").await.unwrap();
    let out = s
        .write_many("acme", mesh_batch(), &BatchOptions::default())
        .await
        .unwrap();
    assert_eq!(out.revision, None);
    assert!(out.items.iter().all(|i| i.effect == BatchEffect::Unchanged));
    assert_eq!(s.revision("acme").await.unwrap(), before);
    assert!(
        s.changes_since("acme", before, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // One change among unchanged writes: only it is written and logged.
    let mut batch = mesh_batch();
    batch[5] = put(
        Kind::Service,
        "prod",
        "payments",
        json!({"protocol": "http", "port": 9090}),
    );
    let out = s
        .write_many("acme", batch, &BatchOptions::default())
        .await
        .unwrap();
    assert_eq!(out.revision, Some(before + 1));
    let effects: Vec<_> = out.items.iter().map(|i| i.effect).collect();
    assert_eq!(effects[5], BatchEffect::Updated);
    assert_eq!(
        effects
            .iter()
            .filter(|e| **e == BatchEffect::Unchanged)
            .count(),
        6
    );
    let changes = s.changes_since("acme", before, 100).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].name, "payments");
}
both_backends!(
    unchanged_batch_commits_nothing_,
    unchanged_batch_commits_nothing
);

async fn a_failure_in_the_middle_writes_nothing(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    s.write_many("acme", mesh_batch(), &BatchOptions::default())
        .await
        .unwrap();
    let before = s.revision("acme").await.unwrap();
    let snapshot = s.mesh_snapshot("acme", "prod").await.unwrap();
    // A changed service, a route to a service that does not exist, a new endpoint.
    let batch = vec![
        put(
            Kind::Service,
            "prod",
            "payments",
            json!({"protocol": "http", "port": 9090}),
        ),
        put(
            Kind::Route,
            "prod",
            "broken",
            json!({"hostnames": ["b.example"], "rules": [{"backends": [{"service": "missing"}]}]}),
        ),
        put(
            Kind::Endpoint,
            "prod",
            "payments-3",
            json!({"service": "payments", "address": "10.0.0.3", "port": 8080}),
        ),
    ];
    let err = s
        .write_many("acme", batch, &BatchOptions::default())
        .await
        .unwrap_err();
    let at = err.at.clone().expect("names the write");
    assert_eq!(
        (at.index, at.kind, at.name.as_str()),
        (1, Kind::Route, "broken")
    );
    match &err.error {
        StoreError::DanglingReference { field, name, .. } => {
            assert_eq!(field, "spec.rules[0].backends[0].service");
            assert_eq!(name, "missing");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().starts_with("write 1 (route \"broken\")"),
        "{err}"
    );
    assert_eq!(s.revision("acme").await.unwrap(), before);
    let again = s.mesh_snapshot("acme", "prod").await.unwrap();
    assert_eq!(again.resources, snapshot.resources, "nothing changed");
    assert!(
        s.changes_since("acme", before, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // A host name another route holds, too: refused, nothing written.
    let err = s
        .write_many(
            "acme",
            vec![
                put(Kind::Service, "prod", "other", json!({"port": 80})),
                put(
                    Kind::Route,
                    "prod",
                    "thief",
                    json!({"hostnames": ["pay.example"], "rules": [{"backends": [{"service": "other"}]}]}),
                ),
            ],
            &BatchOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.at.as_ref().map(|a| a.index), Some(1));
    assert!(matches!(err.error, StoreError::Claimed { .. }), "{err}");
    assert_eq!(s.revision("acme").await.unwrap(), before);
    assert!(
        s.get(&ResourceKey::new("acme", "prod", Kind::Service, "other"))
            .await
            .is_err()
    );
}
both_backends!(
    a_failure_in_the_middle_writes_nothing_,
    a_failure_in_the_middle_writes_nothing
);

async fn dry_run_and_deletes(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let dry = BatchOptions {
        dry_run: true,
        ..Default::default()
    };
    let start = s.revision("acme").await.unwrap();
    let out = s.write_many("acme", mesh_batch(), &dry).await.unwrap();
    assert_eq!(out.revision, None);
    assert!(out.items.iter().all(|i| i.effect == BatchEffect::Created));
    assert_eq!(s.revision("acme").await.unwrap(), start);
    assert!(
        s.list("acme", "", Kind::Mesh, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    s.write_many("acme", mesh_batch(), &BatchOptions::default())
        .await
        .unwrap();
    let before = s.revision("acme").await.unwrap();
    // The service first, then what refers to it: deletes run referrers first.
    let deletes = vec![
        BatchWrite::delete("prod", Kind::Service, "payments"),
        BatchWrite::delete("prod", Kind::Endpoint, "payments-1"),
        BatchWrite::delete("prod", Kind::Endpoint, "payments-2"),
        BatchWrite::delete("prod", Kind::AuthorizationPolicy, "allow-all"),
        BatchWrite::delete("prod", Kind::Gateway, "edge"),
        BatchWrite::delete("prod", Kind::Route, "pay"),
    ];
    let out = s.write_many("acme", deletes.clone(), &dry).await.unwrap();
    assert_eq!(out.revision, None);
    assert_eq!(s.revision("acme").await.unwrap(), before);
    assert_eq!(count(&s, "prod", Kind::Endpoint).await, 2);
    let out = s
        .write_many("acme", deletes, &BatchOptions::default())
        .await
        .unwrap();
    assert_eq!(out.revision, Some(before + 1));
    assert!(out.items.iter().all(|i| i.effect == BatchEffect::Deleted));
    assert_eq!(out.items[0].resource.key.name, "payments");
    let snapshot = s.mesh_snapshot("acme", "prod").await.unwrap();
    assert!(snapshot.resources.is_empty());
    let changes = s.changes_since("acme", before, 100).await.unwrap();
    assert_eq!(changes.len(), 6);
    assert!(changes.iter().all(|c| c.op == ChangeOp::Delete));

    // The same resource twice is refused before anything runs.
    let err = s
        .write_many(
            "acme",
            vec![
                put(Kind::Service, "prod", "a", json!({"port": 80})),
                put(Kind::Service, "prod", "a", json!({"port": 81})),
            ],
            &BatchOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.at.as_ref().map(|a| a.index), Some(1));
    assert_eq!(s.revision("acme").await.unwrap(), before + 1);
    // An empty batch, and a missing tenant.
    let out = s
        .write_many("acme", vec![], &BatchOptions::default())
        .await
        .unwrap();
    assert_eq!(out.revision, None);
    let err = s
        .write_many("nobody", mesh_batch(), &BatchOptions::default())
        .await
        .unwrap_err();
    assert!(err.at.is_none());
    assert!(matches!(
        err.error,
        StoreError::NotFound { what: "tenant", .. }
    ));
}
both_backends!(dry_run_and_deletes_, dry_run_and_deletes);
