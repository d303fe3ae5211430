//! Shared set-up: a store with tenants `acme` (meshes `prod`, `dev`, `open`) and `globex`
//! (mesh `prod`), proxy tokens, and a server.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_model::{Kind, Spec};
use switchboard_store::testing::{TestDb, store};
use switchboard_store::{Backend, CredentialKind, ResourceKey, Store, WriteOptions};
use switchboard_translator::XdsResource;
use switchboard_xds_proto::{DiscoveryResponse, ResourceType};
use switchboard_xds_server::testing::{
    AdsClient, TestIssuer, TestServer, node, secret, start, start_with_issuer,
};

pub const CDS: &str = switchboard_xds_proto::type_url::CLUSTER;
pub const EDS: &str = switchboard_xds_proto::type_url::CLUSTER_LOAD_ASSIGNMENT;
pub const LDS: &str = switchboard_xds_proto::type_url::LISTENER;
pub const RDS: &str = switchboard_xds_proto::type_url::ROUTE_CONFIGURATION;

/// How long "nothing arrives" is waited for.
pub const QUIET: Duration = Duration::from_millis(400);

pub struct Env {
    pub store: Store,
    pub server: TestServer,
    /// A proxy token of `acme`, for every mesh.
    pub token: String,
    pub db: TestDb,
}

pub async fn env() -> Env {
    env_with(None).await
}

/// [`env`] with `issuer` as the server's mesh CA.
pub async fn env_with(issuer: Option<Arc<TestIssuer>>) -> Env {
    let (store, db) = store(Backend::Sqlite).await.expect("SQLite store");
    for tenant in ["acme", "globex"] {
        store
            .create_tenant(tenant, &json!({}), false)
            .await
            .unwrap();
    }
    put(&store, "acme", "", Kind::Mesh, "prod", json!({})).await;
    put(&store, "acme", "", Kind::Mesh, "dev", json!({})).await;
    put(
        &store,
        "acme",
        "",
        Kind::Mesh,
        "open",
        json!({"allowUnauthenticatedXds": true}),
    )
    .await;
    put(&store, "globex", "", Kind::Mesh, "prod", json!({})).await;
    put(
        &store,
        "acme",
        "prod",
        Kind::Service,
        "pay",
        json!({"port": 8080}),
    )
    .await;
    let token = secret(&store, "acme", CredentialKind::ProxyToken, None)
        .await
        .unwrap();
    let server = match issuer {
        Some(issuer) => start_with_issuer(store.clone(), issuer).await.unwrap(),
        None => start(store.clone()).await.unwrap(),
    };
    Env {
        store,
        server,
        token,
        db,
    }
}

impl Env {
    /// An authenticated ADS client of `acme/{mesh}` named `name`.
    pub async fn client(&self, mesh: &str, name: &str) -> AdsClient {
        AdsClient::connect(
            &self.server.url(),
            node("acme", mesh, name),
            Some(&self.token),
        )
        .await
        .unwrap()
    }

    /// A client like [`Env::client`] that has subscribed to every cluster and ACKed the
    /// first response, which it returns too.
    pub async fn cds_client(&self, mesh: &str, name: &str) -> (AdsClient, DiscoveryResponse) {
        let mut client = self.client(mesh, name).await;
        client.subscribe(CDS, &[]).await.unwrap();
        let first = client.recv_and_ack(&[]).await.unwrap();
        (client, first)
    }

    pub async fn put(&self, mesh: &str, kind: Kind, name: &str, spec: Value) {
        put(&self.store, "acme", mesh, kind, name, spec).await;
    }

    pub async fn delete(&self, mesh: &str, kind: Kind, name: &str) {
        self.store
            .delete(
                &ResourceKey::new("acme", mesh, kind, name),
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }
}

/// Writes a resource the way the REST API does.
pub async fn put(store: &Store, tenant: &str, mesh: &str, kind: Kind, name: &str, spec: Value) {
    let parsed = Spec::parse(kind, spec).unwrap();
    parsed.validate().unwrap();
    store
        .put_spec(tenant, mesh, name, &parsed, &WriteOptions::default())
        .await
        .unwrap();
}

/// The names of the resources of a response.
pub fn names(response: &DiscoveryResponse) -> Vec<String> {
    let t = ResourceType::from_type_url(&response.type_url).unwrap();
    let mut names: Vec<String> = response
        .resources
        .iter()
        .map(|any| resource_name(t, any))
        .collect();
    names.sort();
    names
}

fn resource_name(t: ResourceType, any: &switchboard_xds_proto::Any) -> String {
    use switchboard_xds_proto::*;
    match t {
        ResourceType::Cluster => unpack::<Cluster>(any).unwrap().name,
        ResourceType::Listener => unpack::<Listener>(any).unwrap().name,
        ResourceType::RouteConfiguration => unpack::<RouteConfiguration>(any).unwrap().name,
        ResourceType::ClusterLoadAssignment => {
            unpack::<ClusterLoadAssignment>(any).unwrap().cluster_name
        }
        ResourceType::Secret => unpack::<Secret>(any).unwrap().name,
    }
}

/// Receives responses (ACKing each with `names_for(type_url)`) until `done` holds for the
/// list so far, or panics after a while.
pub async fn collect_until(
    client: &mut AdsClient,
    names_for: impl Fn(&str) -> Vec<&'static str>,
    done: impl Fn(&[DiscoveryResponse]) -> bool,
) -> Vec<DiscoveryResponse> {
    let mut got = Vec::new();
    while !done(&got) {
        let r = client.recv().await.unwrap_or_else(|s| {
            panic!(
                "stream failed after {:?}: {s:?}",
                got.iter()
                    .map(|r: &DiscoveryResponse| (&r.type_url, names(r)))
                    .collect::<Vec<_>>()
            )
        });
        client.ack(&r, &names_for(&r.type_url)).await.unwrap();
        got.push(r);
    }
    got
}

/// Asserts nothing arrives for a while.
pub async fn assert_quiet(client: &mut AdsClient) {
    assert_quiet_for(client, QUIET).await;
}

/// Asserts nothing arrives within `wait`.
pub async fn assert_quiet_for(client: &mut AdsClient, wait: Duration) {
    if let Some(r) = client.recv_within(wait).await {
        match r {
            Ok(r) => panic!("unexpected response {} {:?}", r.type_url, names(&r)),
            Err(s) => panic!("unexpected end {s:?}"),
        }
    }
}

/// Decodes a resource for content checks.
pub fn debug_of(response: &DiscoveryResponse) -> String {
    let t = ResourceType::from_type_url(&response.type_url).unwrap();
    response
        .resources
        .iter()
        .map(|any| {
            let r = XdsResource::from_any("", any.type_url.clone(), any.value.clone());
            match t {
                ResourceType::RouteConfiguration => {
                    format!(
                        "{:?}",
                        r.decode::<switchboard_xds_proto::RouteConfiguration>()
                            .unwrap()
                    )
                }
                ResourceType::Cluster => format!(
                    "{:?}",
                    r.decode::<switchboard_xds_proto::Cluster>().unwrap()
                ),
                _ => format!("{any:?}"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
