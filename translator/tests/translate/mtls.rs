//! Mesh mTLS: each mode's inbound listener, the proxies' clusters (auto mTLS by endpoint
//! metadata) and the endpoints' metadata, compared field by field with the Envoy messages
//! they must be; proxyless clusters stay plaintext.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use switchboard_model::spec::{MtlsMode, Protocol};
use switchboard_translator::pb::envoy::config::cluster::v3::{
    Cluster, cluster::TransportSocketMatch,
};
use switchboard_translator::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Metadata, TransportSocket, config_source,
    transport_socket,
};
use switchboard_translator::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint};
use switchboard_translator::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use switchboard_translator::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use switchboard_translator::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use switchboard_translator::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};
use switchboard_translator::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use switchboard_translator::pb::google::protobuf::{Any, BoolValue, Struct, Value, value};
use switchboard_translator::{
    MeshResources, NodeRole, SidecarParams, XdsResource, names, sidecar_inbound_with,
};

use crate::common::{Mesh, base, decode, unpack};

const TLS_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3";
const PREFIX: &str = "spiffe://acme.example.org/mesh/prod/service/";

/// Services `a` (HTTP), `b` (HTTP), `g` (gRPC), `m` (HTTP) and `t` (TCP); `a` has a sidecar's
/// endpoint (`mtls`) and a hand-written one outside the mesh.
fn mesh(mode: &str, with_ca: bool) -> Mesh {
    base()
        .service("t", json!({"port": 5432, "protocol": "tcp"}))
        .endpoint(
            "sidecar-a-1",
            json!({"service": "a", "address": "10.0.0.1", "port": 15006, "node": "a-1", "mtls": true}),
        )
        .endpoint("legacy-a", json!({"service": "a", "address": "10.0.0.9"}))
        .gateway("edge", json!({"port": 8080, "routes": []}))
        .mtls(mode, with_ca)
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ads()),
    }
}

fn uri(pattern: string_matcher::MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}

/// `default` as our certificate; peers verified against `ROOTCA` and `san`.
fn common(san: SubjectAltNameMatcher, alpn: &[&str]) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds("default")],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: vec![san],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds("ROOTCA")),
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn typed(t: &TransportSocket) -> &Any {
    match &t.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => any,
        other => panic!("no typed config: {other:?}"),
    }
}

fn downstream(t: &TransportSocket) -> DownstreamTlsContext {
    assert_eq!(t.name, "envoy.transport_sockets.tls");
    unpack(typed(t), &format!("{TLS_URL}.DownstreamTlsContext"))
}

fn upstream(t: &TransportSocket) -> UpstreamTlsContext {
    assert_eq!(t.name, "envoy.transport_sockets.tls");
    unpack(typed(t), &format!("{TLS_URL}.UpstreamTlsContext"))
}

/// The inbound context every mode with mTLS uses: client certificates required, from the
/// mesh CA, with an identity of this mesh.
fn expected_downstream(alpn: &[&str]) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(common(
            uri(string_matcher::MatchPattern::Prefix(PREFIX.into())),
            alpn,
        )),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

fn params(service: &str) -> SidecarParams {
    SidecarParams {
        service: service.into(),
        inbound_port: 15006,
        app_port: 8080,
        outbound_port: 15001,
    }
}

/// The inbound listener a sidecar of `service` gets, from the service's inbound security.
fn inbound(res: &MeshResources, service: &str, protocol: Protocol) -> Listener {
    let security = &res.inbound_security[service];
    sidecar_inbound_with(&params(service), protocol, security)
        .unwrap()
        .0
}

#[test]
fn strict_inbound_requires_mesh_client_certificates() {
    let res = mesh("strict", true).translate();
    assert!(res.warnings.is_empty(), "{:?}", res.warnings);
    for (service, protocol, alpn) in [
        ("a", Protocol::Http, &["h2", "http/1.1"][..]),
        ("g", Protocol::Grpc, &["h2", "http/1.1"][..]),
        ("t", Protocol::Tcp, &[][..]),
    ] {
        let l = inbound(&res, service, protocol);
        assert!(l.listener_filters.is_empty(), "{service}: no inspector");
        assert_eq!(l.filter_chains.len(), 1, "{service}: one chain");
        let chain = &l.filter_chains[0];
        assert_eq!(chain.filter_chain_match, None, "{service}");
        let tls = downstream(chain.transport_socket.as_ref().unwrap());
        assert_eq!(tls, expected_downstream(alpn), "{service}");
        assert!(!res.inbound_security[service].accept_plaintext);
        assert!(res.inbound_security[service].http_filters.is_empty());
        if protocol != Protocol::Tcp {
            let hcm = inbound_hcm(chain);
            assert_eq!(
                hcm.forward_client_cert_details,
                ForwardClientCertDetails::SanitizeSet as i32,
                "{service}: the app learns its caller from x-forwarded-client-cert"
            );
            assert_eq!(
                hcm.set_current_client_cert_details,
                Some(SetCurrentClientCertDetails {
                    uri: true,
                    ..Default::default()
                })
            );
        }
    }
}

fn inbound_hcm(chain: &FilterChain) -> HttpConnectionManager {
    use switchboard_translator::pb::envoy::config::listener::v3::filter;
    let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
        panic!("no typed HCM");
    };
    unpack(
        any,
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    )
}

#[test]
fn permissive_inbound_takes_mtls_and_plaintext() {
    let res = mesh("permissive", true).translate();
    for (service, protocol, alpn) in [
        ("a", Protocol::Http, &["h2", "http/1.1"][..]),
        ("t", Protocol::Tcp, &[][..]),
    ] {
        let l = inbound(&res, service, protocol);
        assert_eq!(
            l.listener_filters,
            [ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(Any {
                    type_url:
                        "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                            .into(),
                    value: vec![],
                })),
                ..Default::default()
            }]
        );
        // Only a server-first protocol needs to go on after the inspector's timeout.
        assert_eq!(
            l.continue_on_listener_filters_timeout,
            protocol == Protocol::Tcp
        );
        let [tls_chain, plain_chain]: &[FilterChain; 2] = l.filter_chains[..].try_into().unwrap();
        assert_eq!(
            tls_chain.filter_chain_match,
            Some(FilterChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            })
        );
        assert_eq!(
            downstream(tls_chain.transport_socket.as_ref().unwrap()),
            expected_downstream(alpn)
        );
        assert_eq!(plain_chain.filter_chain_match, None);
        assert_eq!(plain_chain.transport_socket, None);
        assert_eq!(
            tls_chain.filters, plain_chain.filters,
            "same filters on both"
        );
    }
}

#[test]
fn off_and_permissive_without_a_ca_are_plaintext() {
    for (mode, with_ca) in [("off", true), ("off", false), ("permissive", false)] {
        let m = mesh(mode, with_ca);
        assert_eq!(m.config.effective_mtls_mode(), MtlsMode::Off);
        let res = m.translate();
        let l = inbound(&res, "a", Protocol::Http);
        assert!(l.listener_filters.is_empty());
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(l.filter_chains[0].transport_socket, None, "{mode}");
        assert_eq!(*res.inbound_security["a"], Default::default());
        // Plaintext: nothing is vouched for, Envoy's default (sanitize) removes the header.
        let hcm = inbound_hcm(&l.filter_chains[0]);
        assert_eq!(hcm.forward_client_cert_details, 0);
        assert_eq!(hcm.set_current_client_cert_details, None);
        // Proxies get the very resources proxyless clients do.
        assert_eq!(res.proxy_clusters.len(), res.clusters.len());
        for (name, c) in &res.clusters {
            assert!(Arc::ptr_eq(c, &res.proxy_clusters[name]), "{mode}: {name}");
        }
    }
}

#[test]
fn strict_without_a_ca_stays_mtls() {
    let m = mesh("strict", false);
    assert_eq!(m.config.effective_mtls_mode(), MtlsMode::Strict);
    let res = m.translate();
    let l = inbound(&res, "a", Protocol::Http);
    assert!(l.filter_chains[0].transport_socket.is_some());
    let c: Cluster = decode(&res.proxy_clusters, "a");
    assert_eq!(c.transport_socket_matches.len(), 1);
}

fn mtls_struct() -> Struct {
    Struct {
        fields: HashMap::from([(
            "mtls".to_string(),
            Value {
                kind: Some(value::Kind::StringValue("true".into())),
            },
        )]),
    }
}

#[test]
fn proxy_clusters_use_mtls_towards_mesh_workloads() {
    for mode in ["strict", "permissive"] {
        let res = mesh(mode, true).translate();
        for (service, alpn) in [("a", &["http/1.1"][..]), ("g", &["h2"][..]), ("t", &[][..])] {
            let plain: Cluster = decode(&res.clusters, service);
            assert_eq!(plain.transport_socket, None, "proxyless: plaintext");
            assert!(plain.transport_socket_matches.is_empty());

            let mut proxy: Cluster = decode(&res.proxy_clusters, service);
            let raw = proxy.transport_socket.take().unwrap();
            assert_eq!(raw.name, "envoy.transport_sockets.raw_buffer");
            assert_eq!(
                typed(&raw),
                &Any {
                    type_url:
                        "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                            .into(),
                    value: vec![],
                }
            );
            let [m]: [TransportSocketMatch; 1] =
                std::mem::take(&mut proxy.transport_socket_matches)
                    .try_into()
                    .unwrap();
            assert_eq!(m.name, "mtls");
            assert_eq!(m.r#match, Some(mtls_struct()));
            let tls = upstream(m.transport_socket.as_ref().unwrap());
            assert_eq!(
                tls,
                UpstreamTlsContext {
                    common_tls_context: Some(common(
                        uri(string_matcher::MatchPattern::Exact(format!(
                            "{PREFIX}{service}"
                        ))),
                        alpn
                    )),
                    sni: service.into(),
                    ..Default::default()
                },
                "{mode} {service}"
            );
            assert_eq!(proxy, plain, "nothing else differs");
        }
        // Proxyless clients get exactly what they got with mTLS off.
        assert_eq!(
            res.clusters,
            mesh("off", true).translate().clusters,
            "{mode}"
        );
    }
}

fn lb_endpoints(res: &MeshResources, service: &str) -> Vec<LbEndpoint> {
    let cla: ClusterLoadAssignment = decode(&res.load_assignments, service);
    cla.endpoints
        .into_iter()
        .flat_map(|g| g.lb_endpoints)
        .collect()
}

#[test]
fn mesh_workload_endpoints_carry_the_match_metadata() {
    for (mode, with_ca) in [("strict", true), ("permissive", true), ("strict", false)] {
        let res = mesh(mode, with_ca).translate();
        let eps = lb_endpoints(&res, "a");
        assert_eq!(eps.len(), 2);
        let metadata: Vec<Option<Metadata>> = eps.into_iter().map(|e| e.metadata).collect();
        assert_eq!(
            metadata,
            [
                None, // legacy-a, outside the mesh (names sort `legacy-a` first)
                Some(Metadata {
                    filter_metadata: HashMap::from([(
                        "envoy.transport_socket_match".to_string(),
                        mtls_struct()
                    )]),
                    ..Default::default()
                }),
            ],
            "{mode}"
        );
    }
    // With mTLS off, the load assignment is what it was before mTLS existed.
    for (mode, with_ca) in [("off", true), ("permissive", false)] {
        let res = mesh(mode, with_ca).translate();
        assert!(
            lb_endpoints(&res, "a").iter().all(|e| e.metadata.is_none()),
            "{mode}"
        );
        let mut no_mtls = mesh(mode, with_ca);
        no_mtls
            .config
            .endpoints
            .values_mut()
            .for_each(|e| e.mtls = false);
        assert_eq!(
            res.load_assignments["a"],
            no_mtls.translate().load_assignments["a"]
        );
    }
}

#[test]
fn each_role_gets_its_clusters() {
    let res = mesh("strict", true).translate();
    let gateway = NodeRole::Gateway {
        name: "edge".into(),
    };
    let sidecar = NodeRole::Sidecar(params("a"));
    assert!(std::ptr::eq(
        res.clusters_for(&NodeRole::Proxyless),
        &res.clusters
    ));
    assert!(std::ptr::eq(
        res.clusters_for(&sidecar),
        &res.proxy_clusters
    ));
    assert!(std::ptr::eq(
        res.clusters_for(&gateway),
        &res.proxy_clusters
    ));
    assert_ne!(res.clusters["a"].version, res.proxy_clusters["a"].version);

    // A gateway's own listener is not mesh mTLS: its clients are outside the mesh.
    let l: Listener = decode(&res.listeners, &names::gateway("edge"));
    assert!(l.listener_filters.is_empty());
    assert!(l.filter_chains.iter().all(|c| c.transport_socket.is_none()));
}

#[test]
fn identities_follow_tenant_trust_domain_and_mesh() {
    let mut m = mesh("strict", true);
    m.config.tenant = "globex".into();
    m.config.mesh = "staging".into();
    m.config.trust_domain = "corp.test".into();
    let res = m.translate();
    let prefix = "spiffe://globex.corp.test/mesh/staging/service/";
    let tls = downstream(
        inbound(&res, "a", Protocol::Http).filter_chains[0]
            .transport_socket
            .as_ref()
            .unwrap(),
    );
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
        tls.common_tls_context.unwrap().validation_context_type
    else {
        panic!("no combined validation context")
    };
    assert_eq!(
        v.default_validation_context
            .unwrap()
            .match_typed_subject_alt_names,
        [uri(string_matcher::MatchPattern::Prefix(prefix.into()))]
    );
    let c: Cluster = decode(&res.proxy_clusters, "g");
    let tls = upstream(
        c.transport_socket_matches[0]
            .transport_socket
            .as_ref()
            .unwrap(),
    );
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
        tls.common_tls_context.unwrap().validation_context_type
    else {
        panic!("no combined validation context")
    };
    assert_eq!(
        v.default_validation_context
            .unwrap()
            .match_typed_subject_alt_names,
        [uri(string_matcher::MatchPattern::Exact(format!(
            "{prefix}g"
        )))]
    );
}

/// The proxies' clusters are resources like any other: named after the service, and encoded
/// deterministically (the maps in matches and metadata have one entry each).
#[test]
fn proxy_clusters_are_versioned_resources() {
    let res = mesh("strict", true).translate();
    let r: &XdsResource = &res.proxy_clusters["a"];
    assert_eq!(r.name, "a");
    assert_eq!(
        r.type_url(),
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(mesh("strict", true).translate(), res, "deterministic");
}

/// TLS origination: proxies' clusters of a service with `tls` carry an UpstreamTlsContext with
/// its SNI, verifying against its CA or the platform's roots, in every mTLS mode; proxyless
/// clients keep the plaintext cluster.
#[test]
fn services_with_tls_originate_it_from_proxies() {
    use switchboard_translator::pb::envoy::config::core::v3::{DataSource, data_source};
    use switchboard_translator::pb::envoy::extensions::transport_sockets::tls::v3::certificate_validation_context::SystemRootCerts;
    for mode in ["off", "permissive", "strict"] {
        let res = mesh(mode, true)
            .service(
                "ext",
                json!({"port": 443, "tls": {"sni": "api.example.com"}}),
            )
            .service(
                "pinned",
                json!({"port": 443, "protocol": "grpc",
                       "tls": {"sni": "db.example.com", "caCertificates": "PEM"}}),
            )
            .translate();
        let cluster = |name: &str| -> Cluster { decode(&res.proxy_clusters, name) };
        let ext = cluster("ext");
        assert!(
            ext.transport_socket_matches.is_empty(),
            "{mode}: not mesh mTLS"
        );
        let tls = upstream(ext.transport_socket.as_ref().unwrap());
        assert_eq!(tls.sni, "api.example.com");
        let common = tls.common_tls_context.unwrap();
        assert_eq!(common.alpn_protocols, ["http/1.1"]);
        assert!(
            common.tls_certificate_sds_secret_configs.is_empty(),
            "no client certificate"
        );
        let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
            common.validation_context_type
        else {
            panic!("{mode}: no validation context");
        };
        assert_eq!(v.system_root_certs, Some(SystemRootCerts::default()));
        assert_eq!(v.trusted_ca, None);

        let pinned = upstream(cluster("pinned").transport_socket.as_ref().unwrap());
        assert_eq!(pinned.sni, "db.example.com");
        let common = pinned.common_tls_context.unwrap();
        assert_eq!(common.alpn_protocols, ["h2"]);
        let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
            common.validation_context_type
        else {
            panic!("{mode}: no validation context");
        };
        assert_eq!(
            v.trusted_ca,
            Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString("PEM".into())),
                ..Default::default()
            })
        );
        assert_eq!(v.system_root_certs, None);
        // Proxyless gRPC clients: the plaintext cluster.
        let plain: Cluster = decode(&res.clusters, "ext");
        assert_eq!(plain.transport_socket, None);
    }
}
