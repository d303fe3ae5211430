//! The tenant's `streams` quota, and the bound on the store reads that streams without
//! verified credentials can cause, over real gRPC.

use std::time::Duration;

use switchboard_store::{CredentialKind, QuotaOverrides};
use switchboard_xds_server::testing::{AdsClient, DeltaClient, node, secret, start_with};
use switchboard_xds_server::{LookupLimits, XdsConfig};
use tonic::Code;

use crate::common::*;

/// A delta stream like [`open`].
async fn open_delta(
    url: &str,
    node: switchboard_xds_proto::Node,
    token: Option<&str>,
) -> Result<DeltaClient, tonic::Status> {
    let mut client = DeltaClient::connect(url, node, token).await?;
    client.subscribe(CDS, &[], &[]).await?;
    client.recv_and_ack().await?;
    Ok(client)
}

/// Opens a stream as `node` with `token` and asks for clusters: the first response, or the
/// status that ended the stream.
async fn open(
    url: &str,
    node: switchboard_xds_proto::Node,
    token: Option<&str>,
) -> Result<AdsClient, tonic::Status> {
    let mut client = AdsClient::connect(url, node, token).await?;
    client.subscribe(CDS, &[]).await?;
    client.recv_and_ack(&[]).await?;
    Ok(client)
}

const STREAMS_QUOTA: &str = "tenant \"acme\" has reached its quota of 2 concurrent xDS streams \
    (quota streams); close streams or ask the platform admin to raise it";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_quota() {
    let env = env().await;
    let url = env.server.url();
    env.store
        .set_tenant_quotas(
            "acme",
            &QuotaOverrides {
                streams: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let first = open(&url, node("acme", "prod", "a"), Some(&env.token))
        .await
        .unwrap();
    let _second = open(&url, node("acme", "dev", "b"), Some(&env.token))
        .await
        .unwrap();
    // A third stream of the tenant, authenticated or anonymous, any mesh: refused.
    for (mesh, token) in [("prod", Some(env.token.as_str())), ("open", None)] {
        let status = open(&url, node("acme", mesh, "c"), token)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(status.message(), STREAMS_QUOTA);
    }
    // Delta streams count the same.
    let status = open_delta(&url, node("acme", "prod", "c"), Some(&env.token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), STREAMS_QUOTA);
    // Another tenant has its own quota.
    let globex = secret(&env.store, "globex", CredentialKind::ProxyToken, None)
        .await
        .unwrap();
    let _g = open(&url, node("globex", "prod", "g"), Some(&globex))
        .await
        .unwrap();

    // A closed stream gives its place back (the server notices the close shortly after).
    drop(first);
    let mut admitted = None;
    for _ in 0..100 {
        match open(&url, node("acme", "prod", "c"), Some(&env.token)).await {
            Ok(client) => {
                admitted = Some(client);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let _third = admitted.expect("the closed stream's place was never given back");

    // A raised quota applies to the next stream.
    env.store
        .set_tenant_quotas(
            "acme",
            &QuotaOverrides {
                streams: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let _fourth = open_delta(&url, node("acme", "open", "d"), None)
        .await
        .unwrap();
    let status = open(&url, node("acme", "open", "e"), None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("quota of 3 concurrent xDS streams")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_streams_cause_a_bounded_number_of_store_reads() {
    let env = env().await;
    // Five reads, and (for the length of the test) no more.
    let burst = 5;
    let server = start_with(
        env.store.clone(),
        XdsConfig {
            debounce: Duration::from_millis(5),
            register_sidecars: false,
            unverified_lookups: LookupLimits {
                per_second: 0.001,
                burst,
                negative_ttl: Duration::from_secs(600),
                negative_max: 1000,
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let url = server.url();
    // A token's stream loads acme/open (tokens are checked before any mesh is read).
    let _holder = open(&url, node("acme", "open", "holder"), Some(&env.token))
        .await
        .unwrap();
    let before = env.store.mesh_reads();

    let mut missing = vec![];
    let mut busy = 0;
    for i in 0..60 {
        let (tenant, mesh) = if i % 2 == 0 {
            ("acme".to_owned(), format!("random-{i}"))
        } else {
            (format!("nobody-{i}"), "prod".to_owned())
        };
        let status = open(&url, node(&tenant, &mesh, "n"), None)
            .await
            .unwrap_err();
        match status.code() {
            // Read and found missing: told like any anonymous refusal.
            Code::Unauthenticated => missing.push((tenant, mesh)),
            Code::ResourceExhausted => {
                assert_eq!(
                    status.message(),
                    "too many streams without verified credentials are naming meshes not \
                     loaded on this server (at most 0.001 such lookups per second): retry \
                     later, or authenticate with a proxy token"
                );
                busy += 1;
            }
            _ => panic!("unexpected {status:?}"),
        }
    }
    assert_eq!(missing.len(), burst as usize);
    assert_eq!(busy, 60 - burst as usize);
    let reads = env.store.mesh_reads() - before;
    assert!(
        reads <= u64::from(burst),
        "{reads} mesh reads for 60 streams"
    );

    // A name found missing is answered from memory, without a read.
    for (tenant, mesh) in &missing {
        let status = open(&url, node(tenant, mesh, "again"), None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // A loaded open mesh costs nothing to join: admitted although the budget is spent.
    let _anonymous = open(&url, node("acme", "open", "anon"), None)
        .await
        .unwrap();
    // Streams with a token are not limited by it.
    let _authenticated = open(&url, node("acme", "prod", "auth"), Some(&env.token))
        .await
        .unwrap();
    // Only that last stream's mesh (acme/prod, not loaded on this server) was read since.
    let reads = env.store.mesh_reads() - before;
    assert!(
        reads <= u64::from(burst) + 1,
        "{reads} mesh reads after the repeats"
    );
}
