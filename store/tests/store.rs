//! The store suite; every test runs on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::time::Duration;
use switchboard_model::{Kind, Spec};
use switchboard_store::testing::store;
use switchboard_store::{
    Backend, ChangeOp, CredentialKind, Notice, Precondition, ProxyStatusRecord, ResourceKey, Store,
    StoreError, WriteOptions, both_backends,
};

async fn setup(backend: Backend) -> Option<(Store, switchboard_store::testing::TestDb)> {
    let (s, db) = store(backend).await?;
    s.create_tenant("acme", &json!({}), false).await.unwrap();
    put(&s, Kind::Mesh, "prod", json!({})).await.unwrap();
    Some((s, db))
}

async fn put(
    s: &Store,
    kind: Kind,
    name: &str,
    spec: serde_json::Value,
) -> Result<switchboard_store::StoredResource, StoreError> {
    put_with(s, kind, name, spec, WriteOptions::default()).await
}

async fn put_with(
    s: &Store,
    kind: Kind,
    name: &str,
    spec: serde_json::Value,
    opts: WriteOptions,
) -> Result<switchboard_store::StoredResource, StoreError> {
    let parsed = Spec::parse(kind, spec).unwrap();
    parsed.validate().unwrap();
    s.put_spec("acme", "prod", name, &parsed, &opts).await
}

/// Deletes a resource of acme/prod without a precondition.
async fn delete(
    s: &Store,
    kind: Kind,
    name: &str,
) -> Result<switchboard_store::StoredResource, StoreError> {
    s.delete(
        &ResourceKey::new("acme", "prod", kind, name),
        &WriteOptions::default(),
    )
    .await
}

fn route(host: &str, svc: &str) -> serde_json::Value {
    json!({"hostnames": [host], "rules": [{"backends": [{"service": svc}]}]})
}

async fn crud_and_revisions(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let r0 = s.revision("acme").await.unwrap();
    let a = put(&s, Kind::Service, "a", json!({"port": 80}))
        .await
        .unwrap();
    assert_eq!(a.revision, r0 + 1);
    assert_eq!(a.etag(), format!("\"{}\"", r0 + 1));
    let got = s
        .get(&ResourceKey::new("acme", "prod", Kind::Service, "a"))
        .await
        .unwrap();
    assert_eq!(got.spec["port"], 80);
    let a2 = put(&s, Kind::Service, "a", json!({"port": 81}))
        .await
        .unwrap();
    assert_eq!(a2.revision, r0 + 2);
    assert_eq!(a2.create_time, a.create_time);
    assert_eq!(s.revision("acme").await.unwrap(), r0 + 2);
    // Pagination by name.
    for n in ["b", "c", "d", "e"] {
        put(&s, Kind::Service, n, json!({"port": 80}))
            .await
            .unwrap();
    }
    let mut after = None;
    for want in [&["a", "b"][..], &["c", "d"], &["e"]] {
        let page = s
            .list("acme", "prod", Kind::Service, after.as_deref(), 2)
            .await
            .unwrap();
        let names: Vec<_> = page.items.iter().map(|r| r.key.name.as_str()).collect();
        assert_eq!(names, want);
        after = page.next_after;
    }
    assert!(after.is_none());
    let meshes = s.list("acme", "", Kind::Mesh, None, 10).await.unwrap();
    assert_eq!(meshes.items.len(), 1);
}
both_backends!(crud_and_revisions_, crud_and_revisions);

async fn preconditions(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let a = put(&s, Kind::Service, "a", json!({"port": 80}))
        .await
        .unwrap();
    let stale = a.etag();
    put_with(
        &s,
        Kind::Service,
        "a",
        json!({"port": 81}),
        WriteOptions {
            precondition: Precondition::IfMatch(stale.clone()),
            dry_run: false,
            actor: None,
        },
    )
    .await
    .unwrap();
    let err = put_with(
        &s,
        Kind::Service,
        "a",
        json!({"port": 82}),
        WriteOptions {
            precondition: Precondition::IfMatch(stale),
            dry_run: false,
            actor: None,
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { current: Some(_) }),
        "{err}"
    );
    let err = put_with(
        &s,
        Kind::Service,
        "a",
        json!({"port": 82}),
        WriteOptions {
            precondition: Precondition::Create,
            dry_run: false,
            actor: None,
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    let got = s
        .get(&ResourceKey::new("acme", "prod", Kind::Service, "a"))
        .await
        .unwrap();
    assert_eq!(got.spec["port"], 81);
}
both_backends!(preconditions_, preconditions);

async fn references_and_claims(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let before = s.revision("acme").await.unwrap();
    let err = put(&s, Kind::Route, "r", route("pay", "missing"))
        .await
        .unwrap_err();
    match err {
        StoreError::DanglingReference { field, name, .. } => {
            assert_eq!(field, "spec.rules[0].backends[0].service");
            assert_eq!(name, "missing");
        }
        e => panic!("{e}"),
    }
    // A failed write leaves no trace, not even a revision bump.
    assert_eq!(s.revision("acme").await.unwrap(), before);
    put(&s, Kind::Service, "pay", json!({"port": 80}))
        .await
        .unwrap();
    put(&s, Kind::Route, "r", route("pay", "pay"))
        .await
        .unwrap();
    let err = put(&s, Kind::Route, "r2", route("pay", "pay"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Claimed { owner, field, .. } if owner == "r" && field == "spec.hostnames[0]"),
        "{err}"
    );
    // The owner may keep its own claim on update.
    put(&s, Kind::Route, "r", route("pay", "pay"))
        .await
        .unwrap();
    let svc = ResourceKey::new("acme", "prod", Kind::Service, "pay");
    let err = s.delete(&svc, &WriteOptions::default()).await.unwrap_err();
    match err {
        StoreError::Referenced { by, .. } => {
            assert_eq!(by.len(), 1);
            assert_eq!(by[0].name, "r");
            assert_eq!(by[0].kind, Kind::Route);
        }
        e => panic!("{e}"),
    }
    delete(&s, Kind::Route, "r").await.unwrap();
    // Claims are released with their owner.
    put(&s, Kind::Route, "r2", route("pay", "pay"))
        .await
        .unwrap();
    delete(&s, Kind::Route, "r2").await.unwrap();
    s.delete(&svc, &WriteOptions::default()).await.unwrap();
    assert!(matches!(
        s.get(&svc).await,
        Err(StoreError::NotFound { .. })
    ));
}
both_backends!(references_and_claims_, references_and_claims);

async fn dry_run_writes_nothing(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let before = s.revision("acme").await.unwrap();
    let dry = WriteOptions {
        precondition: Precondition::None,
        dry_run: true,
        actor: None,
    };
    put_with(&s, Kind::Service, "a", json!({"port": 80}), dry.clone())
        .await
        .unwrap();
    assert!(
        s.get(&ResourceKey::new("acme", "prod", Kind::Service, "a"))
            .await
            .is_err()
    );
    assert_eq!(s.revision("acme").await.unwrap(), before);
    assert!(
        s.changes_since("acme", before, 100)
            .await
            .unwrap()
            .is_empty()
    );
}
both_backends!(dry_run_writes_nothing_, dry_run_writes_nothing);

async fn change_log_and_notices(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let mut rx = s.subscribe();
    if b == Backend::Postgres {
        // Give the listener a moment to LISTEN before the first commit.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let since = s.revision("acme").await.unwrap();
    put(&s, Kind::Service, "a", json!({"port": 80}))
        .await
        .unwrap();
    put(&s, Kind::Service, "b", json!({"port": 80}))
        .await
        .unwrap();
    delete(&s, Kind::Service, "a").await.unwrap();
    let changes = s.changes_since("acme", since, 100).await.unwrap();
    let seen: Vec<_> = changes
        .iter()
        .map(|c| (c.revision - since, c.name.as_str(), c.op))
        .collect();
    assert_eq!(
        seen,
        [
            (1, "a", ChangeOp::Put),
            (2, "b", ChangeOp::Put),
            (3, "a", ChangeOp::Delete)
        ]
    );
    let mut got = vec![];
    while got.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Ok(Notice::Committed { tenant, revision }))
                if tenant == "acme" && revision > since =>
            {
                got.push(revision - since)
            }
            Ok(Ok(_)) => {}
            other => panic!("no notice: {other:?}"),
        }
    }
    assert_eq!(got, [1, 2, 3]);
}
both_backends!(change_log_and_notices_, change_log_and_notices);

async fn change_log_is_pruned_by_whole_revisions(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let since = s.revision("acme").await.unwrap();
    for name in ["a", "b"] {
        put(&s, Kind::Service, name, json!({"port": 80}))
            .await
            .unwrap();
    }
    let second = s.revision("acme").await.unwrap();
    // Change times are Unix milliseconds: keep the cut strictly between the writes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    put(&s, Kind::Service, "c", json!({"port": 80}))
        .await
        .unwrap();
    let third = s.revision("acme").await.unwrap();

    // Everything up to the cut goes (the tenant and mesh creations too), the rest stays.
    assert!(s.prune_changes(cut).await.unwrap() >= 2);
    assert_eq!(s.prune_changes(cut).await.unwrap(), 0, "idempotent");
    let kept = s.changes_since("acme", second, 100).await.unwrap();
    assert_eq!(
        kept.iter()
            .map(|c| (c.revision, c.name.as_str()))
            .collect::<Vec<_>>(),
        [(third, "c")]
    );
    // A reader from before the cut is told, not handed a partial log.
    match s.changes_since("acme", since, 100).await {
        Err(StoreError::Compacted {
            since: asked,
            pruned_through,
        }) => {
            assert_eq!((asked, pruned_through), (since, second));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // Pruning everything leaves the log complete from the current revision on.
    s.prune_changes(i64::MAX).await.unwrap();
    assert!(
        s.changes_since("acme", third, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        s.changes_since("acme", second, 100).await,
        Err(StoreError::Compacted { pruned_through, .. }) if pruned_through == third
    ));
    put(&s, Kind::Service, "d", json!({"port": 80}))
        .await
        .unwrap();
    let after = s.changes_since("acme", third, 100).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].name, "d");
}
both_backends!(
    change_log_is_pruned_by_whole_revisions_,
    change_log_is_pruned_by_whole_revisions
);

async fn concurrent_writers_one_wins(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let a = put(&s, Kind::Service, "a", json!({"port": 80}))
        .await
        .unwrap();
    for round in 0..5 {
        let cur = s
            .get(&ResourceKey::new("acme", "prod", Kind::Service, "a"))
            .await
            .unwrap();
        let mut tasks = vec![];
        for i in 0..4u32 {
            let s = s.clone();
            let tag = cur.etag();
            tasks.push(tokio::spawn(async move {
                put_with(
                    &s,
                    Kind::Service,
                    "a",
                    json!({"port": 1000 + i}),
                    WriteOptions {
                        precondition: Precondition::IfMatch(tag),
                        dry_run: false,
                        actor: None,
                    },
                )
                .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::PreconditionFailed { .. }) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(ok, 1, "round {round}: exactly one writer wins");
    }
    let _ = a;
}
both_backends!(concurrent_writers_one_wins_, concurrent_writers_one_wins);

async fn mesh_delete_cascades(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    put(&s, Kind::Service, "pay", json!({"port": 80}))
        .await
        .unwrap();
    put(&s, Kind::Route, "r", route("pay", "pay"))
        .await
        .unwrap();
    let snap = s.mesh_snapshot("acme", "prod").await.unwrap();
    assert_eq!(snap.resources.len(), 2);
    s.delete(&ResourceKey::mesh("acme", "prod"), &WriteOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        s.mesh_snapshot("acme", "prod").await,
        Err(StoreError::NotFound { what: "mesh", .. })
    ));
    // Recreated, it is empty and the old hostname claim is gone.
    put(&s, Kind::Mesh, "prod", json!({})).await.unwrap();
    put(&s, Kind::Service, "pay", json!({"port": 80}))
        .await
        .unwrap();
    put(&s, Kind::Route, "r2", route("pay", "pay"))
        .await
        .unwrap();
}
both_backends!(mesh_delete_cascades_, mesh_delete_cascades);

async fn credentials(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let k = s
        .create_credential("acme", CredentialKind::ApiKey, None, "ci")
        .await
        .unwrap();
    assert!(k.secret.starts_with("sbk_"));
    let found = s.authenticate(&k.secret).await.unwrap().unwrap();
    assert_eq!(found.tenant, "acme");
    assert_eq!(found.kind, CredentialKind::ApiKey);
    assert!(s.authenticate("sbk_wrong").await.unwrap().is_none());
    let t = s
        .create_credential("acme", CredentialKind::ProxyToken, Some("prod"), "")
        .await
        .unwrap();
    assert_eq!(
        s.authenticate(&t.secret)
            .await
            .unwrap()
            .unwrap()
            .mesh
            .as_deref(),
        Some("prod")
    );
    assert_eq!(
        s.list_credentials("acme", CredentialKind::ApiKey)
            .await
            .unwrap()
            .len(),
        1
    );
    let mut rx = s.subscribe();
    if b == Backend::Postgres {
        // Give the listener a moment to LISTEN before the commit.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(s.credential_exists(&k.credential.id).await.unwrap());
    s.revoke_credential("acme", CredentialKind::ApiKey, &k.credential.id)
        .await
        .unwrap();
    assert!(s.authenticate(&k.secret).await.unwrap().is_none());
    assert!(!s.credential_exists(&k.credential.id).await.unwrap());
    // Every replica hears of it (NOTIFY on PostgreSQL).
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Ok(Notice::Revoked { tenant, id })) => {
                assert_eq!(
                    (tenant.as_str(), id.as_str()),
                    ("acme", k.credential.id.as_str())
                );
                break;
            }
            Ok(Ok(_)) => {}
            other => panic!("no revocation notice: {other:?}"),
        }
    }
    assert!(matches!(
        s.revoke_credential("acme", CredentialKind::ApiKey, &k.credential.id)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.create_credential("nobody", CredentialKind::ApiKey, None, "")
            .await,
        Err(StoreError::NotFound { .. })
    ));
}
both_backends!(credentials_, credentials);

async fn proxy_jwts(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let missing = s
        .create_proxy_jwt("acme", Some("prod"), "", Duration::from_secs(60))
        .await;
    assert!(matches!(missing, Err(StoreError::Config(_))), "{missing:?}");
    s.set_proxy_jwt_key(switchboard_store::jwt::ProxyJwtKey::new(&[9; 32]).unwrap());
    let (created, exp) = s
        .create_proxy_jwt("acme", Some("prod"), "grpc", Duration::from_secs(600))
        .await
        .unwrap();
    let claims = s.proxy_jwt_key().unwrap().verify(&created.secret).unwrap();
    assert_eq!(claims.sub, created.credential.id);
    assert_eq!(
        (claims.tenant.as_str(), claims.mesh.as_deref()),
        ("acme", Some("prod"))
    );
    assert_eq!(claims.exp, exp);
    assert_eq!(claims.exp - claims.iat, 600);
    let row = s.get_credential(&created.credential.id).await.unwrap();
    assert_eq!(row.as_ref(), Some(&created.credential));
    assert_eq!(row.unwrap().kind, CredentialKind::ProxyToken);
    s.revoke_credential("acme", CredentialKind::ProxyToken, &created.credential.id)
        .await
        .unwrap();
    assert_eq!(
        s.get_credential(&created.credential.id).await.unwrap(),
        None
    );
}
both_backends!(proxy_jwts_, proxy_jwts);

async fn tenants(b: Backend) {
    let Some((s, _db)) = store(b).await else {
        return;
    };
    s.create_tenant("a", &json!({}), false).await.unwrap();
    assert!(matches!(
        s.create_tenant("a", &json!({}), false).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    s.create_tenant("b", &json!({}), true).await.unwrap();
    assert!(s.get_tenant("b").await.is_err());
    s.create_tenant("b", &json!({}), false).await.unwrap();
    assert_eq!(s.list_tenants(None, 10).await.unwrap().items.len(), 2);
    s.delete_tenant("a", false).await.unwrap();
    assert!(matches!(
        s.get_tenant("a").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete_tenant("a", false).await,
        Err(StoreError::NotFound { .. })
    ));
}
both_backends!(tenants_, tenants);

async fn proxy_rows(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let row = |replica: &str, id: i64, node: &str| switchboard_store::ProxyRow {
        tenant: "acme".into(),
        mesh: "prod".into(),
        node: node.into(),
        replica: replica.into(),
        stream_id: id,
        connected_since: 1,
        heartbeat: i64::MAX / 2,
        status: ProxyStatusRecord {
            role: format!("stream {id}"),
            ..Default::default()
        },
    };
    s.put_proxies(&[row("r1", 1, "a"), row("r1", 2, "b"), row("r2", 1, "a")])
        .await
        .unwrap();
    assert_eq!(s.list_proxies("acme", "prod", None).await.unwrap().len(), 3);
    assert_eq!(
        s.list_proxies("acme", "prod", Some("a"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        s.list_proxies("acme", "dev", None)
            .await
            .unwrap()
            .is_empty()
    );
    let mut updated = row("r1", 2, "b");
    updated.status.authenticated = true;
    s.put_proxies(&[updated.clone()]).await.unwrap();
    let got = s.list_proxies("acme", "prod", Some("b")).await.unwrap();
    assert!(got[0].status.authenticated);
    assert_eq!(got[0].status, updated.status);
    s.delete_proxies("r1", &[2]).await.unwrap();
    assert!(
        s.list_proxies("acme", "prod", Some("b"))
            .await
            .unwrap()
            .is_empty()
    );
    s.clear_replica_proxies("r2").await.unwrap();
    assert_eq!(s.list_proxies("acme", "prod", None).await.unwrap().len(), 1);
    // A row without a recent heartbeat is from a dead replica: hidden and purged.
    let mut stale = row("r3", 1, "c");
    stale.heartbeat = 0;
    s.put_proxies(&[stale]).await.unwrap();
    assert_eq!(s.list_proxies("acme", "prod", None).await.unwrap().len(), 1);
    s.heartbeat_proxies("r1").await.unwrap();
    assert_eq!(s.list_proxies("acme", "prod", None).await.unwrap().len(), 1);
}
both_backends!(proxy_rows_, proxy_rows);

async fn many_proxy_rows(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    // More rows than one chunk, twice (the second time as updates).
    for round in 0..2 {
        let rows: Vec<_> = (0..250)
            .map(|i| switchboard_store::ProxyRow {
                tenant: "acme".into(),
                mesh: "prod".into(),
                node: format!("n{i}"),
                replica: "r1".into(),
                stream_id: i,
                connected_since: 1,
                heartbeat: i64::MAX / 2,
                status: ProxyStatusRecord {
                    role: format!("round {round}"),
                    ..Default::default()
                },
            })
            .collect();
        s.put_proxies(&rows).await.unwrap();
    }
    let all = s.list_proxies("acme", "prod", None).await.unwrap();
    assert_eq!(all.len(), 250);
    assert!(all.iter().all(|r| r.status.role == "round 1"));
}
both_backends!(many_proxy_rows_, many_proxy_rows);

/// Authorization policies refer to their destination and source services, and a policy that
/// narrows by path needs an HTTP destination, checked in both directions inside the write.
async fn authorization_policies(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let narrowed = json!({"service": "b", "action": "deny", "from": [{"services": ["a"]}],
                          "to": [{"paths": ["/admin/*"]}]});
    match put(&s, Kind::AuthorizationPolicy, "p", narrowed.clone())
        .await
        .unwrap_err()
    {
        StoreError::DanglingReference { field, name, .. } => {
            assert_eq!((field.as_str(), name.as_str()), ("spec.service", "b"))
        }
        e => panic!("{e}"),
    }
    put(&s, Kind::Service, "b", json!({"port": 80}))
        .await
        .unwrap();
    match put(&s, Kind::AuthorizationPolicy, "p", narrowed.clone())
        .await
        .unwrap_err()
    {
        StoreError::DanglingReference { field, name, .. } => {
            assert_eq!(
                (field.as_str(), name.as_str()),
                ("spec.from[0].services[0]", "a")
            )
        }
        e => panic!("{e}"),
    }
    put(
        &s,
        Kind::Service,
        "a",
        json!({"port": 80, "protocol": "tcp"}),
    )
    .await
    .unwrap();
    let stored = put(&s, Kind::AuthorizationPolicy, "p", narrowed.clone())
        .await
        .unwrap();
    assert_eq!(stored.spec, narrowed);
    let key = ResourceKey::new("acme", "prod", Kind::AuthorizationPolicy, "p");
    assert_eq!(s.get(&key).await.unwrap().spec, narrowed);

    // The destination cannot become a TCP service while a policy narrows by path …
    let before = s.revision("acme").await.unwrap();
    match put(
        &s,
        Kind::Service,
        "b",
        json!({"port": 80, "protocol": "tcp"}),
    )
    .await
    .unwrap_err()
    {
        StoreError::Incompatible { field, message } => {
            assert_eq!(field, "spec.protocol");
            assert!(message.contains("\"p\""), "{message}");
        }
        e => panic!("{e}"),
    }
    assert_eq!(s.revision("acme").await.unwrap(), before);
    // … and a narrowing policy cannot be written for a TCP service (a TCP source is fine).
    let for_a = json!({"service": "a", "action": "allow", "from": [{"anyAuthenticated": true}],
                       "to": [{"methods": ["GET"]}]});
    match put(&s, Kind::AuthorizationPolicy, "q", for_a)
        .await
        .unwrap_err()
    {
        StoreError::Incompatible { field, .. } => assert_eq!(field, "spec.to"),
        e => panic!("{e}"),
    }
    put(
        &s,
        Kind::AuthorizationPolicy,
        "q",
        json!({"service": "a", "action": "allow", "from": [{"anyAuthenticated": true}]}),
    )
    .await
    .unwrap();
    // A policy with only `from` lets its destination change protocol.
    put(
        &s,
        Kind::Service,
        "a",
        json!({"port": 81, "protocol": "tcp"}),
    )
    .await
    .unwrap();

    // Services a policy names cannot be deleted; the policy can.
    for svc in ["a", "b"] {
        match delete(&s, Kind::Service, svc).await.unwrap_err() {
            StoreError::Referenced { by, .. } => {
                assert!(
                    by.iter().all(|r| r.kind == Kind::AuthorizationPolicy),
                    "{by:?}"
                )
            }
            e => panic!("{e}"),
        }
    }
    delete(&s, Kind::AuthorizationPolicy, "p").await.unwrap();
    delete(&s, Kind::AuthorizationPolicy, "q").await.unwrap();
    put(
        &s,
        Kind::Service,
        "b",
        json!({"port": 80, "protocol": "tcp"}),
    )
    .await
    .unwrap();
    delete(&s, Kind::Service, "a").await.unwrap();
    let snapshot = s.mesh_snapshot("acme", "prod").await.unwrap();
    assert!(
        snapshot
            .resources
            .iter()
            .all(|r| r.key.kind != Kind::AuthorizationPolicy)
    );
}
both_backends!(authorization_policies_, authorization_policies);
