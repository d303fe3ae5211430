//! The data path configured over xDS: a hand-driven ADS server feeds the real client, whose
//! `ConfigStore` the proxy reads; an EDS update moves traffic without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use switchboard_proxy_xds::testing::resources::{
    eds_cluster, http_listener, load_assignment, route_config,
};
use switchboard_proxy_xds::testing::{AdsServer, response};
use switchboard_proxy_xds::{AdsConfig, ApiType, Bootstrap, ClientOptions, ConfigStore, XdsClient};
use switchboard_xds_proto::{pack, type_url};
use tokio::net::TcpListener;

use support::{backend, get, h1_client};

#[tokio::test]
async fn routes_with_config_from_ads_and_follows_eds_updates() {
    let a = backend("a").await;
    let b = backend("b").await;
    let mut server = AdsServer::start().await.unwrap();
    let bootstrap = Bootstrap {
        xds_address: server.url(),
        node_id: "tenants/acme/meshes/prod/nodes/p-1".to_owned(),
        metadata: [("role".to_owned(), "sidecar".to_owned())].into(),
        token_file: None,
        xds_ca_file: None,
        xds_client_cert_file: None,
        xds_client_key_file: None,
        ads_config: AdsConfig {
            api_type: Some(ApiType::Grpc),
        },
    };
    let store = ConfigStore::new();
    let mut client = XdsClient::new(bootstrap, &store, ClientOptions::default()).spawn();

    server.next_of(type_url::CLUSTER).await.unwrap();
    let cds = vec![pack(&eds_cluster("pay"))];
    assert!(server.respond(response(type_url::CLUSTER, "c1", "n1", cds)));
    server
        .next_of(type_url::CLUSTER_LOAD_ASSIGNMENT)
        .await
        .unwrap();
    let eds = vec![pack(&load_assignment("pay", &[a]))];
    assert!(server.respond(response(type_url::CLUSTER_LOAD_ASSIGNMENT, "e1", "n2", eds)));
    let lds = vec![pack(&http_listener("out", 15001, "rc"))];
    assert!(server.respond(response(type_url::LISTENER, "l1", "n3", lds)));
    server.next_of(type_url::ROUTE_CONFIGURATION).await.unwrap();
    let rds = vec![pack(&route_config("rc", "*", "pay"))];
    assert!(server.respond(response(type_url::ROUTE_CONFIGURATION, "r1", "n4", rds)));
    tokio::time::timeout(Duration::from_secs(10), client.ready())
        .await
        .expect("the client became ready");

    // The listener's own address (15001) is the binary's business; the test binds :0.
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = tcp.local_addr().unwrap();
    tokio::spawn(switchboard_proxy_data::serve(
        tcp,
        "out",
        store.clone(),
        Default::default(),
    ));
    let http = h1_client();
    let got = get(&http, proxy, "pay", "/", &[]).await;
    assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "a"));

    let eds = vec![pack(&load_assignment("pay", &[b]))];
    assert!(server.respond(response(type_url::CLUSTER_LOAD_ASSIGNMENT, "e2", "n5", eds)));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = get(&http, proxy, "pay", "/", &[]).await;
        assert_eq!(got.status.as_u16(), 200);
        if got.body == "b" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the EDS update never reached the data path"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
