//! Authorization policies reach a connected sidecar: a write of a policy for its service
//! re-sends its inbound listener with the RBAC filter naming the policy, and its deletion
//! takes the filter away again.

use serde_json::json;
use switchboard_model::Kind;
use switchboard_xds_proto::pb::envoy::config::listener::v3::{Listener, filter};
use switchboard_xds_proto::pb::envoy::config::rbac::v3::rbac;
use switchboard_xds_proto::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use switchboard_xds_proto::{DiscoveryResponse, unpack};
use switchboard_xds_server::testing::{AdsClient, node, with_metadata};

use crate::common::{LDS, collect_until, env};

/// The RBAC configurations of the inbound listener in an LDS response, in filter order.
fn inbound_rbac(response: &DiscoveryResponse) -> Vec<Rbac> {
    let listener = response
        .resources
        .iter()
        .map(|any| unpack::<Listener>(any).unwrap())
        .find(|l| l.name == "sidecar/inbound")
        .expect("an inbound listener");
    let Some(filter::ConfigType::TypedConfig(hcm)) =
        listener.filter_chains[0].filters[0].config_type.clone()
    else {
        panic!("no HCM");
    };
    let hcm: HttpConnectionManager = unpack(&hcm).unwrap();
    hcm.http_filters
        .iter()
        .filter(|f| f.name == "envoy.filters.http.rbac")
        .map(|f| {
            let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!("no typed config");
            };
            unpack(any).unwrap()
        })
        .collect()
}

async fn next_lds(client: &mut AdsClient) -> DiscoveryResponse {
    let got = collect_until(
        client,
        |_| vec![],
        |got| got.last().is_some_and(|r| r.type_url == LDS),
    )
    .await;
    got.into_iter().last().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_write_reaches_the_sidecars_of_its_service() {
    let env = env().await;
    env.put("prod", Kind::Service, "web", json!({"port": 8080}))
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
    client.subscribe(LDS, &[]).await.unwrap();
    assert!(inbound_rbac(&next_lds(&mut client).await).is_empty());

    env.put(
        "prod",
        Kind::AuthorizationPolicy,
        "no-web",
        json!({"service": "pay", "action": "deny", "from": [{"services": ["web"]}]}),
    )
    .await;
    let rbacs = inbound_rbac(&next_lds(&mut client).await);
    assert_eq!(rbacs.len(), 1);
    let rules = rbacs[0].rules.as_ref().unwrap();
    assert_eq!(rules.action, rbac::Action::Deny as i32);
    assert_eq!(rules.policies.keys().collect::<Vec<_>>(), ["no-web"]);

    // The mesh default applies to every service: deny adds an empty ALLOW after the DENY.
    env.put(
        "",
        Kind::Mesh,
        "prod",
        json!({"defaultAuthorization": "deny"}),
    )
    .await;
    let rbacs = inbound_rbac(&next_lds(&mut client).await);
    assert_eq!(rbacs.len(), 2);
    let allow = rbacs[1].rules.as_ref().unwrap();
    assert_eq!(allow.action, rbac::Action::Allow as i32);
    assert!(allow.policies.is_empty());

    env.put("", Kind::Mesh, "prod", json!({})).await;
    assert_eq!(inbound_rbac(&next_lds(&mut client).await).len(), 1);
    env.delete("prod", Kind::AuthorizationPolicy, "no-web")
        .await;
    assert!(inbound_rbac(&next_lds(&mut client).await).is_empty());
}
