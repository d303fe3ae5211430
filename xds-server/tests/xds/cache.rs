//! Snapshots: loaded lazily, rebuilt only for the meshes that changed, dropped when unused.

use std::sync::Arc;

use serde_json::json;
use switchboard_model::Kind;
use switchboard_runtime::eventually;
use switchboard_xds_server::{CacheError, MeshState};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_changed_meshes_are_rebuilt_and_unused_ones_dropped() {
    let env = env().await;
    let cache = env.server.xds.cache().clone();
    assert!(
        cache.loaded_meshes().is_empty(),
        "nothing is loaded before a stream"
    );
    let mut prod = cache.acquire("acme", "prod").await.unwrap();
    let dev = cache.acquire("acme", "dev").await.unwrap();
    let dev_before = cache.current("acme", "dev").unwrap();
    let prod_before = cache.current("acme", "prod").unwrap();
    assert!(prod_before.resources.clusters.contains_key("pay"));

    env.put("prod", Kind::Service, "shop", json!({"port": 80}))
        .await;
    let MeshState::Ready(prod_after) = prod.changed().await.unwrap() else {
        panic!("prod not ready");
    };
    assert!(prod_after.resources.clusters.contains_key("shop"));
    assert!(prod_after.revision > prod_before.revision);
    // Convergence starts at the commit, as the change log records it (the writer's clock).
    let changes = env
        .store
        .changes_since("acme", prod_before.revision, 10)
        .await
        .unwrap();
    let shop = changes.iter().find(|c| c.name == "shop").unwrap();
    assert_eq!(
        prod_after.committed_at,
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(shop.time as u64)),
        "a rebuild from a notice starts from the commit time"
    );
    // Unchanged resources are the same allocation in the new snapshot.
    assert!(Arc::ptr_eq(
        &prod_before.resources.clusters["pay"],
        &prod_after.resources.clusters["pay"]
    ));
    // dev did not change: once the watcher has looked at dev for that commit, it is still
    // the same snapshot.
    eventually("the watcher has checked dev through the commit", || async {
        cache
            .loaded("acme")
            .iter()
            .any(|(mesh, checked)| mesh == "dev" && *checked >= prod_after.revision)
            .then_some(())
    })
    .await;
    assert!(Arc::ptr_eq(
        &dev_before,
        &cache.current("acme", "dev").unwrap()
    ));

    drop(dev);
    assert_eq!(
        cache.loaded_meshes(),
        [("acme".to_owned(), "prod".to_owned())]
    );
    drop(prod);
    assert!(cache.loaded_meshes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_meshes_are_not_found() {
    let env = env().await;
    let cache = env.server.xds.cache().clone();
    assert_eq!(
        cache.acquire("acme", "nope").await.unwrap_err(),
        CacheError::NotFound {
            tenant: "acme".to_owned(),
            mesh: "nope".to_owned()
        }
    );
    assert!(cache.loaded_meshes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_keep_their_mesh_loaded() {
    let env = env().await;
    let (client, _) = env.cds_client("prod", "a").await;
    assert_eq!(env.server.xds.cache().loaded_meshes().len(), 1);
    drop(client);
    let cache = env.server.xds.cache().clone();
    eventually("the mesh is unloaded", || async {
        cache.loaded_meshes().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_writes_coalesce() {
    let env = env().await;
    let cache = env.server.xds.cache().clone();
    let mut prod = cache.acquire("acme", "prod").await.unwrap();
    let store = env.store.clone();
    let writer = tokio::spawn(async move {
        for i in 0..20 {
            put(
                &store,
                "acme",
                "prod",
                Kind::Service,
                &format!("s{i}"),
                json!({"port": 80}),
            )
            .await;
        }
    });
    let mut snapshots = 0;
    let last = loop {
        let MeshState::Ready(s) = prod.changed().await.unwrap() else {
            panic!("not ready");
        };
        snapshots += 1;
        if s.resources.clusters.contains_key("s19") {
            break s;
        }
    };
    writer.await.unwrap();
    assert_eq!(last.resources.clusters.len(), 21);
    assert!(snapshots <= 20, "{snapshots} snapshots for 20 writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_keeps_the_last_good_snapshot() {
    use sqlx::Connection;
    let env = env().await;
    let (mut client, _) = env.cds_client("prod", "a").await;
    let cache = env.server.xds.cache().clone();
    let before = cache.current("acme", "prod").unwrap();
    // Break reads of the mesh behind the store's back, then make the server re-read it.
    let mut conn = sqlx::SqliteConnection::connect(&env.db.url).await.unwrap();
    sqlx::query("ALTER TABLE resources RENAME TO resources_away")
        .execute(&mut conn)
        .await
        .unwrap();
    cache.kick_all(std::time::SystemTime::now());
    assert_quiet(&mut client).await;
    assert!(Arc::ptr_eq(
        &before,
        &cache.current("acme", "prod").unwrap()
    ));
    // The stream is still up and the mesh still served to new streams.
    let mut second = env.client("prod", "b").await;
    second.subscribe(CDS, &[]).await.unwrap();
    assert_eq!(names(&second.recv().await.unwrap()), ["pay"]);
    // Back to normal: the next write goes through.
    sqlx::query("ALTER TABLE resources_away RENAME TO resources")
        .execute(&mut conn)
        .await
        .unwrap();
    env.put("prod", Kind::Service, "shop", json!({"port": 80}))
        .await;
    let r = client.recv_and_ack(&[]).await.unwrap();
    assert_eq!(names(&r), ["pay", "shop"]);
}
