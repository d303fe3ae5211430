//! The mesh the clients follow: its names, and its setup through REST.

use anyhow::Result;
use futures::TryStreamExt;
use serde_json::{Value, json};
use switchboard_loadtest::Rest;

pub const ADMIN_TOKEN: &str = "loadtest-admin-token-not-secret";
pub const TENANT: &str = "t";
pub const MESH: &str = "m";
/// The route every client sees, and its host name (a listener every client subscribes to).
pub const SHARED: &str = "shared";
pub const SHARED_HOST: &str = "shared:8080";
/// The backend of `shared` whose weight encodes the round: `ROUND_BASE + round`.
pub const ROUND_SERVICE: &str = "svc-0";
pub const ROUND_BASE: u32 = 100;
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

pub fn mesh_path() -> String {
    format!("/v1/tenants/{TENANT}/meshes/{MESH}")
}

pub fn service(i: usize) -> String {
    format!("svc-{i}")
}

/// Route `shared` at `round`: only the weights change from one round to the next.
pub fn shared_route(round: u32) -> Value {
    json!({"spec": {
        "hostnames": [SHARED_HOST],
        "rules": [{
            "backends": [
                {"service": ROUND_SERVICE, "weight": ROUND_BASE + round},
                {"service": service(1), "weight": 100},
            ],
            "timeout": "5s",
        }],
    }})
}

/// PUTs every `(path, body)`, 8 at a time.
async fn put_all(rest: &Rest, writes: Vec<(String, Value)>) -> Result<()> {
    futures::stream::iter(writes.into_iter().map(Ok::<_, anyhow::Error>))
        .try_for_each_concurrent(8, |(path, body)| async move {
            rest.put(&path, &body).await.map(drop)
        })
        .await
}

/// The mesh, through REST: `service_count` services of `per_service` endpoints each. Returns
/// (endpoints, routes) written.
pub async fn setup(
    rest: &Rest,
    service_count: usize,
    per_service: usize,
) -> Result<(usize, usize)> {
    let m = mesh_path();
    rest.post("/v1/tenants", &json!({"name": TENANT})).await?;
    rest.put(&m, &json!({"spec": {"allowUnauthenticatedXds": true}}))
        .await?;
    let services = (0..service_count)
        .map(|i| {
            (
                format!("{m}/services/{}", service(i)),
                json!({"spec": {"protocol": "grpc", "port": 8080}}),
            )
        })
        .collect();
    put_all(rest, services).await?;
    let mut endpoints = Vec::new();
    for i in 0..service_count {
        for j in 0..per_service {
            endpoints.push((
                format!("{m}/endpoints/{}-e{j}", service(i)),
                json!({"spec": {
                    "service": service(i),
                    "address": format!("10.{}.{}.{}", i / 256, i % 256, j + 1),
                    "locality": {"region": "region-1", "zone": ZONES[j % ZONES.len()]},
                }}),
            ));
        }
    }
    let endpoint_count = endpoints.len();
    put_all(rest, endpoints).await?;
    let mut routes: Vec<(String, Value)> = (0..service_count)
        .map(|i| {
            let next = service((i + 1) % service_count);
            (
                format!("{m}/routes/route-{i}"),
                json!({"spec": {
                    "hostnames": [format!("{}:8080", service(i))],
                    "rules": [
                        {"matches": [{"headers": [{"name": "x-canary", "value": "true"}]}],
                         "backends": [{"service": next}]},
                        {"backends": [{"service": service(i), "weight": 90}, {"service": next, "weight": 10}],
                         "timeout": "2s", "retries": {"attempts": 2}},
                    ],
                }}),
            )
        })
        .collect();
    routes.push((format!("{m}/routes/{SHARED}"), shared_route(0)));
    let route_count = routes.len();
    put_all(rest, routes).await?;
    Ok((endpoint_count, route_count))
}
