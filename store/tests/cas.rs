//! Mesh CAs in the store; every test runs on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use switchboard_model::{Kind, Spec};
use switchboard_pki::{Kek, MeshCa, SealedCa};
use switchboard_store::testing::store;
use switchboard_store::{
    Backend, CaState, Notice, ResourceKey, Store, StoreError, WriteOptions, both_backends,
};
use time::OffsetDateTime;

fn kek() -> Kek {
    Kek::parse(&"ab".repeat(32)).unwrap()
}

fn new_ca(tenant: &str, mesh: &str) -> SealedCa {
    MeshCa::generate(tenant, mesh, OffsetDateTime::now_utc())
        .unwrap()
        .seal(tenant, mesh, &kek())
        .unwrap()
}

async fn put_mesh(s: &Store, tenant: &str, mesh: &str, ca: &SealedCa) {
    let spec = Spec::parse(Kind::Mesh, json!({})).unwrap();
    s.put_mesh_with_ca(tenant, mesh, &spec, &WriteOptions::default(), ca)
        .await
        .unwrap();
}

async fn setup(backend: Backend) -> Option<(Store, switchboard_store::testing::TestDb)> {
    let (s, db) = store(backend).await?;
    s.create_tenant("acme", &json!({}), false).await.unwrap();
    Some((s, db))
}

async fn a_mesh_is_created_with_its_ca(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let ca = new_ca("acme", "prod");
    let before = s.revision("acme").await.unwrap();
    put_mesh(&s, "acme", "prod", &ca).await;
    // One write: the mesh and its CA at the same revision.
    assert_eq!(s.revision("acme").await.unwrap(), before + 1);
    let active = s.signing_ca("acme", "prod").await.unwrap().unwrap();
    assert_eq!(active.ca, ca);
    assert_eq!(active.state, CaState::Active);
    let bundle = s.trust_bundle("acme", "prod").await.unwrap();
    assert_eq!(bundle.signer_id, ca.id);
    assert_eq!(bundle.roots_pem, vec![ca.root_pem.clone()]);
    let snap = s.mesh_snapshot("acme", "prod").await.unwrap();
    assert_eq!(snap.trust, bundle);
    // The stored key is the sealed one and opens with the KEK for this mesh only.
    let back = MeshCa::unseal(active.sealed(), &kek()).unwrap();
    assert_eq!(back.id(), ca.id);

    // Replacing the mesh keeps its CA; a CA offered with the write is not used.
    put_mesh(&s, "acme", "prod", &new_ca("acme", "prod")).await;
    assert_eq!(s.signing_ca("acme", "prod").await.unwrap().unwrap().ca, ca);

    // A dry run writes no CA.
    let spec = Spec::parse(Kind::Mesh, json!({})).unwrap();
    let dry = WriteOptions {
        dry_run: true,
        ..Default::default()
    };
    s.put_mesh_with_ca("acme", "dry", &spec, &dry, &new_ca("acme", "dry"))
        .await
        .unwrap();
    assert!(s.list_cas("acme", "dry").await.unwrap().is_empty());
}
both_backends!(
    a_mesh_is_created_with_its_ca_,
    a_mesh_is_created_with_its_ca
);

async fn meshes_without_a_ca_get_one_once(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let spec = Spec::parse(Kind::Mesh, json!({})).unwrap();
    s.put_spec("acme", "", "old", &spec, &WriteOptions::default())
        .await
        .unwrap();
    assert!(s.signing_ca("acme", "old").await.unwrap().is_none());
    assert!(s.trust_bundle("acme", "old").await.unwrap().is_empty());
    // Several replicas racing to create it: one wins, all see the winner.
    let attempts: Vec<_> = (0..4).map(|_| new_ca("acme", "old")).collect();
    let results = futures_join(&s, &attempts).await;
    let winner = results[0].clone();
    assert!(results.iter().all(|r| *r == winner));
    assert!(attempts.contains(&winner.ca));
    assert_eq!(s.list_cas("acme", "old").await.unwrap().len(), 1);
    // Idempotent: the revision does not move when the CA exists.
    let rev = s.revision("acme").await.unwrap();
    s.create_ca_if_missing("acme", "old", &new_ca("acme", "old"))
        .await
        .unwrap();
    assert_eq!(s.revision("acme").await.unwrap(), rev);
    // No mesh, no CA.
    assert!(matches!(
        s.create_ca_if_missing("acme", "nope", &new_ca("acme", "nope"))
            .await,
        Err(StoreError::NotFound { what: "mesh", .. })
    ));
}
both_backends!(
    meshes_without_a_ca_get_one_once_,
    meshes_without_a_ca_get_one_once
);

async fn futures_join(s: &Store, cas: &[SealedCa]) -> Vec<switchboard_store::StoredCa> {
    let tasks: Vec<_> = cas
        .iter()
        .cloned()
        .map(|ca| {
            let s = s.clone();
            tokio::spawn(async move { s.create_ca_if_missing("acme", "old", &ca).await })
        })
        .collect();
    let mut out = vec![];
    for t in tasks {
        out.push(t.await.unwrap().unwrap());
    }
    out
}

async fn rotation_steps(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    let old = new_ca("acme", "prod");
    put_mesh(&s, "acme", "prod", &old).await;
    let mut notices = s.subscribe();

    // Start: the new CA signs, both roots are trusted.
    let new = new_ca("acme", "prod");
    let until = 4_000_000_000_000; // far ahead
    let rev = s.revision("acme").await.unwrap();
    let active = s
        .start_ca_rotation("acme", "prod", &new, until)
        .await
        .unwrap();
    assert_eq!(active.ca, new);
    let rev2 = s.revision("acme").await.unwrap();
    assert_eq!(rev2, rev + 1);
    let changes = s.changes_since("acme", rev, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].kind, changes[0].name.as_str()),
        (Kind::Mesh, "prod")
    );
    loop {
        match notices.recv().await.unwrap() {
            Notice::Committed { tenant, revision } if tenant == "acme" && revision == rev2 => break,
            _ => {}
        }
    }
    let bundle = s.trust_bundle("acme", "prod").await.unwrap();
    assert_eq!(bundle.signer_id, new.id);
    assert_eq!(
        bundle.roots_pem,
        vec![new.root_pem.clone(), old.root_pem.clone()]
    );
    assert_eq!(s.mesh_snapshot("acme", "prod").await.unwrap().trust, bundle);
    let cas = s.list_cas("acme", "prod").await.unwrap();
    assert_eq!(cas[1].state, CaState::Retiring);
    assert_eq!(cas[1].overlap_until, Some(until));

    // While rotating: no second rotation, no upload.
    let third = new_ca("acme", "prod");
    assert!(matches!(
        s.start_ca_rotation("acme", "prod", &third, until).await,
        Err(StoreError::CaConflict(_))
    ));
    assert!(matches!(
        s.replace_ca("acme", "prod", &third).await,
        Err(StoreError::CaConflict(_))
    ));
    // Completing before the overlap ends needs force; a refused step writes nothing.
    assert!(matches!(
        s.complete_ca_rotation("acme", "prod", false).await,
        Err(StoreError::CaOverlap { until: u }) if u == until
    ));
    assert_eq!(s.revision("acme").await.unwrap(), rev2);

    // Abort: back to the old CA only.
    let back = s.abort_ca_rotation("acme", "prod").await.unwrap();
    assert_eq!(back.ca, old);
    assert_eq!(back.overlap_until, None);
    let bundle = s.trust_bundle("acme", "prod").await.unwrap();
    assert_eq!(bundle.signer_id, old.id);
    assert_eq!(bundle.roots_pem, vec![old.root_pem.clone()]);
    assert!(matches!(
        s.abort_ca_rotation("acme", "prod").await,
        Err(StoreError::CaConflict(_))
    ));

    // Rotate again with an overlap already over, and complete without force.
    s.start_ca_rotation("acme", "prod", &new, 0).await.unwrap();
    let removed = s.complete_ca_rotation("acme", "prod", false).await.unwrap();
    assert_eq!(removed.ca, old);
    let bundle = s.trust_bundle("acme", "prod").await.unwrap();
    assert_eq!(bundle.signer_id, new.id);
    assert_eq!(bundle.roots_pem, vec![new.root_pem.clone()]);
    assert!(matches!(
        s.complete_ca_rotation("acme", "prod", true).await,
        Err(StoreError::CaConflict(_))
    ));

    // Forced completion before the overlap.
    s.start_ca_rotation("acme", "prod", &third, until)
        .await
        .unwrap();
    s.complete_ca_rotation("acme", "prod", true).await.unwrap();
    assert_eq!(
        s.trust_bundle("acme", "prod").await.unwrap().roots_pem,
        vec![third.root_pem.clone()]
    );

    // Replacing (an upload) when no rotation runs.
    let uploaded = new_ca("acme", "prod");
    s.replace_ca("acme", "prod", &uploaded).await.unwrap();
    let cas = s.list_cas("acme", "prod").await.unwrap();
    assert_eq!(cas.len(), 1);
    assert_eq!(cas[0].ca, uploaded);
    // The same CA again is no write.
    let rev = s.revision("acme").await.unwrap();
    assert_eq!(
        s.replace_ca("acme", "prod", &uploaded).await.unwrap().ca,
        uploaded
    );
    assert_eq!(s.revision("acme").await.unwrap(), rev);
}
both_backends!(rotation_steps_, rotation_steps);

async fn cas_go_with_their_mesh_and_tenant(b: Backend) {
    let Some((s, _db)) = setup(b).await else {
        return;
    };
    put_mesh(&s, "acme", "prod", &new_ca("acme", "prod")).await;
    put_mesh(&s, "acme", "staging", &new_ca("acme", "staging")).await;
    s.delete(&ResourceKey::mesh("acme", "prod"), &WriteOptions::default())
        .await
        .unwrap();
    assert!(s.list_cas("acme", "prod").await.unwrap().is_empty());
    assert_eq!(s.list_cas("acme", "staging").await.unwrap().len(), 1);
    // A mesh re-created under the same name gets a new CA, not the old one.
    let fresh = new_ca("acme", "prod");
    put_mesh(&s, "acme", "prod", &fresh).await;
    assert_eq!(
        s.signing_ca("acme", "prod").await.unwrap().unwrap().ca,
        fresh
    );

    let (ids, one) = s.ca_key_check().await.unwrap();
    assert_eq!(ids, vec![kek().id().to_owned()]);
    assert!(MeshCa::unseal(one.unwrap().sealed(), &kek()).is_ok());

    s.delete_tenant("acme", false).await.unwrap();
    let (ids, one) = s.ca_key_check().await.unwrap();
    assert!(ids.is_empty() && one.is_none());
}
both_backends!(
    cas_go_with_their_mesh_and_tenant_,
    cas_go_with_their_mesh_and_tenant
);
