//! Mesh mTLS over real ADS streams: sidecars get clusters with transport socket matches and a
//! TLS inbound listener, proxyless clients plaintext clusters, and a change of the mesh's mode
//! reaches connected sidecars.

use serde_json::json;
use switchboard_model::Kind;
use switchboard_xds_proto::{Cluster, DiscoveryResponse, Listener, unpack};
use switchboard_xds_server::testing::{AdsClient, node, with_metadata};

use crate::common::{CDS, LDS, collect_until, env};

fn cluster(r: &DiscoveryResponse, name: &str) -> Cluster {
    r.resources
        .iter()
        .map(|any| unpack::<Cluster>(any).unwrap())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

fn listener(r: &DiscoveryResponse, name: &str) -> Listener {
    r.resources
        .iter()
        .map(|any| unpack::<Listener>(any).unwrap())
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

/// The next CDS and LDS responses (ACKed), in that order of arrival.
async fn cds_and_lds(client: &mut AdsClient) -> (DiscoveryResponse, DiscoveryResponse) {
    let got = collect_until(
        client,
        |_| vec![],
        |got| got.iter().any(|r| r.type_url == CDS) && got.iter().any(|r| r.type_url == LDS),
    )
    .await;
    let last = |t: &str| got.iter().rev().find(|r| r.type_url == t).unwrap().clone();
    (last(CDS), last(LDS))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_get_mtls_and_proxyless_clients_plaintext() {
    let env = env().await;
    // Strict needs no CA to be in force (permissive would wait for one).
    env.put("", Kind::Mesh, "prod", json!({"mtls": {"mode": "strict"}}))
        .await;
    env.put(
        "prod",
        Kind::Endpoint,
        "sidecar-pay-2",
        json!({"service": "pay", "address": "10.0.0.2", "port": 15006, "node": "pay-2", "mtls": true}),
    )
    .await;
    let sidecar = with_metadata(
        node("acme", "prod", "pay-1"),
        &[
            ("role", "sidecar"),
            ("service", "pay"),
            ("app_port", "8080"),
        ],
    );
    let mut client = AdsClient::connect(&env.server.url(), sidecar, Some(&env.token))
        .await
        .unwrap();
    client.subscribe(CDS, &[]).await.unwrap();
    client.subscribe(LDS, &[]).await.unwrap();
    let (cds, lds) = cds_and_lds(&mut client).await;
    let pay = cluster(&cds, "pay");
    assert_eq!(pay.transport_socket_matches.len(), 1);
    assert_eq!(pay.transport_socket_matches[0].name, "mtls");
    assert_eq!(
        pay.transport_socket.as_ref().unwrap().name,
        "envoy.transport_sockets.raw_buffer"
    );
    let inbound = listener(&lds, "sidecar/inbound");
    assert_eq!(inbound.filter_chains.len(), 1);
    assert_eq!(
        inbound.filter_chains[0]
            .transport_socket
            .as_ref()
            .unwrap()
            .name,
        "envoy.transport_sockets.tls"
    );

    let (_proxyless, cds) = env.cds_client("prod", "grpc-1").await;
    let pay = cluster(&cds, "pay");
    assert!(pay.transport_socket_matches.is_empty());
    assert_eq!(pay.transport_socket, None);

    // Mode off: the connected sidecar gets plaintext resources.
    env.put("", Kind::Mesh, "prod", json!({"mtls": {"mode": "off"}}))
        .await;
    let (cds, lds) = cds_and_lds(&mut client).await;
    let pay = cluster(&cds, "pay");
    assert!(pay.transport_socket_matches.is_empty());
    assert_eq!(pay.transport_socket, None);
    let inbound = listener(&lds, "sidecar/inbound");
    assert_eq!(inbound.filter_chains.len(), 1);
    assert_eq!(inbound.filter_chains[0].transport_socket, None);
}
