//! Per-tenant quotas in the store; every test runs on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use switchboard_model::{Kind, Spec};
use switchboard_store::testing::store;
use switchboard_store::{
    Backend, QuotaOverrides, Quotas, ResourceKey, Store, StoreError, WriteOptions, both_backends,
};

async fn put_service(s: &Store, name: &str, port: u16, dry_run: bool) -> Result<(), StoreError> {
    let spec = Spec::parse(Kind::Service, json!({"port": port})).unwrap();
    let opts = WriteOptions {
        dry_run,
        ..Default::default()
    };
    s.put_spec("acme", "prod", name, &spec, &opts)
        .await
        .map(drop)
}

async fn quotas_are_set_and_read(b: Backend) {
    let Some((s, _db)) = store(b).await else {
        return;
    };
    s.create_tenant("acme", &json!({}), false).await.unwrap();
    let q = s.tenant_quotas("acme").await.unwrap();
    assert_eq!(q.set, QuotaOverrides::default());
    assert_eq!(q.effective, Quotas::DEFAULT);
    assert_eq!(q.update_time, None);

    let set = QuotaOverrides {
        streams: Some(3),
        writes_per_second: Some(7),
        ..Default::default()
    };
    let q = s.set_tenant_quotas("acme", &set).await.unwrap();
    assert_eq!(q.set, set);
    assert_eq!(q.effective.streams, 3);
    assert_eq!(q.effective.writes_per_second, 7);
    assert_eq!(
        q.effective.resources_per_mesh,
        Quotas::DEFAULT.resources_per_mesh
    );
    assert!(q.update_time.is_some());
    // The cached read sees a change made through this handle at once.
    assert_eq!(s.quotas("acme").await.unwrap().streams, 3);
    // Replacing: an omitted quota returns to the default.
    let q = s
        .set_tenant_quotas(
            "acme",
            &QuotaOverrides {
                streams: Some(4),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(q.effective.writes_per_second, 100);
    assert_eq!(s.quotas("acme").await.unwrap().streams, 4);

    // Defaults apply where nothing is set.
    s.set_quota_defaults(Quotas {
        streams: 1,
        resources_per_mesh: 2,
        writes_per_second: 3,
        write_burst: 4,
    });
    let q = s.quotas("acme").await.unwrap();
    assert_eq!((q.streams, q.resources_per_mesh, q.write_burst), (4, 2, 4));

    // Missing tenants.
    assert!(matches!(
        s.tenant_quotas("nobody").await,
        Err(StoreError::NotFound { what: "tenant", .. })
    ));
    assert!(matches!(
        s.set_tenant_quotas("nobody", &set).await,
        Err(StoreError::NotFound { what: "tenant", .. })
    ));
    assert!(s.quotas("nobody").await.is_err());

    // Deleting the tenant deletes its quotas.
    s.delete_tenant("acme", false).await.unwrap();
    s.create_tenant("acme", &json!({}), false).await.unwrap();
    assert_eq!(
        s.tenant_quotas("acme").await.unwrap().set,
        QuotaOverrides::default()
    );
}
both_backends!(quotas_are_set_and_read_, quotas_are_set_and_read);

async fn resources_per_mesh(b: Backend) {
    let Some((s, _db)) = store(b).await else {
        return;
    };
    s.create_tenant("acme", &json!({}), false).await.unwrap();
    let mesh = Spec::parse(Kind::Mesh, json!({})).unwrap();
    for m in ["prod", "dev"] {
        s.put_spec("acme", "", m, &mesh, &WriteOptions::default())
            .await
            .unwrap();
    }
    s.set_tenant_quotas(
        "acme",
        &QuotaOverrides {
            resources_per_mesh: Some(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    put_service(&s, "a", 80, false).await.unwrap();
    put_service(&s, "b", 80, false).await.unwrap();
    let revision = s.revision("acme").await.unwrap();

    for dry_run in [false, true] {
        let err = put_service(&s, "c", 80, dry_run).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::ResourceQuota {
                    limit: 2,
                    current: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "tenant \"acme\" has reached its quota of 2 resources in mesh \"prod\" (quota \
             resourcesPerMesh; the mesh holds 2): delete resources or ask the platform admin \
             to raise it"
        );
    }
    // Nothing written: not the resource, not even the revision.
    let c = ResourceKey::new("acme", "prod", Kind::Service, "c");
    assert!(matches!(s.get(&c).await, Err(StoreError::NotFound { .. })));
    assert_eq!(s.revision("acme").await.unwrap(), revision);

    // Replacing a resource adds none, and other meshes have their own count.
    put_service(&s, "a", 81, false).await.unwrap();
    let spec = Spec::parse(Kind::Service, json!({"port": 80})).unwrap();
    s.put_spec("acme", "dev", "c", &spec, &WriteOptions::default())
        .await
        .unwrap();

    // Deleting frees a place; raising the quota makes room.
    s.delete(
        &ResourceKey::new("acme", "prod", Kind::Service, "b"),
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    put_service(&s, "c", 80, false).await.unwrap();
    assert!(put_service(&s, "d", 80, false).await.is_err());
    s.set_tenant_quotas(
        "acme",
        &QuotaOverrides {
            resources_per_mesh: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    put_service(&s, "d", 80, false).await.unwrap();
}
both_backends!(resources_per_mesh_, resources_per_mesh);

/// Concurrent creators cannot both take the last place.
async fn resources_per_mesh_is_race_free(b: Backend) {
    let Some((s, _db)) = store(b).await else {
        return;
    };
    s.create_tenant("acme", &json!({}), false).await.unwrap();
    let mesh = Spec::parse(Kind::Mesh, json!({})).unwrap();
    s.put_spec("acme", "", "prod", &mesh, &WriteOptions::default())
        .await
        .unwrap();
    s.set_tenant_quotas(
        "acme",
        &QuotaOverrides {
            resources_per_mesh: Some(5),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { put_service(&s, &format!("svc{i}"), 80, false).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::ResourceQuota { limit: 5, .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 5);
    let page = s
        .list("acme", "prod", Kind::Service, None, 100)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 5);
}
both_backends!(
    resources_per_mesh_is_race_free_,
    resources_per_mesh_is_race_free
);

/// The mesh's size the quota reads is kept by every write: a deleted mesh or tenant starts
/// again from nothing, and creates and deletes committed together in one group count each.
async fn the_mesh_size_follows_every_write(b: Backend) {
    let Some((s, _db)) = store(b).await else {
        return;
    };
    let mesh = Spec::parse(Kind::Mesh, json!({})).unwrap();
    let limit = QuotaOverrides {
        resources_per_mesh: Some(3),
        ..Default::default()
    };
    for round in 0..2 {
        s.create_tenant("acme", &json!({}), false).await.unwrap();
        s.set_tenant_quotas("acme", &limit).await.unwrap();
        s.put_spec("acme", "", "prod", &mesh, &WriteOptions::default())
            .await
            .unwrap();
        for n in ["a", "b", "c"] {
            put_service(&s, n, 80, false).await.unwrap();
        }
        assert!(
            put_service(&s, "d", 80, false).await.is_err(),
            "round {round}"
        );
        // Deleting the mesh deletes its count with everything in it.
        s.delete(&ResourceKey::mesh("acme", "prod"), &WriteOptions::default())
            .await
            .unwrap();
        s.put_spec("acme", "", "prod", &mesh, &WriteOptions::default())
            .await
            .unwrap();
        for n in ["a", "b", "c"] {
            put_service(&s, n, 80, false).await.unwrap();
        }
        assert!(
            put_service(&s, "d", 80, false).await.is_err(),
            "round {round}"
        );
        // So does deleting the tenant (the next round starts from an empty tenant).
        s.delete_tenant("acme", false).await.unwrap();
    }

    // Deletes and creates racing in groups: the count ends exact, whatever the order.
    s.create_tenant("acme", &json!({}), false).await.unwrap();
    s.put_spec("acme", "", "prod", &mesh, &WriteOptions::default())
        .await
        .unwrap();
    for i in 0..10 {
        put_service(&s, &format!("old{i}"), 80, false)
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let old = ResourceKey::new("acme", "prod", Kind::Service, &format!("old{i}"));
                s.delete(&old, &WriteOptions::default()).await.unwrap();
                put_service(&s, &format!("new{i}"), 80, false)
                    .await
                    .unwrap();
                put_service(&s, &format!("more{i}"), 80, false)
                    .await
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // 20 resources now: a quota of 21 leaves exactly one place.
    s.set_tenant_quotas(
        "acme",
        &QuotaOverrides {
            resources_per_mesh: Some(21),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    put_service(&s, "last", 80, false).await.unwrap();
    let err = put_service(&s, "over", 80, false).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::ResourceQuota {
                limit: 21,
                current: 21,
                ..
            }
        ),
        "{err:?}"
    );
}
both_backends!(
    the_mesh_size_follows_every_write_,
    the_mesh_size_follows_every_write
);

/// A database from before `mesh_sizes` gets its meshes counted by the migration that adds it.
async fn the_migration_counts_existing_meshes(b: Backend) {
    let Some(db) = switchboard_store::testing::fresh(b).await else {
        return;
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"));
    let mut before = sqlx::migrate::Migrator::new(dir).await.unwrap();
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 7)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO tenants (name, spec, revision, create_time, update_time) \
         VALUES ('acme', '{}', 5, 0, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let rows = [
        ("", "meshes", "prod", "{}"),
        ("", "meshes", "dev", "{}"),
        ("", "meshes", "empty", "{}"),
        ("prod", "services", "a", r#"{"port":80}"#),
        ("prod", "services", "b", r#"{"port":80}"#),
        ("dev", "services", "a", r#"{"port":80}"#),
    ];
    for (mesh, kind, name, spec) in rows {
        sqlx::query(
            "INSERT INTO resources (tenant, mesh, kind, name, spec, revision, create_time, \
             update_time) VALUES ('acme', $1, $2, $3, $4, 1, 0, 0)",
        )
        .bind(mesh)
        .bind(kind)
        .bind(name)
        .bind(spec)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    let s = Store::open(&db.url).await.unwrap();
    s.set_tenant_quotas(
        "acme",
        &QuotaOverrides {
            resources_per_mesh: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let spec = Spec::parse(Kind::Service, json!({"port": 80})).unwrap();
    let put = |mesh: &'static str, name: &'static str| {
        let (s, spec) = (s.clone(), spec.clone());
        async move {
            s.put_spec("acme", mesh, name, &spec, &WriteOptions::default())
                .await
                .map(drop)
        }
    };
    // prod held 2, dev 1, empty none: 1, 2 and 3 places left.
    put("prod", "c").await.unwrap();
    assert!(matches!(
        put("prod", "d").await,
        Err(StoreError::ResourceQuota { current: 3, .. })
    ));
    for n in ["b", "c"] {
        put("dev", n).await.unwrap();
    }
    assert!(put("dev", "d").await.is_err());
    for n in ["a", "b", "c"] {
        put("empty", n).await.unwrap();
    }
    assert!(put("empty", "d").await.is_err());
}
both_backends!(
    the_migration_counts_existing_meshes_,
    the_migration_counts_existing_meshes
);
