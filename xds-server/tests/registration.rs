//! Sidecars registering themselves as endpoints of their service, over real gRPC on
//! 127.0.0.1, against a real store of each backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_model::{Kind, Spec};
use switchboard_runtime::eventually;
use switchboard_store::testing::{TestDb, store};
use switchboard_store::{
    Backend, CredentialKind, ResourceKey, Store, StoreError, StoredResource, WriteOptions,
    both_backends,
};
use switchboard_xds_proto::pb::envoy::config::core::v3::{
    Address, SocketAddress, address, socket_address,
};
use switchboard_xds_proto::pb::envoy::config::endpoint::v3::lb_endpoint;
use switchboard_xds_proto::{ClusterLoadAssignment, Node, unpack};
use switchboard_xds_server::testing::{
    AdsClient, TestServer, node, secret, start_registering, with_metadata,
};

const CDS: &str = switchboard_xds_proto::type_url::CLUSTER;
const EDS: &str = switchboard_xds_proto::type_url::CLUSTER_LOAD_ASSIGNMENT;

/// The grace period of most tests.
const GRACE: Duration = Duration::from_millis(200);

struct Env {
    store: Store,
    server: TestServer,
    /// A proxy token of `acme`.
    token: String,
    _db: TestDb,
}

/// Tenant `acme` with meshes `prod` and `open` (anonymous xDS allowed), each with service
/// `pay`, and a server registering sidecars with `grace`. `None` when the backend is skipped.
async fn env(backend: Backend, grace: Duration) -> Option<Env> {
    let (store, db) = store(backend).await?;
    store
        .create_tenant("acme", &json!({}), false)
        .await
        .unwrap();
    put(&store, "", Kind::Mesh, "prod", json!({}))
        .await
        .unwrap();
    put(
        &store,
        "",
        Kind::Mesh,
        "open",
        json!({"allowUnauthenticatedXds": true}),
    )
    .await
    .unwrap();
    for mesh in ["prod", "open"] {
        put(&store, mesh, Kind::Service, "pay", json!({"port": 8080}))
            .await
            .unwrap();
    }
    let token = secret(&store, "acme", CredentialKind::ProxyToken, None)
        .await
        .unwrap();
    let server = start_registering(store.clone(), grace).await.unwrap();
    Some(Env {
        store,
        server,
        token,
        _db: db,
    })
}

/// Writes a resource of `acme` the way the REST API does.
async fn put(
    store: &Store,
    mesh: &str,
    kind: Kind,
    name: &str,
    spec: Value,
) -> Result<StoredResource, StoreError> {
    put_in(store, "acme", mesh, kind, name, spec).await
}

/// Writes the endpoint a sidecar `node` of `prod/pay` at `address` registered, as if on a
/// replica that has since stopped: nobody holds its stream.
async fn put_orphan(store: &Store, node: &str, address: &str) {
    put(
        store,
        "prod",
        Kind::Endpoint,
        &format!("sidecar-{node}"),
        json!({"service": "pay", "address": address, "port": 15006, "node": node, "mtls": true}),
    )
    .await
    .unwrap();
}

/// Writes a resource of `tenant` the way the REST API does.
async fn put_in(
    store: &Store,
    tenant: &str,
    mesh: &str,
    kind: Kind,
    name: &str,
    spec: Value,
) -> Result<StoredResource, StoreError> {
    let parsed = Spec::parse(kind, spec).unwrap();
    parsed.validate().unwrap();
    store
        .put_spec(tenant, mesh, name, &parsed, &WriteOptions::default())
        .await
}

fn sidecar(mesh: &str, name: &str, service: &str, extra: &[(&str, &str)]) -> Node {
    let mut fields = vec![
        ("role", "sidecar"),
        ("service", service),
        ("app_port", "8080"),
    ];
    fields.extend_from_slice(extra);
    with_metadata(node("acme", mesh, name), &fields)
}

impl Env {
    /// Connects `node` with `token` and waits until it is admitted (its first CDS response).
    async fn connect_as(&self, node: Node, token: Option<&str>) -> AdsClient {
        let mut client = AdsClient::connect(&self.server.url(), node, token)
            .await
            .unwrap();
        client.subscribe(CDS, &[]).await.unwrap();
        client.recv_and_ack(&[]).await.unwrap();
        client
    }

    async fn connect(&self, node: Node) -> AdsClient {
        self.connect_as(node, Some(&self.token)).await
    }

    /// Connects sidecar `name` of `service` in `mesh` and waits until its endpoint is
    /// registered.
    async fn sidecar_registered(
        &self,
        mesh: &str,
        name: &str,
        service: &str,
    ) -> (AdsClient, StoredResource) {
        let client = self.connect(sidecar(mesh, name, service, &[])).await;
        let stored = self.registered(mesh, &format!("sidecar-{name}")).await;
        (client, stored)
    }

    async fn endpoint(&self, mesh: &str, name: &str) -> Option<StoredResource> {
        match self
            .store
            .get(&ResourceKey::new("acme", mesh, Kind::Endpoint, name))
            .await
        {
            Ok(r) => Some(r),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits for the endpoint to exist.
    async fn registered(&self, mesh: &str, name: &str) -> StoredResource {
        eventually(&format!("endpoint {name} registered"), || async {
            self.endpoint(mesh, name).await
        })
        .await
    }

    /// Connects a sidecar of tenant `globex` (created here), waits for its endpoint, closes
    /// the stream and waits `grace` for the endpoint to go.
    async fn marker_leaves(&self, grace: Duration) {
        self.store
            .create_tenant("globex", &json!({}), false)
            .await
            .unwrap();
        put_in(&self.store, "globex", "", Kind::Mesh, "prod", json!({}))
            .await
            .unwrap();
        put_in(
            &self.store,
            "globex",
            "prod",
            Kind::Service,
            "pay",
            json!({"port": 8080}),
        )
        .await
        .unwrap();
        let token = secret(&self.store, "globex", CredentialKind::ProxyToken, None)
            .await
            .unwrap();
        let node = with_metadata(
            node("globex", "prod", "marker"),
            &[
                ("role", "sidecar"),
                ("service", "pay"),
                ("app_port", "8080"),
            ],
        );
        let marker = self.connect_as(node, Some(&token)).await;
        let key = ResourceKey::new("globex", "prod", Kind::Endpoint, "sidecar-marker");
        eventually("the marker registered", || async {
            self.store.get(&key).await.ok()
        })
        .await;
        let left = tokio::time::Instant::now();
        drop(marker);
        eventually("the marker deregistered", || async {
            matches!(self.store.get(&key).await, Err(StoreError::NotFound { .. })).then_some(())
        })
        .await;
        assert!(left.elapsed() >= grace, "not before its grace period");
    }

    /// Waits for the endpoint to be gone.
    async fn deregistered(&self, mesh: &str, name: &str) {
        eventually(&format!("endpoint {name} deregistered"), || async {
            self.endpoint(mesh, name).await.is_none().then_some(())
        })
        .await
    }
}

/// The `address:port` of every endpoint of a ClusterLoadAssignment response.
fn eds_addresses(response: &switchboard_xds_proto::DiscoveryResponse) -> Vec<String> {
    let mut out = Vec::new();
    for any in &response.resources {
        let cla: ClusterLoadAssignment = unpack(any).unwrap();
        for group in &cla.endpoints {
            for lb in &group.lb_endpoints {
                let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                    continue;
                };
                if let Some(Address {
                    address:
                        Some(address::Address::SocketAddress(SocketAddress {
                            address,
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                            ..
                        })),
                }) = &ep.address
                {
                    out.push(format!("{address}:{port}"));
                }
            }
        }
    }
    out.sort();
    out
}

async fn a_sidecar_registers_and_leaves_after_the_grace_period(backend: Backend) {
    let Some(env) = env(backend, GRACE).await else {
        return;
    };
    // Another client watches the service's endpoints.
    let mut watcher = AdsClient::connect(
        &env.server.url(),
        node("acme", "prod", "watcher"),
        Some(&env.token),
    )
    .await
    .unwrap();
    watcher.subscribe(EDS, &["pay"]).await.unwrap();
    let first = watcher.recv_and_ack(&["pay"]).await.unwrap();
    assert_eq!(eds_addresses(&first), Vec::<String>::new());

    let (client, stored) = env.sidecar_registered("prod", "pay-1", "pay").await;
    assert_eq!(
        stored.spec,
        json!({
            "service": "pay",
            "address": "127.0.0.1",
            "port": 15006,
            "weight": 1,
            "locality": {"region": "", "zone": ""},
            "priority": 0,
            "health": "healthy",
            "node": "pay-1",
            "mtls": true,
        })
    );
    let update = watcher.recv_and_ack(&["pay"]).await.unwrap();
    assert_eq!(eds_addresses(&update), ["127.0.0.1:15006"]);

    drop(client);
    env.deregistered("prod", "sidecar-pay-1").await;
    let update = watcher.recv_and_ack(&["pay"]).await.unwrap();
    assert_eq!(eds_addresses(&update), Vec::<String>::new());
}
both_backends!(
    a_sidecar_registers_and_leaves_after_the_grace_period,
    a_sidecar_registers_and_leaves_after_the_grace_period
);

async fn reconnecting_within_the_grace_period_changes_nothing(backend: Backend) {
    // Long enough for a reconnect on 127.0.0.1; the test then waits it out.
    let grace = Duration::from_secs(2);
    let Some(env) = env(backend, grace).await else {
        return;
    };
    let node = sidecar("prod", "pay-1", "pay", &[("inbound_port", "15010")]);
    let client = env.connect(node.clone()).await;
    let stored = env.registered("prod", "sidecar-pay-1").await;
    let revision = env.store.revision("acme").await.unwrap();

    drop(client);
    let client = env.connect(node.clone()).await;
    // A second stream of the same node, closed again: the node still has one.
    let second = env.connect(node).await;
    drop(second);
    // A sidecar of another tenant (whose writes leave acme's revision alone) leaves after
    // all that: once its endpoint is gone, a grace period started by any of the above would
    // have ended too (one task, taking events in order and grace periods by deadline).
    env.marker_leaves(grace).await;

    assert_eq!(
        env.endpoint("prod", "sidecar-pay-1").await.as_ref(),
        Some(&stored),
        "the endpoint is neither rewritten nor deleted"
    );
    assert_eq!(
        env.store.revision("acme").await.unwrap(),
        revision,
        "no revision bump"
    );
    drop(client);
    env.deregistered("prod", "sidecar-pay-1").await;
}
both_backends!(
    reconnecting_within_the_grace_period_changes_nothing,
    reconnecting_within_the_grace_period_changes_nothing
);

async fn anonymous_sidecars_do_not_register(backend: Backend) {
    let Some(env) = env(backend, GRACE).await else {
        return;
    };
    let anonymous = env
        .connect_as(sidecar("open", "anon-1", "pay", &[]), None)
        .await;
    // Registration is one task taking streams in order: once a later stream of the same
    // mesh is registered, the anonymous one would have been too.
    let (_authenticated, _) = env.sidecar_registered("open", "known-1", "pay").await;
    assert!(env.endpoint("open", "sidecar-anon-1").await.is_none());
    drop(anonymous);
}
both_backends!(
    anonymous_sidecars_do_not_register,
    anonymous_sidecars_do_not_register
);

async fn an_endpoint_the_user_replaced_is_kept(backend: Backend) {
    let Some(env) = env(backend, GRACE).await else {
        return;
    };
    let (client, _) = env.sidecar_registered("prod", "pay-1", "pay").await;
    let mine = put(
        &env.store,
        "prod",
        Kind::Endpoint,
        "sidecar-pay-1",
        json!({"service": "pay", "address": "10.0.0.9", "port": 9000}),
    )
    .await
    .unwrap();
    // A second sidecar leaves after the first: once its endpoint is gone, the first one's
    // grace period has ended too.
    let (marker, _) = env.sidecar_registered("prod", "pay-2", "pay").await;
    drop(client);
    drop(marker);
    env.deregistered("prod", "sidecar-pay-2").await;
    assert_eq!(
        env.endpoint("prod", "sidecar-pay-1").await.as_ref(),
        Some(&mine)
    );
}
both_backends!(
    an_endpoint_the_user_replaced_is_kept,
    an_endpoint_the_user_replaced_is_kept
);

async fn metadata_address_and_locality_are_used(backend: Backend) {
    let Some(env) = env(backend, GRACE).await else {
        return;
    };
    let _client = env
        .connect(sidecar(
            "prod",
            "Pay_1.Example",
            "pay",
            &[
                ("address", "10.1.2.3"),
                ("region", "eu-west"),
                ("zone", "eu-west-1a"),
            ],
        ))
        .await;
    let name = switchboard_xds_server::endpoint_name("Pay_1.Example");
    assert!(name.starts_with("sidecar-pay-1-example-"), "{name}");
    let stored = env.registered("prod", &name).await;
    assert_eq!(stored.spec["address"], "10.1.2.3");
    assert_eq!(
        stored.spec["locality"],
        json!({"region": "eu-west", "zone": "eu-west-1a"})
    );
}
both_backends!(
    metadata_address_and_locality_are_used,
    metadata_address_and_locality_are_used
);

async fn a_bad_address_is_refused_naming_the_field(backend: Backend) {
    let Some(env) = env(backend, GRACE).await else {
        return;
    };
    let mut client = AdsClient::connect(
        &env.server.url(),
        sidecar("prod", "pay-1", "pay", &[("address", "pay.internal")]),
        Some(&env.token),
    )
    .await
    .unwrap();
    client.subscribe(CDS, &[]).await.unwrap();
    let status = client.ended().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("\"address\"") && status.message().contains("not an IP address"),
        "{status:?}"
    );
}
both_backends!(
    a_bad_address_is_refused_naming_the_field,
    a_bad_address_is_refused_naming_the_field
);

async fn a_sidecar_of_a_missing_service_registers_once_it_exists(backend: Backend) {
    let Some(env) = env(backend, GRACE).await else {
        return;
    };
    let _client = env.connect(sidecar("prod", "cart-1", "cart", &[])).await;
    // Registration is one task taking streams in order (see the anonymous test).
    let (_other, _) = env.sidecar_registered("prod", "pay-1", "pay").await;
    assert!(env.endpoint("prod", "sidecar-cart-1").await.is_none());
    // Creating the service is noticed at once (the periodic retry is 30 s away).
    put(
        &env.store,
        "prod",
        Kind::Service,
        "cart",
        json!({"port": 80}),
    )
    .await
    .unwrap();
    let stored = env.registered("prod", "sidecar-cart-1").await;
    assert_eq!(stored.spec["service"], "cart");
}
both_backends!(
    a_sidecar_of_a_missing_service_registers_once_it_exists,
    a_sidecar_of_a_missing_service_registers_once_it_exists
);

async fn a_deleted_endpoint_of_a_connected_sidecar_comes_back(backend: Backend) {
    let Some(env) = env(backend, GRACE).await else {
        return;
    };
    let (_client, before) = env.sidecar_registered("prod", "pay-1", "pay").await;
    env.store
        .delete(
            &ResourceKey::new("acme", "prod", Kind::Endpoint, "sidecar-pay-1"),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let after = env.registered("prod", "sidecar-pay-1").await;
    assert_eq!(after.spec, before.spec);
    assert!(after.revision > before.revision);
}
both_backends!(
    a_deleted_endpoint_of_a_connected_sidecar_comes_back,
    a_deleted_endpoint_of_a_connected_sidecar_comes_back
);

async fn a_sidecar_that_moved_to_another_replica_keeps_its_endpoint(backend: Backend) {
    let Some(env) = env(backend, GRACE).await else {
        return;
    };
    // Both replicas record their streams in the proxies table, as `switchboard serve` does:
    // a replica's sweep leaves alone what another replica has a stream of.
    let other = start_registering(env.store.clone(), GRACE).await.unwrap();
    let node = sidecar("prod", "pay-1", "pay", &[]);
    let here = env.connect(node.clone()).await;
    let stored = env.registered("prod", "sidecar-pay-1").await;
    // The node connects to the other replica, which records it in the proxies table.
    let mut there = AdsClient::connect(&other.url(), node, Some(&env.token))
        .await
        .unwrap();
    there.subscribe(CDS, &[]).await.unwrap();
    there.recv_and_ack(&[]).await.unwrap();
    let replica = other.xds.replica().to_owned();
    eventually("the other replica's proxy row", || async {
        let rows = env
            .store
            .list_proxies("acme", "prod", Some("pay-1"))
            .await
            .unwrap();
        rows.iter().any(|r| r.replica == replica).then_some(())
    })
    .await;
    // The node leaves this replica; a second node leaving after it marks the end of its
    // grace period.
    let (marker, _) = env.sidecar_registered("prod", "pay-2", "pay").await;
    drop(here);
    drop(marker);
    env.deregistered("prod", "sidecar-pay-2").await;
    assert_eq!(
        env.endpoint("prod", "sidecar-pay-1").await.as_ref(),
        Some(&stored),
        "kept, and not rewritten by the other replica"
    );
    // Leaving the other replica too, it goes.
    drop(there);
    env.deregistered("prod", "sidecar-pay-1").await;
}
both_backends!(
    a_sidecar_that_moved_to_another_replica_keeps_its_endpoint,
    a_sidecar_that_moved_to_another_replica_keeps_its_endpoint
);

async fn an_orphaned_endpoint_is_swept(backend: Backend) {
    let Some(env) = env(backend, GRACE).await else {
        return;
    };
    // Registered by a replica that stopped during the node's grace period: nobody holds a
    // stream of `gone-1` and no replica runs its grace period.
    put_orphan(&env.store, "gone-1", "10.0.0.1").await;
    // Endpoints a user manages (no node), even with the sidecar prefix, are never swept.
    let manual = put(
        &env.store,
        "prod",
        Kind::Endpoint,
        "sidecar-manual",
        json!({"service": "pay", "address": "10.0.0.2", "port": 15006}),
    )
    .await
    .unwrap();
    // A connected sidecar's endpoint stays.
    let (_client, connected) = env.sidecar_registered("prod", "pay-1", "pay").await;
    env.deregistered("prod", "sidecar-gone-1").await;
    // A second orphan, written now, is swept as many sweeps later as the first was: by then
    // every sweep that would have taken the others has run. They are as they were.
    put_orphan(&env.store, "gone-2", "10.0.0.3").await;
    env.deregistered("prod", "sidecar-gone-2").await;
    assert_eq!(
        env.endpoint("prod", "sidecar-manual").await.as_ref(),
        Some(&manual)
    );
    assert_eq!(
        env.endpoint("prod", "sidecar-pay-1").await.as_ref(),
        Some(&connected)
    );
}
both_backends!(an_orphaned_endpoint_is_swept, an_orphaned_endpoint_is_swept);
