#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Interop with Switchboard's own xDS server: a sidecar converges and ACKs everything.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_model::{Kind, Spec};
use switchboard_proxy_xds::config::cluster::{Discovery, LbPolicy, UpstreamProtocol};
use switchboard_proxy_xds::config::listener::{ListenerKind, RouteSource};
use switchboard_proxy_xds::config::route::{Action, Clusters, PathMatch};
use switchboard_proxy_xds::{Bootstrap, ClientOptions, ConfigStore, XdsClient};
use switchboard_store::testing::store;
use switchboard_store::{Backend, CredentialKind, Store, WriteOptions};
use switchboard_xds_proto::ResourceType;
use switchboard_xds_server::testing::secret;

async fn put(store: &Store, mesh: &str, kind: Kind, name: &str, spec: Value) {
    let parsed = Spec::parse(kind, spec).unwrap();
    parsed.validate().unwrap();
    store
        .put_spec("acme", mesh, name, &parsed, &WriteOptions::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_converges_on_switchboard_and_acks_everything() {
    let (store, _db) = store(Backend::Sqlite).await.expect("SQLite store");
    store
        .create_tenant("acme", &json!({}), false)
        .await
        .unwrap();
    put(&store, "", Kind::Mesh, "prod", json!({})).await;
    put(&store, "prod", Kind::Service, "pay", json!({
        "protocol": "grpc", "port": 9090, "loadBalancing": "least_request",
        "connectTimeout": "2s",
        "circuitBreaker": {"maxConnections": 100, "maxRequests": 200},
        "outlierDetection": {"consecutive5xx": 3, "interval": "5s", "baseEjectionTime": "10s", "maxEjectionPercent": 50},
    })).await;
    put(&store, "prod", Kind::Service, "web", json!({"port": 8080})).await;
    put(
        &store,
        "prod",
        Kind::Endpoint,
        "pay-1",
        json!({"service": "pay", "address": "10.0.0.1"}),
    )
    .await;
    put(
        &store,
        "prod",
        Kind::Endpoint,
        "pay-2",
        json!({"service": "pay", "address": "10.0.0.2", "weight": 3}),
    )
    .await;
    put(&store, "prod", Kind::Route, "r", json!({
        "hostnames": ["pay.example"],
        "rules": [
            {
                "matches": [{
                    "path": {"type": "regex", "value": "/api/v[0-9]+/.*"},
                    "headers": [{"name": "x-env", "value": "canary"}],
                    "queryParams": [{"name": "debug", "type": "present"}],
                    "method": "GET",
                }],
                "backends": [{"service": "pay", "weight": 80}, {"service": "web", "weight": 20}],
                "timeout": "3s",
                "retries": {"attempts": 2, "perTryTimeout": "1s", "retryOn": ["5xx"], "retriableStatusCodes": [503]},
                "requestHeaders": {"set": [{"name": "x-a", "value": "1"}], "add": [{"name": "x-b", "value": "2"}], "remove": ["x-c"]},
                "responseHeaders": {"set": [{"name": "x-d", "value": "4"}]},
                "rewrite": {"hostname": "pay.internal"},
                "fault": {"delay": {"fixed": "10ms", "percent": 5}, "abort": {"httpStatus": 503, "percent": 1}},
                "mirror": {"service": "web", "percent": 10},
            },
            {"matches": [{"path": {"type": "exact", "value": "/old"}}], "redirect": {"scheme": "https", "statusCode": 301}},
            {"matches": [{"path": {"type": "prefix", "value": "/legacy"}}], "backends": [{"service": "pay"}], "rewrite": {"prefix": "/v2"}},
        ],
    })).await;
    let token = secret(&store, "acme", CredentialKind::ProxyToken, None)
        .await
        .unwrap();
    let server = switchboard_xds_server::testing::start(store.clone())
        .await
        .unwrap();

    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), &token).unwrap();
    let bootstrap = Bootstrap::parse(&format!(
        "xds_address: {}\nnode_id: tenants/acme/meshes/prod/nodes/web-1\n\
         metadata: {{role: sidecar, service: web, app_port: '8080', inbound_port: '15006'}}\n\
         token_file: {}\n",
        server.url(),
        token_file.path().display()
    ))
    .unwrap();
    let config = ConfigStore::new();
    let mut client = XdsClient::new(bootstrap, &config, ClientOptions::default()).spawn();
    tokio::time::timeout(Duration::from_secs(10), client.ready())
        .await
        .expect("the client converges");

    // Every type the server sent was ACKed at its latest version; nothing was NACKed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = server.xds.registry().node("acme", "prod", "web-1");
        assert_eq!(status.len(), 1, "one stream");
        let types = &status[0].types;
        for (t, s) in types {
            assert!(s.nack.is_none(), "{t:?} NACKed: {:?}", s.nack);
        }
        let all_acked = [
            ResourceType::Listener,
            ResourceType::RouteConfiguration,
            ResourceType::Cluster,
            ResourceType::ClusterLoadAssignment,
        ]
        .iter()
        .all(|t| {
            types.get(t).is_some_and(|s| match (&s.sent, &s.acked) {
                (Some(sent), Some(acked)) => sent.version == acked.version,
                _ => false,
            })
        });
        if all_acked {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not everything ACKed: {types:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let snap = config.snapshot();
    let outbound = &snap.listeners["sidecar/outbound"];
    assert_eq!(outbound.address.to_string(), "127.0.0.1:15001");
    let ListenerKind::Http(hcm) = &outbound.kind else {
        panic!("HTTP expected")
    };
    assert!(hcm.allow_absolute_url);
    assert_eq!(hcm.routes, RouteSource::Rds("sidecar/outbound".to_owned()));
    assert!(hcm.fault.is_some(), "the route injects faults");
    let inbound = &snap.listeners["sidecar/inbound"];
    assert_eq!(inbound.address.port(), 15006);

    let rc = &snap.routes["sidecar/outbound"];
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|vh| vh.domains.iter().any(|d| d == "pay.example"))
        .expect("the route's virtual host");
    assert_eq!(vh.routes.len(), 3);
    assert!(
        matches!(vh.routes[0].matcher.path, PathMatch::Regex(ref p) if p.is_match("/api/v1/x"))
    );
    let Action::Forward(f) = &vh.routes[0].action else {
        panic!("forward expected")
    };
    assert_eq!(
        f.clusters,
        Clusters::Weighted(vec![("pay".to_owned(), 80), ("web".to_owned(), 20)])
    );
    assert_eq!(f.timeout, Some(Duration::from_secs(3)));
    let retry = f.retry.as_ref().unwrap();
    assert_eq!(retry.num_retries, 2);
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(f.host_rewrite.as_deref(), Some("pay.internal"));
    assert_eq!(f.mirrors[0].cluster, "web");
    assert!(vh.routes[0].fault.is_some());
    assert!(matches!(vh.routes[1].action, Action::Redirect(ref r) if r.status == 301));
    let Action::Forward(legacy) = &vh.routes[2].action else {
        panic!("forward expected")
    };
    assert_eq!(legacy.prefix_rewrite.as_deref(), Some("/v2"));

    let pay = &snap.clusters["pay"];
    assert_eq!(
        pay.discovery,
        Discovery::Eds {
            service_name: "pay".to_owned()
        }
    );
    assert_eq!(pay.lb_policy, LbPolicy::LeastRequest);
    assert_eq!(pay.protocol, UpstreamProtocol::Http2);
    assert_eq!(pay.circuit_breakers.max_connections, 100);
    assert_eq!(pay.outlier_detection.unwrap().consecutive_5xx, 3);
    assert!(matches!(
        snap.clusters["inbound|8080"].discovery,
        Discovery::Static(_)
    ));
    let pay_endpoints: usize = snap.endpoints["pay"]
        .localities
        .iter()
        .map(|l| l.endpoints.len())
        .sum();
    assert_eq!(pay_endpoints, 2);
    assert!(snap.endpoints.contains_key("web"));
}
