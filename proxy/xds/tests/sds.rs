#![allow(clippy::unwrap_used, clippy::expect_used)]
//! SDS: the shapes a mesh control plane sends (secrets `default` and `ROOTCA` named by
//! listeners and clusters, SAN matchers, transport socket matches, permissive filter
//! chains) convert; unsupported shapes are refused naming the field; and the client
//! subscribes to exactly the secrets the applied resources name, ACKs them, and never puts a
//! key in the dump.

use std::time::Duration;

use switchboard_proxy_xds::config::tls::{DataSource, SanMatch, SanType};
use switchboard_proxy_xds::config::{Cluster, Listener, Secret};
use switchboard_proxy_xds::testing::resources::{ads, eds_cluster, http_listener};
use switchboard_proxy_xds::testing::{AdsServer, response};
use switchboard_proxy_xds::{AdsConfig, ApiType, Bootstrap, ClientOptions, ConfigStore, XdsClient};
use switchboard_runtime::eventually;
use switchboard_xds_proto::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use switchboard_xds_proto::pb::envoy::config::core::v3::{
    ConfigSource, DataSource as PbDataSource, TransportSocket, config_source, data_source,
    transport_socket,
};
use switchboard_xds_proto::pb::envoy::config::listener::v3::{
    FilterChainMatch, ListenerFilter, listener_filter,
};
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    Secret as PbSecret, SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
    common_tls_context, secret, subject_alt_name_matcher,
};
use switchboard_xds_proto::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use switchboard_xds_proto::pb::google::protobuf::{BoolValue, Struct, Value, value};
use switchboard_xds_proto::{ResourceType, pack, type_url};

const MESH: &str = "spiffe://t.sb/mesh/m/service/";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

fn san(
    kind: subject_alt_name_matcher::SanType,
    m: string_matcher::MatchPattern,
) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: kind as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(m),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mesh_common(sans: Vec<SubjectAltNameMatcher>) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds("default")],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds("ROOTCA")),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

fn socket(any: switchboard_xds_proto::Any) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any)),
    }
}

/// `sidecar/inbound` as a mesh control plane sends it: strict, or permissive (TLS inspector,
/// a TLS chain and a plaintext one).
fn inbound(permissive: bool) -> switchboard_xds_proto::pb::envoy::config::listener::v3::Listener {
    let mut l = http_listener("sidecar/inbound", 15006, "inbound");
    let ctx = DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(mesh_common(vec![san(
            subject_alt_name_matcher::SanType::Uri,
            string_matcher::MatchPattern::Prefix(MESH.to_owned()),
        )])),
        ..Default::default()
    };
    l.filter_chains[0].transport_socket = Some(socket(pack(&ctx)));
    if permissive {
        let plain = l.filter_chains[0].clone();
        l.filter_chains[0].filter_chain_match = Some(FilterChainMatch {
            transport_protocol: "tls".to_owned(),
            ..Default::default()
        });
        let mut plain = plain;
        plain.transport_socket = None;
        l.filter_chains.push(plain);
        l.listener_filters = vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".to_owned(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(
                switchboard_xds_proto::Any {
                    type_url: type_url::TLS_INSPECTOR.to_owned(),
                    value: vec![],
                },
            )),
            ..Default::default()
        }];
    }
    l
}

fn upstream(service: &str) -> UpstreamTlsContext {
    UpstreamTlsContext {
        sni: format!("outbound_.80_._.{service}"),
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["h2".to_owned()],
            ..mesh_common(vec![san(
                subject_alt_name_matcher::SanType::Uri,
                string_matcher::MatchPattern::Exact(format!("{MESH}{service}")),
            )])
        }),
        ..Default::default()
    }
}

fn err<T: std::fmt::Debug, E: ToString>(r: Result<T, E>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn mesh_listeners_convert_strict_and_permissive() {
    let l = Listener::try_from(inbound(false)).unwrap();
    let tls = l.tls.as_ref().unwrap();
    assert_eq!(tls.certificate_chain, DataSource::Sds("default".into()));
    let v = tls.client_validation.as_ref().unwrap();
    assert!(v.required);
    assert_eq!(v.trusted_ca, DataSource::Sds("ROOTCA".into()));
    assert_eq!(v.san_matchers[0].san_type, SanType::Uri);
    assert_eq!(v.san_matchers[0].matcher, SanMatch::Prefix(MESH.into()));
    assert_eq!(l.secret_names(), ["default", "ROOTCA"]);
    assert!(l.plaintext.is_none());

    let l = Listener::try_from(inbound(true)).unwrap();
    assert!(l.tls.is_some());
    assert!(l.plaintext.is_some());
    assert_eq!(l.all_route_names(), ["inbound", "inbound"]);
}

#[test]
fn unsupported_sds_shapes_are_refused_naming_the_field() {
    // An SDS source other than ADS.
    let mut l = inbound(false);
    let mut ctx = DownstreamTlsContext::default();
    let mut common = mesh_common(vec![]);
    common.tls_certificate_sds_secret_configs[0].sds_config = Some(ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Self_(
            Default::default(),
        )),
        ..Default::default()
    });
    ctx.common_tls_context = Some(common);
    l.filter_chains[0].transport_socket = Some(socket(pack(&ctx)));
    let e = err(Listener::try_from(l));
    assert!(
        e.contains("tls_certificate_sds_secret_configs[0].sds_config: only SDS over ADS"),
        "{e}"
    );

    // A SAN type other than URI and DNS.
    let mut l = inbound(false);
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(mesh_common(vec![san(
            subject_alt_name_matcher::SanType::Email,
            string_matcher::MatchPattern::Exact("a@b".to_owned()),
        )])),
        ..Default::default()
    };
    l.filter_chains[0].transport_socket = Some(socket(pack(&ctx)));
    let e = err(Listener::try_from(l));
    assert!(
        e.contains("match_typed_subject_alt_names[0].san_type: EMAIL is not supported"),
        "{e}"
    );

    // A regex SAN matcher.
    let mut l = inbound(false);
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(mesh_common(vec![san(
            subject_alt_name_matcher::SanType::Uri,
            string_matcher::MatchPattern::Suffix("/b".to_owned()),
        )])),
        ..Default::default()
    };
    l.filter_chains[0].transport_socket = Some(socket(pack(&ctx)));
    let e = err(Listener::try_from(l));
    assert!(e.contains("matcher: unsupported field suffix"), "{e}");

    // A filter chain match on something else than the transport protocol or server names.
    let mut l = inbound(true);
    l.filter_chains[1].filter_chain_match = Some(FilterChainMatch {
        source_type: 1,
        ..Default::default()
    });
    let e = err(Listener::try_from(l));
    assert!(
        e.contains("filter_chains[1].filter_chain_match: unsupported field source_type"),
        "{e}"
    );

    // An upstream context with nothing to verify the server by.
    let mut c = eds_cluster("b");
    c.transport_socket = Some(socket(pack(&UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("default")],
            ..Default::default()
        }),
        ..Default::default()
    })));
    let e = err(Cluster::try_from(c));
    assert!(
        e.contains("transport_socket.typed_config.common_tls_context: a validation context"),
        "{e}"
    );
}

#[test]
fn clusters_convert_tls_and_transport_socket_matches() {
    let mut c = eds_cluster("b");
    c.transport_socket_matches = vec![TransportSocketMatch {
        name: "mtls".to_owned(),
        r#match: Some(Struct {
            fields: [(
                "mtls".to_owned(),
                Value {
                    kind: Some(value::Kind::StringValue("true".to_owned())),
                },
            )]
            .into(),
        }),
        transport_socket: Some(socket(pack(&upstream("b")))),
    }];
    let c = Cluster::try_from(c).unwrap();
    assert!(c.tls.is_none());
    let tls = c.tls_matches[0].tls.as_ref().unwrap();
    assert_eq!(tls.sni.as_deref(), Some("outbound_.80_._.b"));
    assert_eq!(tls.alpn_protocols, ["h2"]);
    assert_eq!(
        tls.validation.san_matchers[0].matcher,
        SanMatch::Exact(format!("{MESH}b"))
    );
    assert_eq!(c.secret_names(), ["default", "ROOTCA"]);
    let labels = [("mtls".to_owned(), "true".to_owned())].into();
    assert_eq!(
        c.transport_for(&labels),
        switchboard_proxy_xds::config::cluster::TransportChoice::Match(0)
    );
    assert_eq!(
        c.transport_for(&Default::default()),
        switchboard_proxy_xds::config::cluster::TransportChoice::Default
    );
}

fn pb_cert(name: &str) -> PbSecret {
    PbSecret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(PbDataSource {
                specifier: Some(data_source::Specifier::InlineString("CHAIN".to_owned())),
                ..Default::default()
            }),
            private_key: Some(PbDataSource {
                specifier: Some(data_source::Specifier::InlineString(KEY.to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

fn pb_roots(name: &str) -> PbSecret {
    PbSecret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(PbDataSource {
                    specifier: Some(data_source::Specifier::InlineString("CA".to_owned())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

#[tokio::test]
async fn the_client_subscribes_to_the_secrets_listeners_name_and_dumps_no_key() {
    let mut server = AdsServer::start().await.unwrap();
    let bootstrap = Bootstrap {
        xds_address: server.url(),
        node_id: "tenants/acme/meshes/prod/nodes/p-1".to_owned(),
        metadata: Default::default(),
        token_file: None,
        xds_ca_file: None,
        xds_client_cert_file: None,
        xds_client_key_file: None,
        ads_config: AdsConfig {
            api_type: Some(ApiType::Grpc),
        },
    };
    let store = ConfigStore::new();
    let options = ClientOptions {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(1),
    };
    let client = XdsClient::new(bootstrap, &store, options);
    let dump = client.config_dump();
    let mut handle = client.spawn();
    server.next_of(type_url::LISTENER).await.unwrap();
    server.respond(response(type_url::CLUSTER, "c1", "n0", vec![]));
    server.respond(response(
        type_url::LISTENER,
        "1",
        "n1",
        vec![pack(&inbound(false))],
    ));
    let sds_request = server.next_of(type_url::SECRET).await.unwrap();
    let mut names = sds_request.request.resource_names.clone();
    names.sort();
    assert_eq!(names, ["ROOTCA", "default"]);
    let routes = switchboard_xds_proto::pb::envoy::config::route::v3::RouteConfiguration {
        name: "inbound".to_owned(),
        ..Default::default()
    };
    server.respond(response(
        type_url::ROUTE_CONFIGURATION,
        "r1",
        "n2",
        vec![pack(&routes)],
    ));
    assert!(!handle.is_ready(), "ready before the secrets arrived");

    // A bad secret is NACKed by name; the good one applies.
    let mut bad = pb_roots("ROOTCA");
    bad.r#type = Some(secret::Type::ValidationContext(
        CertificateValidationContext::default(),
    ));
    server.respond(response(
        type_url::SECRET,
        "s1",
        "n3",
        vec![pack(&pb_cert("default")), pack(&bad)],
    ));
    let nack = server.next_of(type_url::SECRET).await.unwrap().request;
    let detail = nack.error_detail.expect("NACK").message;
    assert!(
        detail.contains("ROOTCA: secret \"ROOTCA\": validation_context.trusted_ca: required"),
        "{detail}"
    );
    server.respond(response(
        type_url::SECRET,
        "s2",
        "n4",
        vec![pack(&pb_cert("default")), pack(&pb_roots("ROOTCA"))],
    ));
    let ack = server.next_of(type_url::SECRET).await.unwrap().request;
    assert_eq!((ack.version_info.as_str(), ack.error_detail), ("s2", None));
    eventually("both secrets applied", || async {
        (store.snapshot().secrets.len() == 2).then_some(())
    })
    .await;
    assert!(matches!(
        *store.snapshot().secrets["default"],
        Secret::TlsCertificate { .. }
    ));
    tokio::time::timeout(Duration::from_secs(10), handle.ready())
        .await
        .unwrap();

    let entries = dump.entries(ResourceType::Secret);
    assert_eq!(entries.len(), 2);
    for (name, entry) in entries {
        let applied = entry.applied.expect("applied");
        assert_eq!(applied.version, "s2", "{name}");
        let bytes = String::from_utf8_lossy(&applied.resource.value).into_owned();
        assert!(!bytes.contains("c2VjcmV0"), "key in the dump of {name}");
    }

    // The listener gone, the secrets are no longer needed.
    server.respond(response(type_url::LISTENER, "2", "n5", vec![]));
    eventually("the secrets dropped", || async {
        store.snapshot().secrets.is_empty().then_some(())
    })
    .await;
}
