//! A planner seeded by the snapshot cache plans from the translator the cache keeps current,
//! and answers exactly what a plan from the stored mesh answers.

use serde_json::json;
use switchboard_model::Kind;
use switchboard_runtime::eventually;
use switchboard_store::ResourceKey;
use switchboard_xds_server::plan::Planner;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_start_from_the_translator_of_a_loaded_mesh() {
    let env = env().await;
    let cache = env.server.xds.cache().clone();
    let domain = env.server.xds.trust_domain().to_owned();
    let seeded = Planner::seeded(cache.clone());
    let change = [(
        ResourceKey::new("acme", "prod", Kind::Service, "reviews"),
        Some(json!({"port": 9080})),
    )];
    let revision = env.store.revision("acme").await.unwrap();

    // Not loaded: the planner needs the stored mesh.
    assert!(!seeded.holds("acme", "prod", revision, &domain));
    assert!(
        seeded
            .plan_held(("acme", "prod", revision), &change, &domain, &[])
            .is_none()
    );

    let _prod = cache.acquire("acme", "prod").await.unwrap();
    assert!(seeded.holds("acme", "prod", revision, &domain));
    assert!(
        !seeded.holds("acme", "prod", revision, "other.domain"),
        "another trust domain translates differently"
    );
    let from_cache = seeded
        .plan_held(("acme", "prod", revision), &change, &domain, &[])
        .expect("the loaded mesh's translator");
    let stored = env.store.mesh_snapshot("acme", "prod").await.unwrap();
    let from_store = Planner::default().plan(&stored, &change, &domain, &[]);
    assert_eq!(from_cache, from_store);
    assert!(
        from_cache
            .resources
            .iter()
            .any(|r| r.name == "reviews" && r.resource_type.type_url().ends_with("Cluster")),
        "{from_cache:?}"
    );

    // A write: until the cache has rebuilt, it does not hold the new revision; once it has,
    // the plan is the plan from the mesh as stored after the write.
    env.put("prod", Kind::Service, "shop", json!({"port": 80}))
        .await;
    let after = env.store.revision("acme").await.unwrap();
    eventually("the cache holds the revision of the write", || async {
        seeded.holds("acme", "prod", after, &domain).then_some(())
    })
    .await;
    let stored = env.store.mesh_snapshot("acme", "prod").await.unwrap();
    assert_eq!(stored.revision, after);
    let from_cache = seeded
        .plan_held(("acme", "prod", after), &change, &domain, &[])
        .expect("the rebuilt translator");
    assert_eq!(
        from_cache,
        Planner::default().plan(&stored, &change, &domain, &[])
    );
    // An earlier revision is not what the cache holds any more (the mesh changed since).
    let fresh = Planner::seeded(cache.clone());
    assert!(
        fresh
            .plan_held(("acme", "prod", revision), &change, &domain, &[])
            .is_none()
    );
}
