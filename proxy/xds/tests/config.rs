#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Envoy protos → the proxy's config types: what converts, and the precise rejections.

use std::time::Duration;

use switchboard_proxy_xds::config::cluster::{Cluster, Discovery, LbPolicy};
use switchboard_proxy_xds::config::endpoint::{Health, LoadAssignment};
use switchboard_proxy_xds::config::listener::{Listener, ListenerKind};
use switchboard_proxy_xds::config::route::{Action, Clusters, RouteConfig, ValueMatch};
use switchboard_proxy_xds::testing::resources::{
    eds_cluster, http_listener, listener_with, load_assignment, redis_listener, regex_route_config,
    route_config,
};
use switchboard_xds_proto::pack;
use switchboard_xds_proto::pb::envoy::config::cluster::v3::cluster;
use switchboard_xds_proto::pb::envoy::config::core::v3::HealthStatus;
use switchboard_xds_proto::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, header_matcher, route,
};
use switchboard_xds_proto::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy,
};
use switchboard_xds_proto::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

/// What became of the mutated encodings of one seed resource, decoded as the seed's own type.
#[derive(Debug, Default)]
struct Reached {
    /// Inputs that decoded and so went through conversion.
    converted: usize,
    accepted: usize,
    rejected: usize,
}

impl Reached {
    /// Decodes `bytes` as `M` and converts it. A rejection must name where in which
    /// resource (`root` is its kind: `listener "…"`) and what is wrong.
    fn convert<M, T>(&mut self, bytes: &[u8], root: &str)
    where
        M: prost::Message + Default,
        T: TryFrom<M, Error = switchboard_proxy_xds::ConfigError>,
    {
        let Ok(m) = M::decode(bytes) else {
            return;
        };
        self.converted += 1;
        match T::try_from(m) {
            Ok(_) => self.accepted += 1,
            Err(e) => {
                assert!(
                    e.path.starts_with(&format!("{root} \"")) && !e.message.is_empty(),
                    "a rejection that names nothing: {e:?}"
                );
                self.rejected += 1;
            }
        }
    }

    /// Mutated inputs must reach conversion, and conversion must both accept and reject
    /// some: otherwise the loop exercises the decoder, not the conversion. Random byte
    /// flips kill many encodings in the decoder (a length, a tag, a string field's UTF-8):
    /// about one in ten of the route and cluster mutations get through, and up to one in
    /// two of the listener ones; one in twenty is the floor.
    fn assert_substantial(&self, seed: &str, inputs: usize) {
        assert!(
            self.converted * 20 >= inputs,
            "{seed}: only {self:?} of {inputs} mutated inputs reached conversion"
        );
        assert!(
            self.accepted > 0 && self.rejected > 0,
            "{seed}: conversion never both accepted and rejected: {self:?}"
        );
    }
}

fn err<T, E: ToString>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn http_and_tcp_listeners_convert() {
    let l = Listener::try_from(http_listener("out", 15001, "rc")).unwrap();
    assert_eq!(l.route_names(), Some("rc"));
    let tcp = TcpProxy {
        stat_prefix: "db".to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("db".to_owned())),
        ..Default::default()
    };
    let l = Listener::try_from(listener_with(
        "db",
        5432,
        "envoy.filters.network.tcp_proxy",
        pack(&tcp),
    ))
    .unwrap();
    assert!(matches!(l.kind, ListenerKind::Tcp(ref t) if t.clusters == Clusters::One("db".into())));
    assert_eq!(l.route_names(), None);
}

#[test]
fn listener_rejections_name_the_field() {
    let redis = redis_listener("x", 1);
    assert!(err(Listener::try_from(redis)).starts_with(
        "listener \"x\": filter_chains[0].filters[0]: unsupported filter envoy.filters.network.redis_proxy"
    ));
    let mut l = http_listener("x", 1, "rc");
    l.per_connection_buffer_limit_bytes = Some(UInt32Value { value: 1 });
    assert!(
        err(Listener::try_from(l))
            .starts_with("listener \"x\": unsupported field per_connection_buffer_limit_bytes")
    );
    let mut l = http_listener("x", 1, "rc");
    l.filter_chains.push(l.filter_chains[0].clone());
    assert_eq!(
        err(Listener::try_from(l)),
        "listener \"x\": filter_chains: exactly one filter chain is supported, got 2"
    );
    let mut l = http_listener("x", 1, "rc");
    l.address = None;
    assert!(err(Listener::try_from(l)).contains("an address is required"));
}

#[test]
fn routes_convert_matchers_and_actions() {
    let mut rc = route_config("rc", "Shop.Example", "pay");
    let r = &mut rc.virtual_hosts[0].routes[0];
    r.r#match.as_mut().unwrap().headers.push(HeaderMatcher {
        name: "X-Env".to_owned(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
        invert_match: true,
        ..Default::default()
    });
    let mut direct = r.clone();
    direct.action = Some(route::Action::DirectResponse(DirectResponseAction {
        status: 404,
        ..Default::default()
    }));
    rc.virtual_hosts[0].routes.push(direct);
    let rc = RouteConfig::try_from(rc).unwrap();
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, ["shop.example"]);
    let h = &vh.routes[0].matcher.headers[0];
    assert_eq!(
        (h.name.as_str(), &h.value, h.invert),
        ("x-env", &ValueMatch::Present, true)
    );
    let Action::Forward(f) = &vh.routes[0].action else {
        panic!()
    };
    assert_eq!(f.timeout, Some(Duration::from_secs(15)), "Envoy's default");
    assert_eq!(
        vh.routes[1].action,
        Action::Direct {
            status: 404,
            body: None
        }
    );
    assert_eq!(rc.cluster_names(), ["pay"]);
}

#[test]
fn route_rejections_name_the_field() {
    assert!(err(RouteConfig::try_from(regex_route_config("rc", "(", "pay"))).starts_with(
        "route configuration \"rc\": virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex"
    ));
    let mut rc = route_config("rc", "*", "pay");
    rc.virtual_hosts[0].require_tls = 1;
    assert_eq!(
        err(RouteConfig::try_from(rc)).split(" (").next().unwrap(),
        "route configuration \"rc\": virtual_hosts[0]: unsupported field require_tls"
    );
}

#[test]
fn clusters_convert_and_reject() {
    let c = Cluster::try_from(eds_cluster("pay")).unwrap();
    assert_eq!(c.eds_name(), Some("pay"));
    assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(c.connect_timeout, Duration::from_secs(5));

    let mut s = eds_cluster("local");
    s.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::Static as i32,
    ));
    s.eds_cluster_config = None;
    s.load_assignment = Some(load_assignment(
        "local",
        &["127.0.0.1:8080".parse().unwrap()],
    ));
    s.connect_timeout = Some(PbDuration {
        seconds: 1,
        nanos: 0,
    });
    let c = Cluster::try_from(s).unwrap();
    assert!(matches!(c.discovery, Discovery::Static(_)));
    assert_eq!(c.eds_name(), None);

    let mut bad = eds_cluster("pay");
    bad.lb_policy = cluster::LbPolicy::Maglev as i32;
    assert_eq!(
        err(Cluster::try_from(bad)),
        "cluster \"pay\": lb_policy: unsupported lb_policy MAGLEV"
    );
    let mut dns = eds_cluster("pay");
    dns.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::StrictDns as i32,
    ));
    dns.eds_cluster_config = None;
    assert_eq!(
        err(Cluster::try_from(dns)),
        "cluster \"pay\": type: only EDS (with eds_cluster_config) and STATIC (with load_assignment) are supported"
    );
}

#[test]
fn load_assignments_convert_and_reject() {
    let mut cla = load_assignment(
        "pay",
        &[
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ],
    );
    cla.endpoints[0].lb_endpoints[1].health_status = HealthStatus::Draining as i32;
    let la = LoadAssignment::try_from(cla.clone()).unwrap();
    assert_eq!(la.localities[0].endpoints[1].health, Health::Draining);
    assert_eq!(la.localities[0].endpoints[0].weight, 1);

    cla.endpoints[0].priority = 2;
    assert!(err(LoadAssignment::try_from(cla)).contains("priorities must be contiguous from 0"));
    let mut dns = load_assignment("pay", &["10.0.0.1:80".parse().unwrap()]);
    if let Some(switchboard_xds_proto::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep)) =
        &mut dns.endpoints[0].lb_endpoints[0].host_identifier
    {
        ep.address = Some(switchboard_proxy_xds::testing::resources::address(
            "10.0.0.1:80".parse().unwrap(),
        ));
        if let Some(switchboard_xds_proto::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
            &mut ep.address.as_mut().unwrap().address
        {
            sa.address = "pay.svc".to_owned();
        }
    }
    assert!(err(LoadAssignment::try_from(dns)).contains("\"pay.svc\" is not an IP address"));
}

/// In the spirit of ztunnel's protobuf fuzz target: corrupted encodings of valid resources
/// either fail to decode or convert to a result (a rejection naming where), never a panic;
/// and enough of them decode to put the conversion, not only the decoder, under test.
#[test]
fn corrupted_resources_never_panic() {
    use prost::Message;
    use rand::{Rng, SeedableRng};
    use switchboard_xds_proto::pb::envoy::config::cluster::v3::Cluster as PbCluster;
    use switchboard_xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use switchboard_xds_proto::pb::envoy::config::listener::v3::Listener as PbListener;
    use switchboard_xds_proto::pb::envoy::config::route::v3::RouteConfiguration;

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let seeds = [
        (
            "listener",
            http_listener("out", 15001, "rc").encode_to_vec(),
        ),
        (
            "route configuration",
            regex_route_config("rc", "/a/.*", "pay").encode_to_vec(),
        ),
        ("cluster", eds_cluster("pay").encode_to_vec()),
        (
            "cluster load assignment",
            load_assignment("pay", &["10.0.0.1:80".parse().unwrap()]).encode_to_vec(),
        ),
    ];
    const ROUNDS: usize = 3000;
    // reached[seed][type]: every mutated input is also decoded as the other three types.
    let mut reached: [[Reached; 4]; 4] = Default::default();
    for _ in 0..ROUNDS {
        for ((_, seed), reached) in seeds.iter().zip(&mut reached) {
            let mut bytes = seed.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            let [l, r, c, e] = reached;
            l.convert::<PbListener, Listener>(&bytes, "listener");
            r.convert::<RouteConfiguration, RouteConfig>(&bytes, "route configuration");
            c.convert::<PbCluster, Cluster>(&bytes, "cluster");
            e.convert::<ClusterLoadAssignment, LoadAssignment>(&bytes, "cluster load assignment");
        }
    }
    for (i, (kind, _)) in seeds.iter().enumerate() {
        reached[i][i].assert_substantial(kind, ROUNDS);
    }
}

// --- Listener limits, TCP proxy and TLS (the listener/connection side of the data path) ---

mod listener_side {
    use std::time::Duration;

    use switchboard_proxy_xds::config::listener::{
        DataSource, HttpLimits, Keepalive, Listener, ListenerKind,
    };
    use switchboard_proxy_xds::config::route::Clusters;
    use switchboard_proxy_xds::testing::resources::{http_listener, listener_with};
    use switchboard_xds_proto::pb::envoy::config::core::v3::{
        DataSource as PbDataSource, Http2ProtocolOptions, HttpProtocolOptions, KeepaliveSettings,
        TransportSocket, data_source, transport_socket,
    };
    use switchboard_xds_proto::pb::envoy::config::listener::v3::{
        Listener as PbListener, filter,
    };
    use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as PbHcm;
    use switchboard_xds_proto::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        TcpProxy, tcp_proxy,
    };
    use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
        TlsCertificate, common_tls_context,
    };
    use switchboard_xds_proto::pb::google::protobuf::{
        BoolValue, Duration as PbDuration, UInt32Value,
    };
    use switchboard_xds_proto::{pack, type_url, unpack};

    use super::err;

    fn secs(s: i64) -> Option<PbDuration> {
        Some(PbDuration {
            seconds: s,
            nanos: 0,
        })
    }

    fn u32v(v: u32) -> Option<UInt32Value> {
        Some(UInt32Value { value: v })
    }

    /// `http_listener("x", 1, "rc")` with its HCM edited.
    fn hcm_listener(edit: impl FnOnce(&mut PbHcm)) -> PbListener {
        let mut l = http_listener("x", 1, "rc");
        let Some(filter::ConfigType::TypedConfig(any)) =
            &mut l.filter_chains[0].filters[0].config_type
        else {
            unreachable!()
        };
        let mut hcm: PbHcm = unpack(any).unwrap();
        edit(&mut hcm);
        *any = pack(&hcm);
        l
    }

    fn tcp_listener(t: TcpProxy) -> PbListener {
        listener_with("db", 5432, "envoy.filters.network.tcp_proxy", pack(&t))
    }

    fn inline(s: &str) -> Option<PbDataSource> {
        Some(PbDataSource {
            specifier: Some(data_source::Specifier::InlineString(s.to_owned())),
            ..Default::default()
        })
    }

    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";

    fn tls_context() -> DownstreamTlsContext {
        DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: inline("-----BEGIN CERTIFICATE-----\n..."),
                    private_key: inline(KEY),
                    ..Default::default()
                }],
                alpn_protocols: vec!["h2".to_owned(), "http/1.1".to_owned()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tls_listener(ctx: DownstreamTlsContext) -> PbListener {
        let mut l = http_listener("x", 1, "rc");
        l.filter_chains[0].transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".to_owned(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&ctx))),
        });
        l
    }

    fn limits(l: PbListener) -> HttpLimits {
        match Listener::try_from(l).unwrap().kind {
            ListenerKind::Http(h) => h.limits,
            other => panic!("not HTTP: {other:?}"),
        }
    }

    #[test]
    fn hcm_limits_have_documented_defaults_and_convert() {
        let defaults = limits(http_listener("x", 1, "rc"));
        assert_eq!(defaults, HttpLimits::default());
        assert_eq!(defaults.max_request_headers_bytes, 60 * 1024);
        assert_eq!(defaults.max_headers_count, 100);
        assert_eq!(
            defaults.request_headers_timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(defaults.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(defaults.stream_idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(defaults.max_concurrent_streams, 1024);
        assert_eq!(defaults.http2_keepalive, None);

        let set = limits(hcm_listener(|h| {
            h.max_request_headers_kb = u32v(8);
            h.request_headers_timeout = secs(2);
            h.stream_idle_timeout = secs(40);
            h.common_http_protocol_options = Some(HttpProtocolOptions {
                idle_timeout: secs(30),
                max_headers_count: u32v(20),
                ..Default::default()
            });
            h.http2_protocol_options = Some(Http2ProtocolOptions {
                max_concurrent_streams: u32v(7),
                initial_stream_window_size: u32v(1 << 20),
                connection_keepalive: Some(KeepaliveSettings {
                    interval: secs(5),
                    timeout: secs(1),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }));
        assert_eq!(
            set,
            HttpLimits {
                max_request_headers_bytes: 8 * 1024,
                max_headers_count: 20,
                request_headers_timeout: Some(Duration::from_secs(2)),
                stream_idle_timeout: Some(Duration::from_secs(40)),
                idle_timeout: Some(Duration::from_secs(30)),
                max_concurrent_streams: 7,
                initial_stream_window_size: Some(1 << 20),
                initial_connection_window_size: None,
                http2_keepalive: Some(Keepalive {
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(1),
                }),
            }
        );

        // Zero disables a timeout, as in Envoy.
        let off = limits(hcm_listener(|h| {
            h.request_headers_timeout = secs(0);
            h.stream_idle_timeout = secs(0);
            h.common_http_protocol_options = Some(HttpProtocolOptions {
                idle_timeout: secs(0),
                ..Default::default()
            });
        }));
        assert_eq!(
            (
                off.request_headers_timeout,
                off.stream_idle_timeout,
                off.idle_timeout
            ),
            (None, None, None)
        );
    }

    #[test]
    fn hcm_limit_rejections_name_the_field() {
        type Edit = fn(&mut PbHcm);
        let cases: [(Edit, &str); 5] = [
            (
                |h| h.max_request_headers_kb = u32v(9000),
                "max_request_headers_kb: 9000 is out of range (1 to 8192)",
            ),
            (
                |h| {
                    h.common_http_protocol_options = Some(HttpProtocolOptions {
                        max_stream_duration: secs(1),
                        ..Default::default()
                    })
                },
                "common_http_protocol_options: unsupported field max_stream_duration",
            ),
            (
                |h| {
                    h.http2_protocol_options = Some(Http2ProtocolOptions {
                        max_concurrent_streams: u32v(0),
                        ..Default::default()
                    })
                },
                "http2_protocol_options.max_concurrent_streams: 0 is out of range",
            ),
            (
                |h| {
                    h.common_http_protocol_options = Some(HttpProtocolOptions {
                        max_headers_count: u32v(u32::MAX),
                        ..Default::default()
                    })
                },
                "max_headers_count: 4294967295 is out of range (1 to 8192)",
            ),
            (
                |h| h.request_timeout = secs(1),
                "unsupported field request_timeout",
            ),
        ];
        for (edit, says) in cases {
            let e = err(Listener::try_from(hcm_listener(edit)));
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn tcp_proxy_converts_weights_timeouts_and_attempts() {
        let l = Listener::try_from(tcp_listener(TcpProxy {
            stat_prefix: "db".to_owned(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("db".to_owned())),
            ..Default::default()
        }))
        .unwrap();
        let ListenerKind::Tcp(t) = l.kind else {
            panic!("not TCP")
        };
        assert_eq!(t.clusters, Clusters::One("db".into()));
        assert_eq!(t.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(t.max_connect_attempts, 1);

        let weighted = tcp_proxy::WeightedCluster {
            clusters: vec![
                tcp_proxy::weighted_cluster::ClusterWeight {
                    name: "a".to_owned(),
                    weight: 3,
                    ..Default::default()
                },
                tcp_proxy::weighted_cluster::ClusterWeight {
                    name: "b".to_owned(),
                    weight: 1,
                    ..Default::default()
                },
            ],
        };
        let l = Listener::try_from(tcp_listener(TcpProxy {
            stat_prefix: "db".to_owned(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::WeightedClusters(weighted)),
            idle_timeout: secs(0),
            max_connect_attempts: u32v(3),
            ..Default::default()
        }))
        .unwrap();
        let ListenerKind::Tcp(t) = l.kind else {
            panic!("not TCP")
        };
        assert_eq!(
            t.clusters,
            Clusters::Weighted(vec![("a".into(), 3), ("b".into(), 1)])
        );
        assert_eq!((t.idle_timeout, t.max_connect_attempts), (None, 3));
    }

    #[test]
    fn tcp_proxy_rejections_name_the_field() {
        let base = || TcpProxy {
            stat_prefix: "db".to_owned(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("db".to_owned())),
            ..Default::default()
        };
        let mut t = base();
        t.max_downstream_connection_duration = secs(5);
        let e = err(Listener::try_from(tcp_listener(t)));
        assert!(
            e.starts_with(
                "listener \"db\": filter_chains[0].filters[0].typed_config: unsupported field \
                 max_downstream_connection_duration"
            ),
            "{e}"
        );
        let mut t = base();
        t.max_connect_attempts = u32v(0);
        let e = err(Listener::try_from(tcp_listener(t)));
        assert!(
            e.ends_with("max_connect_attempts: must be at least 1"),
            "{e}"
        );
        let mut t = base();
        t.cluster_specifier = None;
        let e = err(Listener::try_from(tcp_listener(t)));
        assert!(
            e.ends_with("cluster or weighted_clusters is required"),
            "{e}"
        );
    }

    #[test]
    fn tls_transport_socket_converts_and_never_shows_the_key() {
        let l = Listener::try_from(tls_listener(tls_context())).unwrap();
        let tls = l.tls.as_ref().expect("TLS");
        assert_eq!(tls.alpn_protocols, ["h2", "http/1.1"]);
        assert_eq!(tls.private_key, DataSource::Inline(KEY.as_bytes().to_vec()));
        assert_eq!(tls.client_validation, None);
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        let debug = format!("{l:?}");
        assert!(
            !debug.contains("c2VjcmV0"),
            "key material in Debug: {debug}"
        );
        assert!(
            !debug.contains("PRIVATE KEY"),
            "key material in Debug: {debug}"
        );
        assert!(debug.contains("<redacted>"), "{debug}");

        // mTLS with a CA file; the key by file name.
        let mut ctx = tls_context();
        ctx.require_client_certificate = Some(BoolValue { value: true });
        let common = ctx.common_tls_context.as_mut().unwrap();
        common.tls_certificates[0].private_key = Some(PbDataSource {
            specifier: Some(data_source::Specifier::Filename("/etc/k.pem".to_owned())),
            ..Default::default()
        });
        common.validation_context_type = Some(
            common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(PbDataSource {
                        specifier: Some(data_source::Specifier::InlineBytes(b"CA".to_vec())),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        );
        let l = Listener::try_from(tls_listener(ctx)).unwrap();
        let tls = l.tls.unwrap();
        let v = tls.client_validation.unwrap();
        assert!(v.required);
        assert_eq!(v.trusted_ca, DataSource::Inline(b"CA".to_vec()));
        assert_eq!(tls.private_key, DataSource::File("/etc/k.pem".into()));
    }

    /// Corrupted encodings of TLS, TCP proxy and limit-laden listeners either fail to decode
    /// or convert to a result, never a panic; enough of them reach the conversion.
    #[test]
    fn corrupted_listener_side_resources_never_panic() {
        use prost::Message;
        use rand::{Rng, SeedableRng};

        let mut ctx = tls_context();
        ctx.require_client_certificate = Some(BoolValue { value: true });
        ctx.common_tls_context
            .as_mut()
            .unwrap()
            .validation_context_type = Some(
            common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline("CA"),
                    ..Default::default()
                },
            ),
        );
        let weighted = tcp_proxy::WeightedCluster {
            clusters: vec![tcp_proxy::weighted_cluster::ClusterWeight {
                name: "a".to_owned(),
                weight: 3,
                ..Default::default()
            }],
        };
        let seeds = [
            tls_listener(ctx).encode_to_vec(),
            tcp_listener(TcpProxy {
                stat_prefix: "db".to_owned(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::WeightedClusters(weighted)),
                idle_timeout: secs(5),
                max_connect_attempts: u32v(3),
                ..Default::default()
            })
            .encode_to_vec(),
            hcm_listener(|h| {
                h.max_request_headers_kb = u32v(8);
                h.request_headers_timeout = secs(2);
                h.http2_protocol_options = Some(Http2ProtocolOptions {
                    max_concurrent_streams: u32v(7),
                    connection_keepalive: Some(KeepaliveSettings {
                        interval: secs(5),
                        timeout: secs(1),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            })
            .encode_to_vec(),
        ];
        const ROUNDS: usize = 3000;
        let mut reached: [super::Reached; 3] = Default::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..ROUNDS {
            for (seed, reached) in seeds.iter().zip(&mut reached) {
                let mut bytes = seed.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] = rng.random();
                }
                reached.convert::<PbListener, Listener>(&bytes, "listener");
            }
        }
        for (seed, reached) in ["TLS", "TCP proxy", "HCM limits"].iter().zip(&reached) {
            reached.assert_substantial(seed, ROUNDS);
        }
    }

    #[test]
    fn tls_rejections_are_precise() {
        let mut ctx = tls_context();
        ctx.common_tls_context
            .as_mut()
            .unwrap()
            .tls_certificate_sds_secret_configs
            .push(SdsSecretConfig {
                name: "cert".to_owned(),
                ..Default::default()
            });
        let e = err(Listener::try_from(tls_listener(ctx)));
        assert!(
            e.contains(
                "transport_socket.typed_config.common_tls_context.tls_certificates: give the \
                 certificate either in tls_certificates or in tls_certificate_sds_secret_configs"
            ),
            "{e}"
        );

        let mut ctx = tls_context();
        ctx.require_client_certificate = Some(BoolValue { value: true });
        let e = err(Listener::try_from(tls_listener(ctx)));
        assert!(
            e.contains("require_client_certificate: client certificates cannot be verified"),
            "{e}"
        );

        let mut ctx = tls_context();
        ctx.require_sni = Some(BoolValue { value: true });
        let e = err(Listener::try_from(tls_listener(ctx)));
        assert!(e.contains("unsupported field require_sni"), "{e}");

        let mut ctx = tls_context();
        ctx.common_tls_context.as_mut().unwrap().tls_certificates[0].private_key =
            Some(PbDataSource {
                specifier: Some(data_source::Specifier::EnvironmentVariable("K".to_owned())),
                ..Default::default()
            });
        let e = err(Listener::try_from(tls_listener(ctx)));
        assert!(
            e.contains("tls_certificates[0].private_key: unsupported field environment_variable"),
            "{e}"
        );

        let mut ctx = tls_context();
        ctx.common_tls_context
            .as_mut()
            .unwrap()
            .tls_certificates
            .clear();
        let e = err(Listener::try_from(tls_listener(ctx)));
        assert!(
            e.contains("tls_certificates: exactly one certificate is supported, got 0"),
            "{e}"
        );

        let mut l = tls_listener(tls_context());
        l.filter_chains[0].transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.raw_buffer".to_owned(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(
                switchboard_xds_proto::Any {
                    type_url: format!(
                        "{}envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
                        type_url::PREFIX
                    ),
                    value: vec![],
                },
            )),
        });
        let e = err(Listener::try_from(l));
        assert!(
            e.contains(
                "transport_socket: unsupported transport socket envoy.transport_sockets.raw_buffer"
            ),
            "{e}"
        );
    }
}

/// Ring hash, hash policies, retry budgets and outlier detection: what converts, with
/// Envoy's defaults, and the precise rejections.
mod resilience_config {
    use std::time::Duration;

    use switchboard_proxy_xds::config::cluster::{Cluster, LbPolicy, RingHashConfig};
    use switchboard_proxy_xds::config::route::{Action, HashOn, HashPolicy, RouteConfig};
    use switchboard_proxy_xds::testing::resources::{eds_cluster, route_config};
    use switchboard_xds_proto::pb::envoy::config::cluster::v3::{
        CircuitBreakers, OutlierDetection, circuit_breakers::Thresholds,
        circuit_breakers::thresholds::RetryBudget, cluster,
    };
    use switchboard_xds_proto::pb::envoy::config::route::v3::{route, route_action};
    use switchboard_xds_proto::pb::envoy::r#type::v3::Percent;
    use switchboard_xds_proto::pb::google::protobuf::{
        BoolValue, Duration as PbDuration, UInt32Value, UInt64Value,
    };

    use super::err;

    fn ring_cluster(config: Option<cluster::RingHashLbConfig>) -> Result<Cluster, String> {
        let mut c = eds_cluster("pay");
        c.lb_policy = cluster::LbPolicy::RingHash as i32;
        c.lb_config = config.map(cluster::LbConfig::RingHashLbConfig);
        Cluster::try_from(c).map_err(|e| e.to_string())
    }

    fn secs(seconds: i64) -> Option<PbDuration> {
        Some(PbDuration { seconds, nanos: 0 })
    }

    #[test]
    fn ring_hash_config_converts_and_rejects() {
        let c = ring_cluster(None).unwrap();
        assert_eq!(c.lb_policy, LbPolicy::RingHash(RingHashConfig::default()));
        assert_eq!(
            RingHashConfig::default(),
            RingHashConfig {
                minimum_ring_size: 1024,
                maximum_ring_size: 8 * 1024 * 1024
            }
        );
        let c = ring_cluster(Some(cluster::RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: 64 }),
            maximum_ring_size: Some(UInt64Value { value: 4096 }),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            c.lb_policy,
            LbPolicy::RingHash(RingHashConfig {
                minimum_ring_size: 64,
                maximum_ring_size: 4096
            })
        );
        let murmur = ring_cluster(Some(cluster::RingHashLbConfig {
            hash_function: cluster::ring_hash_lb_config::HashFunction::MurmurHash2 as i32,
            ..Default::default()
        }));
        assert_eq!(
            err(murmur),
            "cluster \"pay\": ring_hash_lb_config.hash_function: MURMUR_HASH_2 is not supported \
             (only XX_HASH, the default, places hosts on the ring)"
        );
        let inverted = ring_cluster(Some(cluster::RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: 10 }),
            maximum_ring_size: Some(UInt64Value { value: 5 }),
            ..Default::default()
        }));
        assert_eq!(
            err(inverted),
            "cluster \"pay\": ring_hash_lb_config: minimum_ring_size (10) is larger than \
             maximum_ring_size (5)"
        );
        let huge = ring_cluster(Some(cluster::RingHashLbConfig {
            maximum_ring_size: Some(UInt64Value { value: 1 << 24 }),
            ..Default::default()
        }));
        assert!(err(huge).contains("maximum_ring_size: 16777216 is out of range (1 to 8388608)"));
        // Ignored on another policy, as Envoy ignores it.
        let mut rr = eds_cluster("pay");
        rr.lb_config = Some(cluster::LbConfig::RingHashLbConfig(Default::default()));
        assert_eq!(
            Cluster::try_from(rr).unwrap().lb_policy,
            LbPolicy::RoundRobin
        );
        // Other policies' configs are rejected by name.
        let mut maglev = eds_cluster("pay");
        maglev.lb_config = Some(cluster::LbConfig::MaglevLbConfig(Default::default()));
        assert!(err(Cluster::try_from(maglev)).contains("unsupported field maglev_lb_config"));
    }

    #[test]
    fn retry_budget_and_outlier_detection_convert_with_envoys_defaults() {
        let mut c = eds_cluster("pay");
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_retries: Some(UInt32Value { value: 7 }),
                retry_budget: Some(RetryBudget::default()),
                ..Default::default()
            }],
            ..Default::default()
        });
        c.outlier_detection = Some(OutlierDetection {
            base_ejection_time: secs(600),
            ..Default::default()
        });
        let c = Cluster::try_from(c).unwrap();
        let budget = c.circuit_breakers.retry_budget.unwrap();
        assert_eq!(
            (budget.budget_percent, budget.min_retry_concurrency),
            (20.0, 3)
        );
        assert_eq!(c.circuit_breakers.max_retries, 7);
        let od = c.outlier_detection.unwrap();
        // max_ejection_time defaults to 300 s or base_ejection_time, whichever is larger.
        assert_eq!(od.max_ejection_time, Duration::from_secs(600));
        assert_eq!(
            (
                od.consecutive_5xx,
                od.max_ejection_percent,
                od.enforcing_consecutive_5xx,
                od.always_eject_one_host
            ),
            (5, 10, 100, false)
        );

        let mut c = eds_cluster("pay");
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                retry_budget: Some(RetryBudget {
                    budget_percent: Some(Percent { value: 50.0 }),
                    min_retry_concurrency: Some(UInt32Value { value: 1 }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        c.outlier_detection = Some(OutlierDetection {
            max_ejection_time: secs(60),
            always_eject_one_host: Some(BoolValue { value: true }),
            ..Default::default()
        });
        let c = Cluster::try_from(c).unwrap();
        let budget = c.circuit_breakers.retry_budget.unwrap();
        assert_eq!(
            (budget.budget_percent, budget.min_retry_concurrency),
            (50.0, 1)
        );
        let od = c.outlier_detection.unwrap();
        assert_eq!(od.max_ejection_time, Duration::from_secs(60));
        assert!(od.always_eject_one_host);
        assert!(
            Cluster::try_from(eds_cluster("pay"))
                .unwrap()
                .circuit_breakers
                .retry_budget
                .is_none()
        );

        let mut bad = eds_cluster("pay");
        bad.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                retry_budget: Some(RetryBudget {
                    budget_percent: Some(Percent { value: 120.0 }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            err(Cluster::try_from(bad)),
            "cluster \"pay\": circuit_breakers.thresholds[0].retry_budget.budget_percent: \
             120 is not a percentage (0 to 100)"
        );
        let mut interval = eds_cluster("pay");
        interval.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                retry_budget: Some(RetryBudget {
                    budget_interval: secs(1),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(err(Cluster::try_from(interval)).contains("unsupported field budget_interval"));
        let mut short = eds_cluster("pay");
        short.outlier_detection = Some(OutlierDetection {
            base_ejection_time: secs(60),
            max_ejection_time: secs(10),
            ..Default::default()
        });
        assert!(err(Cluster::try_from(short)).contains(
            "outlier_detection.max_ejection_time: 10s is shorter than base_ejection_time (60s)"
        ));
    }

    fn with_hash_policy(policies: Vec<route_action::HashPolicy>) -> Result<RouteConfig, String> {
        let mut rc = route_config("rc", "*", "pay");
        if let Some(route::Action::Route(a)) = &mut rc.virtual_hosts[0].routes[0].action {
            a.hash_policy = policies;
        }
        RouteConfig::try_from(rc).map_err(|e| e.to_string())
    }

    fn policy(
        spec: route_action::hash_policy::PolicySpecifier,
        terminal: bool,
    ) -> route_action::HashPolicy {
        route_action::HashPolicy {
            terminal,
            policy_specifier: Some(spec),
        }
    }

    #[test]
    fn hash_policies_convert_and_reject() {
        use route_action::hash_policy::{
            ConnectionProperties, Cookie, FilterState, Header, PolicySpecifier as P, QueryParameter,
        };
        let rc = with_hash_policy(vec![
            policy(
                P::Header(Header {
                    header_name: "X-User".into(),
                    ..Default::default()
                }),
                true,
            ),
            policy(
                P::Cookie(Cookie {
                    name: "session".into(),
                    ..Default::default()
                }),
                false,
            ),
            policy(
                P::QueryParameter(QueryParameter {
                    name: "user".into(),
                }),
                false,
            ),
            policy(
                P::ConnectionProperties(ConnectionProperties { source_ip: true }),
                false,
            ),
            policy(
                P::ConnectionProperties(ConnectionProperties { source_ip: false }),
                true,
            ),
        ])
        .unwrap();
        let Action::Forward(f) = &rc.virtual_hosts[0].routes[0].action else {
            panic!("not a forward")
        };
        assert_eq!(
            f.hash_policy,
            [
                HashPolicy {
                    on: HashOn::Header("x-user".into()),
                    terminal: true
                },
                HashPolicy {
                    on: HashOn::Cookie("session".into()),
                    terminal: false
                },
                HashPolicy {
                    on: HashOn::QueryParameter("user".into()),
                    terminal: false
                },
                HashPolicy {
                    on: HashOn::SourceIp,
                    terminal: false
                },
                HashPolicy {
                    on: HashOn::Nothing,
                    terminal: true
                },
            ]
        );

        let ttl = with_hash_policy(vec![policy(
            P::Cookie(Cookie {
                name: "session".into(),
                ttl: Some(PbDuration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            false,
        )]);
        assert_eq!(
            err(ttl),
            "route configuration \"rc\": virtual_hosts[0].routes[0].route.hash_policy[0].cookie.ttl: \
             generating cookies (a cookie with a ttl) is not supported; hash on an existing \
             cookie by name only"
        );
        let path = with_hash_policy(vec![policy(
            P::Cookie(Cookie {
                name: "session".into(),
                path: "/".into(),
                ..Default::default()
            }),
            false,
        )]);
        assert!(err(path).contains("hash_policy[0].cookie: unsupported field path"));
        let state = with_hash_policy(vec![policy(
            P::FilterState(FilterState { key: "k".into() }),
            false,
        )]);
        assert!(err(state).contains("hash_policy[0]: unsupported field filter_state"));
        let empty = with_hash_policy(vec![route_action::HashPolicy::default()]);
        assert!(err(empty).contains("hash_policy[0]: one of header, cookie"));
        let bad_name = with_hash_policy(vec![policy(
            P::Header(Header {
                header_name: "x user".into(),
                ..Default::default()
            }),
            false,
        )]);
        assert!(err(bad_name).contains("header.header_name: \"x user\" is not a header name"));
        let rewrite = with_hash_policy(vec![policy(
            P::Header(Header {
                header_name: "x-user".into(),
                regex_rewrite: Some(Default::default()),
            }),
            false,
        )]);
        assert!(err(rewrite).contains("unsupported field regex_rewrite"));
    }
}

/// Filter chains chosen by SNI (`server_names`): merged into one TLS chain whose certificate
/// depends on the SNI; what this proxy cannot honour is refused by name.
mod sni {
    use switchboard_proxy_xds::config::listener::{DataSource, Listener};
    use switchboard_proxy_xds::testing::resources::http_listener;
    use switchboard_xds_proto::pack;
    use switchboard_xds_proto::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
    use switchboard_xds_proto::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};
    use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    };

    use super::err;

    fn chain(secret: &str, names: &[&str], alpn: &[&str]) -> FilterChain {
        let base = http_listener("x", 1, "rc").filter_chains.remove(0);
        let ctx = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                    name: secret.to_owned(),
                    sds_config: Some(switchboard_proxy_xds::testing::resources::ads()),
                }],
                alpn_protocols: alpn.iter().map(|a| (*a).to_owned()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        FilterChain {
            filter_chain_match: (!names.is_empty()).then(|| FilterChainMatch {
                server_names: names.iter().map(|n| (*n).to_owned()).collect(),
                ..Default::default()
            }),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".to_owned(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&ctx))),
            }),
            ..base
        }
    }

    fn listener(chains: Vec<FilterChain>) -> Result<Listener, String> {
        let mut l = http_listener("x", 1, "rc");
        l.filter_chains = chains;
        Listener::try_from(l).map_err(|e| e.to_string())
    }

    #[test]
    fn sni_chains_merge_into_one_tls_chain_with_a_default() {
        let h = ["h2", "http/1.1"];
        let l = listener(vec![
            chain("certificate/shop", &["Shop.example.com"], &h),
            chain(
                "certificate/blog",
                &["blog.example.com", "*.blog.example.com"],
                &h,
            ),
            chain("certificate/shop", &[], &h),
        ])
        .unwrap();
        let tls = l.tls.as_ref().unwrap();
        assert_eq!(
            tls.certificate_chain,
            DataSource::Sds("certificate/shop".into())
        );
        let sni: Vec<_> = tls
            .sni_certificates
            .iter()
            .map(|c| (c.server_names.clone(), c.certificate_chain.clone()))
            .collect();
        assert_eq!(
            sni,
            [
                (
                    vec!["shop.example.com".to_owned()],
                    DataSource::Sds("certificate/shop".into())
                ),
                (
                    vec![
                        "blog.example.com".to_owned(),
                        "*.blog.example.com".to_owned()
                    ],
                    DataSource::Sds("certificate/blog".into())
                ),
            ]
        );
        assert!(l.plaintext.is_none());
        let mut secrets = l.secret_names();
        secrets.sort();
        secrets.dedup();
        assert_eq!(secrets, ["certificate/blog", "certificate/shop"]);
    }

    #[test]
    fn sni_chains_this_proxy_cannot_honour_are_refused() {
        let h = ["h2", "http/1.1"];
        let no_default = err(listener(vec![
            chain("a", &["a.example.com"], &h),
            chain("b", &["b.example.com"], &h),
        ]));
        assert!(
            no_default.contains("exactly one chain without server_names"),
            "{no_default}"
        );
        let shared = err(listener(vec![
            chain("a", &["a.example.com"], &h),
            chain("b", &["A.example.com"], &h),
            chain("a", &[], &h),
        ]));
        assert!(shared.contains("matched by two filter chains"), "{shared}");
        let differs = err(listener(vec![
            chain("a", &["a.example.com"], &["http/1.1"]),
            chain("a", &[], &h),
        ]));
        assert!(
            differs.contains("only the certificate may differ"),
            "{differs}"
        );
        assert!(differs.contains("filter_chains[0]"), "{differs}");
        let bad = err(listener(vec![
            chain("a", &["not a name"], &h),
            chain("a", &[], &h),
        ]));
        assert!(bad.contains("server_names[0]"), "{bad}");
        let mut plain = chain("a", &["a.example.com"], &h);
        plain.transport_socket = None;
        let plain = err(listener(vec![plain, chain("a", &[], &h)]));
        assert!(plain.contains("must terminate TLS"), "{plain}");
    }
}
