//! Admission: tokens, anonymous clients, malformed nodes and limits.

use serde_json::json;
use switchboard_model::Kind;
use switchboard_store::CredentialKind;
use switchboard_xds_server::testing::{AdsClient, node, secret};
use tonic::Code;

use crate::common::*;

/// Opens a stream as `node` with `token`, sends one CDS request and returns how it ended.
async fn refused(
    env: &Env,
    node: switchboard_xds_proto::Node,
    token: Option<&str>,
) -> tonic::Status {
    let mut client = match AdsClient::connect(&env.server.url(), node, token).await {
        Ok(c) => c,
        Err(status) => return status,
    };
    client.subscribe(CDS, &[]).await.unwrap();
    match client.recv().await {
        Ok(r) => panic!("admitted: {r:?}"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token() {
    let env = env().await;
    let status = refused(&env, node("acme", "prod", "a"), None).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("send a proxy token in the authorization metadata")
    );
    assert!(status.message().contains("allowUnauthenticatedXds"));
    // An anonymous client cannot tell a missing mesh or tenant from a protected one.
    for (tenant, mesh) in [("acme", "nope"), ("nobody", "prod")] {
        let other = refused(&env, node(tenant, mesh, "a"), None).await;
        assert_eq!(other.code(), Code::Unauthenticated);
        assert_eq!(other.message(), status.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_of_an_open_mesh_are_admitted() {
    let env = env().await;
    env.put("open", Kind::Service, "web", json!({"port": 80}))
        .await;
    let mut client = AdsClient::connect(&env.server.url(), node("acme", "open", "grpc-js"), None)
        .await
        .unwrap();
    client.subscribe(CDS, &[]).await.unwrap();
    assert_eq!(names(&client.recv_and_ack(&[]).await.unwrap()), ["web"]);
    let status = env.server.xds.registry().node("acme", "open", "grpc-js");
    assert!(!status[0].authenticated);
    // Closing the mesh ends anonymous streams.
    env.put("", Kind::Mesh, "open", json!({})).await;
    let ended = client.ended().await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tenant() {
    let env = env().await;
    let globex = secret(&env.store, "globex", CredentialKind::ProxyToken, None)
        .await
        .unwrap();
    let status = refused(&env, node("acme", "prod", "a"), Some(&globex)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("tenant mismatch"), "{status:?}");
    // The same answer for a tenant that does not exist.
    let missing = refused(&env, node("nobody", "prod", "a"), Some(&globex)).await;
    assert_eq!(missing.code(), Code::PermissionDenied);
    assert!(missing.message().contains("tenant mismatch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_mesh() {
    let env = env().await;
    let dev_only = secret(&env.store, "acme", CredentialKind::ProxyToken, Some("dev"))
        .await
        .unwrap();
    let status = refused(&env, node("acme", "prod", "a"), Some(&dev_only)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("mesh mismatch"), "{status:?}");
    // The right mesh is admitted.
    let mut ok = AdsClient::connect(&env.server.url(), node("acme", "dev", "a"), Some(&dev_only))
        .await
        .unwrap();
    ok.subscribe(CDS, &[]).await.unwrap();
    assert!(ok.recv().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens() {
    let env = env().await;
    let status = refused(&env, node("acme", "prod", "a"), Some("sbp_made_up")).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let api_key = secret(&env.store, "acme", CredentialKind::ApiKey, None)
        .await
        .unwrap();
    let status = refused(&env, node("acme", "prod", "a"), Some(&api_key)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("API key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_mesh_is_not_found_after_auth() {
    let env = env().await;
    let status = refused(&env, node("acme", "nope", "a"), Some(&env.token)).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_node_id() {
    let env = env().await;
    let bad = switchboard_xds_proto::Node {
        id: "envoy-1".to_owned(),
        ..Default::default()
    };
    let status = refused(&env, bad, Some(&env.token)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("tenants/{tenant}/meshes/{mesh}/nodes/{name}"),
        "{status:?}"
    );
}

/// Subscribing to `names` of EDS ends that stream with `code` and a message containing `says`;
/// another stream still gets updates.
async fn ends_only_that_stream(names: &[&str], code: Code, says: &str) {
    let env = env().await;
    let (mut bystander, _) = env.cds_client("prod", "b").await;
    let mut offender = env.client("prod", "o").await;
    offender.subscribe(EDS, names).await.unwrap();
    let status = offender.ended().await;
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{status:?}");
    env.put("prod", Kind::Service, "shop", json!({"port": 80}))
        .await;
    let r = bystander.recv_and_ack(&[]).await.unwrap();
    assert_eq!(crate::common::names(&r), ["pay", "shop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_names_ends_only_that_stream() {
    let names: Vec<String> = (0..10_001).map(|i| format!("svc-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    ends_only_that_stream(&names, Code::InvalidArgument, "10000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_request_ends_only_that_stream() {
    // One 5 MiB resource name: past the server's 4 MiB message limit.
    let name = "x".repeat(5 << 20);
    ends_only_that_stream(&[name.as_str()], Code::OutOfRange, "too large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_metadata() {
    let env = env().await;
    let bad = switchboard_xds_server::testing::with_metadata(
        node("acme", "prod", "s"),
        &[("role", "sidecar"), ("service", "pay")],
    );
    let status = refused(&env, bad, Some(&env.token)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("app_port"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_ends_its_streams_only() {
    let env = env().await;
    let leaked = env
        .store
        .create_credential("acme", CredentialKind::ProxyToken, None, "leaked")
        .await
        .unwrap();
    let mut doomed = Vec::new();
    for name in ["r1", "r2"] {
        let mut c = AdsClient::connect(
            &env.server.url(),
            node("acme", "prod", name),
            Some(&leaked.secret),
        )
        .await
        .unwrap();
        c.subscribe(CDS, &[]).await.unwrap();
        c.recv_and_ack(&[]).await.unwrap();
        doomed.push(c);
    }
    let (mut kept, _) = env.cds_client("prod", "keeps").await;

    env.store
        .revoke_credential("acme", CredentialKind::ProxyToken, &leaked.credential.id)
        .await
        .unwrap();
    for c in &mut doomed {
        let status = c.ended().await;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("revoked"), "{status:?}");
    }
    // The other token's stream is untouched: it still gets what is written next.
    put(
        &env.store,
        "acme",
        "prod",
        Kind::Service,
        "after-revoke",
        json!({"port": 9090}),
    )
    .await;
    let r = kept.recv().await.unwrap();
    assert!(
        r.resources.len() >= 2,
        "the kept stream got the new cluster: {r:?}"
    );
    // And the revoked token cannot open a new one.
    let status = refused(&env, node("acme", "prod", "r3"), Some(&leaked.secret)).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

/// gRFC A97: a proxy token issued as a JWT admits its node while its signature and `exp`
/// verify and its credential is not revoked; its stream ends when the credential is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_proxy_tokens() {
    use std::time::Duration;
    use switchboard_store::jwt::{ISSUER, ProxyClaims, ProxyJwtKey};
    let env = env().await;
    // No key configured: no JWT can verify.
    let stranger = ProxyJwtKey::new(&[1; 32]).unwrap();
    let claims = |sub: &str, tenant: &str, mesh: Option<&str>, exp: i64| ProxyClaims {
        iss: ISSUER.into(),
        sub: sub.into(),
        iat: exp - 3600,
        exp,
        tenant: tenant.into(),
        mesh: mesh.map(str::to_owned),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let unverifiable = stranger
        .sign(&claims("x", "acme", None, now + 600))
        .unwrap();
    let status = refused(&env, node("acme", "prod", "a"), Some(&unverifiable)).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let key = ProxyJwtKey::new(&[2; 32]).unwrap();
    env.store.set_proxy_jwt_key(key.clone());
    let (jwt, _) = env
        .store
        .create_proxy_jwt("acme", Some("prod"), "grpc", Duration::from_secs(600))
        .await
        .unwrap();
    let mut client = AdsClient::connect(
        &env.server.url(),
        node("acme", "prod", "jwt-1"),
        Some(&jwt.secret),
    )
    .await
    .unwrap();
    client.subscribe(CDS, &[]).await.unwrap();
    assert_eq!(names(&client.recv_and_ack(&[]).await.unwrap()), ["pay"]);

    let id = jwt.credential.id.as_str();
    let cases = [
        (
            "expired",
            key.sign(&claims(id, "acme", Some("prod"), now - 5))
                .unwrap(),
            Code::Unauthenticated,
            "expired",
        ),
        (
            "bad signature",
            stranger
                .sign(&claims(id, "acme", Some("prod"), now + 600))
                .unwrap(),
            Code::Unauthenticated,
            "signature",
        ),
        (
            "tampered",
            format!("{}x", jwt.secret),
            Code::Unauthenticated,
            "signature",
        ),
        (
            "unknown id",
            key.sign(&claims("0000", "acme", Some("prod"), now + 600))
                .unwrap(),
            Code::Unauthenticated,
            "revoked",
        ),
        (
            "claims other than the row's",
            key.sign(&claims(id, "acme", None, now + 600)).unwrap(),
            Code::Unauthenticated,
            "revoked",
        ),
    ];
    for (what, token, code, says) in cases {
        let status = refused(&env, node("acme", "prod", "a"), Some(&token)).await;
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(says), "{what}: {status:?}");
        assert!(
            !status.message().contains(&token),
            "{what}: the token is not echoed"
        );
    }
    // The JWT of another tenant or mesh is refused like an opaque token would be.
    let (globex, _) = env
        .store
        .create_proxy_jwt("globex", None, "", Duration::from_secs(600))
        .await
        .unwrap();
    let status = refused(&env, node("acme", "prod", "a"), Some(&globex.secret)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("tenant mismatch"), "{status:?}");
    let status = refused(&env, node("acme", "dev", "a"), Some(&jwt.secret)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("mesh mismatch"), "{status:?}");

    // Revoked by id: the open stream ends and the JWT opens no new one.
    env.store
        .revoke_credential("acme", CredentialKind::ProxyToken, id)
        .await
        .unwrap();
    let ended = client.ended().await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let status = refused(&env, node("acme", "prod", "a"), Some(&jwt.secret)).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
}
