//! CSDS, health and reflection.

use serde_json::json;
use switchboard_model::Kind;
use switchboard_store::CredentialKind;
use switchboard_xds_proto::pb::envoy::admin::v3::ClientResourceStatus;
use switchboard_xds_proto::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use switchboard_xds_proto::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse,
};
use switchboard_xds_proto::service::csds::ClientStatusDiscoveryServiceClient;
use switchboard_xds_server::testing::secret;
use tonic::Code;

use crate::common::*;

async fn fetch(env: &Env, token: Option<&str>) -> Result<ClientStatusResponse, tonic::Status> {
    let mut client = ClientStatusDiscoveryServiceClient::connect(env.server.url())
        .await
        .unwrap();
    let mut request = tonic::Request::new(ClientStatusRequest::default());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client
        .fetch_client_status(request)
        .await
        .map(|r| r.into_inner())
}

/// The entry of `config` for resource `name` of `type_url`.
fn entry<'a>(config: &'a ClientConfig, type_url: &str, name: &str) -> &'a GenericXdsConfig {
    config
        .generic_xds_configs
        .iter()
        .find(|c| c.type_url == type_url && c.name == name)
        .unwrap_or_else(|| panic!("no {type_url} {name} in {config:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csds_reports_acks_and_nacks() {
    let env = env().await;
    let (mut client, good) = env.cds_client("prod", "a").await;
    client.subscribe(EDS, &["pay", "ghost"]).await.unwrap();
    client.recv_and_ack(&["pay", "ghost"]).await.unwrap();
    env.put(
        "prod",
        Kind::Service,
        "pay",
        json!({"port": 8080, "protocol": "grpc"}),
    )
    .await;
    let bad = loop {
        let r = client.recv().await.unwrap();
        if r.type_url == CDS {
            break r;
        }
        client.ack(&r, &["pay", "ghost"]).await.unwrap();
    };
    client
        .nack(&bad, &[], &good.version_info, "grpc clusters need http2")
        .await
        .unwrap();
    // Let the server take the NACK in.
    assert_quiet(&mut client).await;

    let api_key = secret(&env.store, "acme", CredentialKind::ApiKey, None)
        .await
        .unwrap();
    let response = fetch(&env, Some(&api_key)).await.unwrap();
    assert_eq!(response.config.len(), 1);
    let config = &response.config[0];
    assert_eq!(
        config.node.as_ref().unwrap().id,
        "tenants/acme/meshes/prod/nodes/a"
    );
    let cluster = entry(config, CDS, "pay");
    assert_eq!(cluster.client_status, ClientResourceStatus::Nacked as i32);
    assert_eq!(cluster.version_info, good.version_info);
    let error = cluster.error_state.as_ref().unwrap();
    assert_eq!(error.details, "grpc clusters need http2");
    assert_eq!(error.version_info, bad.version_info);
    assert!(cluster.xds_config.is_some());
    let endpoints = entry(config, EDS, "pay");
    assert_eq!(endpoints.client_status, ClientResourceStatus::Acked as i32);
    let ghost = entry(config, EDS, "ghost");
    assert_eq!(ghost.client_status, ClientResourceStatus::Requested as i32);

    // Another tenant sees nothing; no credential is refused.
    let globex = secret(&env.store, "globex", CredentialKind::ApiKey, None)
        .await
        .unwrap();
    assert!(fetch(&env, Some(&globex)).await.unwrap().config.is_empty());
    assert_eq!(
        fetch(&env, None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection() {
    let env = env().await;
    let channel = tonic::transport::Endpoint::from_shared(env.server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in [
        "",
        switchboard_xds_proto::service_name::AGGREGATED_DISCOVERY,
    ] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            status.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{response:?}");
    };
    let services: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        services.contains(&switchboard_xds_proto::service_name::AGGREGATED_DISCOVERY),
        "{services:?}"
    );
}
