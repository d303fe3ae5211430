#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Envoy protos → the proxy's config types: what converts, and the precise rejections.

use std::time::Duration;

use switchboard_proxy_xds::config::cluster::{Cluster, Discovery, LbPolicy};
use switchboard_proxy_xds::config::endpoint::{Health, LoadAssignment};
use switchboard_proxy_xds::config::listener::{Listener, ListenerKind};
use switchboard_proxy_xds::config::route::{Action, RouteConfig, ValueMatch};
use switchboard_proxy_xds::testing::resources::{
    eds_cluster, http_listener, listener_with, load_assignment, regex_route_config, route_config,
};
use switchboard_xds_proto::pb::envoy::config::cluster::v3::cluster;
use switchboard_xds_proto::pb::envoy::config::core::v3::HealthStatus;
use switchboard_xds_proto::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, header_matcher, route,
};
use switchboard_xds_proto::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy,
};
use switchboard_xds_proto::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use switchboard_xds_proto::{Any, pack};

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
    assert!(matches!(l.kind, ListenerKind::Tcp(ref t) if t.cluster == "db"));
    assert_eq!(l.route_names(), None);
}

#[test]
fn listener_rejections_name_the_field() {
    let redis = listener_with(
        "x",
        1,
        "envoy.filters.network.redis_proxy",
        Any {
            type_url:
                "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
                    .to_owned(),
            value: vec![],
        },
    );
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
/// either fail to decode or convert to a result, never a panic.
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
        http_listener("out", 15001, "rc").encode_to_vec(),
        regex_route_config("rc", "/a/.*", "pay").encode_to_vec(),
        eds_cluster("pay").encode_to_vec(),
        load_assignment("pay", &["10.0.0.1:80".parse().unwrap()]).encode_to_vec(),
    ];
    for _ in 0..3000 {
        for seed in &seeds {
            let mut bytes = seed.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            if let Ok(m) = PbListener::decode(bytes.as_slice()) {
                let _ = Listener::try_from(m);
            }
            if let Ok(m) = RouteConfiguration::decode(bytes.as_slice()) {
                let _ = RouteConfig::try_from(m);
            }
            if let Ok(m) = PbCluster::decode(bytes.as_slice()) {
                let _ = Cluster::try_from(m);
            }
            if let Ok(m) = ClusterLoadAssignment::decode(bytes.as_slice()) {
                let _ = LoadAssignment::try_from(m);
            }
        }
    }
}
