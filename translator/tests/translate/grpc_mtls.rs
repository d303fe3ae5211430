//! Proxyless gRPC security (gRFC A29) and xDS-enabled gRPC servers (gRFC A36): the clusters
//! proxyless clients with certificate providers get, and the server listeners, compared with
//! the Envoy messages gRPC reads.

use std::sync::Arc;

use serde_json::json;
use switchboard_translator::pb::envoy::config::cluster::v3::Cluster;
use switchboard_translator::pb::envoy::config::core::v3::{
    Address, SocketAddress, TrafficDirection, address, socket_address, transport_socket,
};
use switchboard_translator::pb::envoy::config::listener::v3::Listener;
use switchboard_translator::pb::envoy::config::route::v3::{
    NonForwardingAction, RouteMatch, route, route_match,
};
use switchboard_translator::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
    DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
};
use switchboard_translator::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use switchboard_translator::pb::google::protobuf::BoolValue;
use switchboard_translator::{Change, MeshResources, Translator, names, translate};

use crate::common::{Mesh, base, chain_hcm, decode, filter_names, spec, unpack};

const TLS_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3";
const GREETER_ID: &str = "spiffe://acme.example.org/mesh/prod/service/greeter";

/// gRPC service `greeter` with one mesh-workload endpoint at 10.0.0.7:50051, HTTP service
/// `web` with one at 10.0.0.8 (8080).
fn mesh(mode: &str) -> Mesh {
    base()
        .service("greeter", json!({"port": 50051, "protocol": "grpc"}))
        .service("web", json!({"port": 8080}))
        .endpoint(
            "greeter-1",
            json!({"service": "greeter", "address": "10.0.0.7", "mtls": true}),
        )
        .endpoint(
            "web-1",
            json!({"service": "web", "address": "10.0.0.8", "mtls": true}),
        )
        .mtls(mode, true)
}

fn instance(certificate_name: &str) -> Option<CertificateProviderPluginInstance> {
    Some(CertificateProviderPluginInstance {
        instance_name: "default".into(),
        certificate_name: certificate_name.into(),
    })
}

fn server_listener_name(address: &str) -> String {
    format!("grpc/server?xds.resource.listening_address={address}")
}

fn tls_context<M: prost::Message + Default>(
    socket: &Option<transport_socket::ConfigType>,
    kind: &str,
) -> M {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = socket else {
        panic!("no typed transport socket");
    };
    unpack(any, &format!("{TLS_URL}.{kind}"))
}

#[test]
fn proxyless_clients_with_certificate_providers_call_mesh_workloads_with_mtls() {
    let res = mesh("strict").translate();
    let plain: Cluster = decode(&res.clusters, "greeter");
    assert_eq!(
        plain.transport_socket, None,
        "clients without providers: plaintext"
    );
    let secure: Cluster = decode(&res.proxyless_mtls_clusters, "greeter");
    let socket = secure.transport_socket.clone().unwrap();
    assert_eq!(socket.name, "envoy.transport_sockets.tls");
    let context: UpstreamTlsContext = tls_context(&socket.config_type, "UpstreamTlsContext");
    #[allow(deprecated)] // gRPC reads match_subject_alt_names.
    let validation = CertificateValidationContext {
        ca_certificate_provider_instance: instance("ROOTCA"),
        match_subject_alt_names: vec![StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(GREETER_ID.into())),
            ignore_case: false,
        }],
        ..Default::default()
    };
    assert_eq!(
        context,
        UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_provider_instance: instance("default"),
                validation_context_type: Some(
                    common_tls_context::ValidationContextType::ValidationContext(validation)
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    );
    // Apart from the transport socket, the very cluster the others get.
    assert_eq!(
        Cluster {
            transport_socket: None,
            ..secure
        },
        plain
    );
    // Services without endpoints, or with one outside the mesh: the same Arc as plaintext.
    for service in ["a", "g"] {
        assert!(Arc::ptr_eq(
            &res.proxyless_mtls_clusters[service],
            &res.clusters[service]
        ));
    }
}

#[test]
fn a_cluster_is_all_tls_or_all_plaintext() {
    let mixed = mesh("permissive")
        .endpoint(
            "greeter-legacy",
            json!({"service": "greeter", "address": "10.0.0.9"}),
        )
        .translate();
    assert!(Arc::ptr_eq(
        &mixed.proxyless_mtls_clusters["greeter"],
        &mixed.clusters["greeter"]
    ));
    for off in [mesh("off"), mesh("permissive").mtls("permissive", false)] {
        let res = off.translate();
        for (name, c) in &res.clusters {
            assert!(Arc::ptr_eq(c, &res.proxyless_mtls_clusters[name]), "{name}");
        }
    }
}

#[test]
fn xds_enabled_grpc_servers_get_a_listener_for_their_endpoint() {
    let res = mesh("strict").translate();
    let name = server_listener_name("10.0.0.7:50051");
    assert_eq!(
        res.server_listeners.keys().collect::<Vec<_>>(),
        [&name],
        "only gRPC services"
    );
    assert!(!res.listeners.contains_key(&name));
    let l: Listener = decode(&res.server_listeners, &name);
    assert_eq!(l.name, name);
    assert_eq!(l.api_listener, None);
    assert_eq!(l.traffic_direction, TrafficDirection::Inbound as i32);
    assert_eq!(
        l.address,
        Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "10.0.0.7".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(50051)),
                ..Default::default()
            }))
        })
    );
    assert_eq!(l.filter_chains.len(), 1);
    let chain = &l.filter_chains[0];
    assert_eq!(chain.filter_chain_match, None);
    let hcm = chain_hcm(&l);
    assert_eq!(filter_names(&hcm), [names::ROUTER_FILTER]);
    let Some(switchboard_translator::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
        panic!("routes must be inline");
    };
    assert_eq!(rc.virtual_hosts.len(), 1);
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, ["*"]);
    assert_eq!(vh.routes.len(), 1);
    assert_eq!(
        vh.routes[0].r#match,
        Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        })
    );
    assert_eq!(
        vh.routes[0].action,
        Some(route::Action::NonForwardingAction(NonForwardingAction {}))
    );
    let socket = chain.transport_socket.clone().unwrap();
    let context: DownstreamTlsContext = tls_context(&socket.config_type, "DownstreamTlsContext");
    assert_eq!(
        context,
        DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_provider_instance: instance("default"),
                // No SAN matcher: gRPC NACKs one on servers; the mesh CA's roots decide.
                validation_context_type: Some(
                    common_tls_context::ValidationContextType::ValidationContext(
                        CertificateValidationContext {
                            ca_certificate_provider_instance: instance("ROOTCA"),
                            ..Default::default()
                        }
                    )
                ),
                ..Default::default()
            }),
            require_client_certificate: Some(BoolValue { value: true }),
            ..Default::default()
        }
    );
}

#[test]
fn server_listeners_follow_mtls_policies_and_addresses() {
    // Mode off, or an endpoint outside the mesh: plaintext.
    let off = mesh("off").translate();
    let l: Listener = decode(
        &off.server_listeners,
        &server_listener_name("10.0.0.7:50051"),
    );
    assert_eq!(l.filter_chains[0].transport_socket, None);
    let outside = mesh("strict")
        .endpoint(
            "greeter-1",
            json!({"service": "greeter", "address": "10.0.0.7"}),
        )
        .translate();
    let l: Listener = decode(
        &outside.server_listeners,
        &server_listener_name("10.0.0.7:50051"),
    );
    assert_eq!(l.filter_chains[0].transport_socket, None);

    // A deny policy: its RBAC filter goes before the router.
    let mut denying = mesh("strict").service("caller", json!({"port": 8080}));
    denying.config.authorization_policies.insert(
        "no-caller".into(),
        spec(json!({"service": "greeter", "action": "deny", "from": [{"services": ["caller"]}]})),
    );
    let denying = denying.translate();
    let l: Listener = decode(
        &denying.server_listeners,
        &server_listener_name("10.0.0.7:50051"),
    );
    assert_eq!(
        filter_names(&chain_hcm(&l)),
        [names::RBAC_HTTP_FILTER, names::ROUTER_FILTER]
    );

    // IPv6, and an endpoint's own port.
    let v6 = mesh("strict")
        .endpoint(
            "greeter-2",
            json!({"service": "greeter", "address": "fd00:0::7", "port": 6000, "mtls": true}),
        )
        .translate();
    assert!(
        v6.server_listeners
            .contains_key(&server_listener_name("[fd00::7]:6000"))
    );

    // Two services' endpoints at one address: the first by endpoint name serves, with a warning.
    let shared = mesh("strict")
        .service("other", json!({"port": 50051, "protocol": "grpc"}))
        .endpoint(
            "zz-other",
            json!({"service": "other", "address": "10.0.0.7"}),
        )
        .translate();
    assert_eq!(shared.server_listeners.len(), 1);
    assert!(
        shared
            .warnings
            .iter()
            .any(|w| w.contains("zz-other") && w.contains("it serves greeter")),
        "{:?}",
        shared.warnings
    );
}

/// Incremental updates touch only what depends on the change.
#[test]
fn incremental_updates_of_grpc_security() {
    let mut t = Translator::new(mesh("strict").config.clone());
    let before: MeshResources = t.resources().clone();
    let name = server_listener_name("10.0.0.7:50051");

    // An endpoint leaves the mesh: the secure cluster falls back, the listener loses TLS.
    let plain_endpoint = spec(json!({"service": "greeter", "address": "10.0.0.7"}));
    let after = t
        .apply([Change::Endpoint("greeter-1".into(), Some(plain_endpoint))])
        .clone();
    assert!(Arc::ptr_eq(
        &after.proxyless_mtls_clusters["greeter"],
        &after.clusters["greeter"]
    ));
    assert!(Arc::ptr_eq(
        &after.clusters["greeter"],
        &before.clusters["greeter"]
    ));
    assert_ne!(
        after.server_listeners[&name].version,
        before.server_listeners[&name].version
    );
    assert!(Arc::ptr_eq(
        &after.listeners["greeter"],
        &before.listeners["greeter"]
    ));

    // The service moves to another port: the listener moves with its endpoints.
    let moved = spec(json!({"port": 6000, "protocol": "grpc"}));
    let after = t
        .apply([Change::Service("greeter".into(), Some(moved))])
        .clone();
    assert!(!after.server_listeners.contains_key(&name));
    assert!(
        after
            .server_listeners
            .contains_key(&server_listener_name("10.0.0.7:6000"))
    );

    // The service becomes HTTP: no server listener any more.
    let http = spec(json!({"port": 6000, "protocol": "http"}));
    let after = t
        .apply([Change::Service("greeter".into(), Some(http))])
        .clone();
    assert!(after.server_listeners.is_empty());
    assert_eq!(t.resources(), &translate(t.config()));
}
