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
