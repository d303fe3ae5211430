//! Listeners and route configurations for each kind of client.

use serde_json::json;
use switchboard_model::spec::Protocol;
use switchboard_translator::pb::envoy::config::cluster::v3::cluster;
use switchboard_translator::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, TrafficDirection, TransportSocket,
    address, config_source, socket_address,
};
use switchboard_translator::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use switchboard_translator::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use switchboard_translator::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager,
};
use switchboard_translator::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy,
};
use switchboard_translator::{
    InboundSecurity, MeshResources, NodeRole, SidecarParams, TranslateError, names,
    sidecar_inbound, sidecar_inbound_with,
};

use crate::common::{api_hcm, api_listener, base, chain_hcm, filter_names, listener, route_config};

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn rds(hcm: &HttpConnectionManager) -> &Rds {
    match &hcm.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(r)) => r,
        other => panic!("not RDS: {other:?}"),
    }
}

fn addr(l: &Listener) -> (String, u32) {
    let Some(address::Address::SocketAddress(sa)) = l.address.as_ref().unwrap().address.as_ref()
    else {
        panic!()
    };
    let Some(socket_address::PortSpecifier::PortValue(p)) = sa.port_specifier else {
        panic!()
    };
    (sa.address.clone(), p)
}

fn domains(rc: &RouteConfiguration) -> Vec<(String, Vec<String>)> {
    rc.virtual_hosts
        .iter()
        .map(|v| (v.name.clone(), v.domains.clone()))
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn sample() -> MeshResources {
    base()
        .route_to("pay", &["payments:8080", "pay.example"], "a")
        .route("faulty", json!({"hostnames": ["faulty"], "rules": [{"backends": [{"service": "b"}], "fault": {"abort": {"httpStatus": 503}}}]}))
        .route_to("claims-g", &["g:9090"], "g")
        .translate()
}

#[test]
fn proxyless_listener_shape() {
    let res = sample();
    for (name, route_config, with_fault) in [
        ("payments:8080", "pay", false),
        ("pay.example", "pay", false),
        ("faulty", "faulty", true),
        ("g:9090", "claims-g", false),
    ] {
        let l = listener(&res, name);
        assert_eq!(l.name, name);
        assert_eq!(l.address, None, "{name}: an API listener has no address");
        assert!(l.filter_chains.is_empty());
        assert_eq!(
            api_listener(&l).type_url,
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
        let hcm = api_hcm(&l);
        assert_eq!(
            rds(&hcm),
            &Rds {
                config_source: Some(ads()),
                route_config_name: route_config.into()
            }
        );
        let expected: &[&str] = if with_fault {
            &["envoy.filters.http.fault", "envoy.filters.http.router"]
        } else {
            &["envoy.filters.http.router"]
        };
        assert_eq!(filter_names(&hcm), expected, "{name}");
        let types: Vec<&str> = hcm
            .http_filters
            .iter()
            .map(|f| match &f.config_type {
                Some(switchboard_translator::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(a)) => a.type_url.as_str(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            types.last(),
            Some(&"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")
        );
    }
    // The route's configuration names all of its host names.
    assert_eq!(
        domains(&route_config(&res, "pay")),
        [(s("pay"), strings(&["payments:8080", "pay.example"]))]
    );
    let fault_rc = route_config(&res, "faulty");
    assert!(
        fault_rc.virtual_hosts[0].routes[0]
            .typed_per_filter_config
            .contains_key("envoy.filters.http.fault")
    );
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn default_listeners_for_route_less_services() {
    let res = sample();
    // a, b, m have no route claiming them: `a:8080` and `a` go to RouteConfiguration `a:8080`.
    for svc in ["a", "b", "m"] {
        let rc_name = format!("{svc}:8080");
        for l_name in [rc_name.clone(), svc.to_string()] {
            let hcm = api_hcm(&listener(&res, &l_name));
            assert_eq!(rds(&hcm).route_config_name, rc_name);
            assert_eq!(filter_names(&hcm), ["envoy.filters.http.router"]);
        }
        let rc = route_config(&res, &rc_name);
        assert_eq!(
            domains(&rc),
            [(rc_name.clone(), vec![svc.to_string(), rc_name.clone()])]
        );
        let r = &rc.virtual_hosts[0].routes[0];
        let Some(route::Action::Route(a)) = &r.action else {
            panic!()
        };
        assert_eq!(
            a.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(svc.into()))
        );
    }
    // g:9090 is claimed by a route: g gets no default listener and no default configuration.
    assert!(!res.listeners.contains_key("g"));
    assert!(!res.route_configurations.contains_key("g:9090"));
    assert_eq!(
        rds(&api_hcm(&listener(&res, "g:9090"))).route_config_name,
        "claims-g"
    );
}

#[test]
fn sidecar_outbound() {
    let res = sample();
    let l = listener(&res, names::OUTBOUND);
    assert_eq!(addr(&l), (s("127.0.0.1"), 15001));
    assert_eq!(l.traffic_direction, TrafficDirection::Outbound as i32);
    let hcm = chain_hcm(&l);
    assert_eq!(
        rds(&hcm),
        &Rds {
            config_source: Some(ads()),
            route_config_name: names::OUTBOUND.into()
        }
    );
    assert!(!hcm.stat_prefix.is_empty());
    assert!(
        hcm.http_protocol_options
            .as_ref()
            .unwrap()
            .allow_absolute_url
            .unwrap()
            .value
    );
    // One route injects faults, so the shared listener has the fault filter.
    assert_eq!(
        filter_names(&hcm),
        ["envoy.filters.http.fault", "envoy.filters.http.router"]
    );

    let rc = route_config(&res, names::OUTBOUND);
    assert_eq!(
        domains(&rc),
        [
            (s("claims-g"), strings(&["g:9090", "g"])),
            (s("faulty"), strings(&["faulty"])),
            (
                s("pay"),
                strings(&["payments:8080", "pay.example", "payments"])
            ),
            (s("a:8080"), strings(&["a", "a:8080"])),
            (s("b:8080"), strings(&["b", "b:8080"])),
            (s("m:8080"), strings(&["m", "m:8080"])),
        ]
    );
}

#[test]
fn outbound_domains_are_never_shared() {
    // Route `x` holds `a` explicitly; route `y` claims `a:9999` and may not alias `a`, and
    // service `a` (port 8080) is claimed through `a`, so has no default host.
    let res = base()
        .route_to("x", &["a"], "a")
        .route_to("y", &["a:9999", "b:1", "b:2"], "b")
        .translate();
    let rc = route_config(&res, names::OUTBOUND);
    let all: Vec<String> = rc
        .virtual_hosts
        .iter()
        .flat_map(|v| v.domains.clone())
        .collect();
    let unique: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), unique.len(), "{all:?}");
    assert_eq!(domains(&rc)[0], (s("x"), strings(&["a"])));
    // `b` is route-less (nobody claims `b` or `b:8080`), so its default host keeps `b`.
    assert_eq!(
        domains(&rc)[1],
        (s("y"), strings(&["a:9999", "b:1", "b:2"]))
    );
    assert!(domains(&rc).contains(&(s("b:8080"), strings(&["b", "b:8080"]))));
}

#[test]
fn sidecar_inbound_http_and_tcp() {
    let params = SidecarParams {
        service: "a".into(),
        inbound_port: 15006,
        app_port: 8080,
        outbound_port: 15001,
    };
    for (protocol, http2) in [
        (Protocol::Http, false),
        (Protocol::Grpc, true),
        (Protocol::Tcp, false),
    ] {
        let (l, c) = sidecar_inbound(&params, protocol).unwrap();
        assert_eq!(l.name, names::INBOUND);
        assert_eq!(addr(&l), (s("0.0.0.0"), 15006));
        assert_eq!(l.traffic_direction, TrafficDirection::Inbound as i32);
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(l.filter_chains[0].transport_socket, None);

        assert_eq!(c.name, "inbound|8080");
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32
            ))
        );
        let ep = &c.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0];
        let Some(switchboard_translator::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e)) = &ep.host_identifier else { panic!() };
        let fake = Listener {
            address: e.address.clone(),
            ..Default::default()
        };
        assert_eq!(addr(&fake), (s("127.0.0.1"), 8080));
        assert_eq!(
            c.typed_extension_protocol_options.len(),
            usize::from(http2),
            "{protocol:?}"
        );

        if protocol == Protocol::Tcp {
            assert_eq!(tcp_cluster(&l.filter_chains[0].filters[0]), "inbound|8080");
        } else {
            let hcm = chain_hcm(&l);
            assert_eq!(filter_names(&hcm), ["envoy.filters.http.router"]);
            let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) =
                &hcm.route_specifier
            else {
                panic!()
            };
            let r = &rc.virtual_hosts[0].routes[0];
            assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
            let Some(route::Action::Route(a)) = &r.action else {
                panic!()
            };
            assert_eq!(
                a.cluster_specifier,
                Some(route_action::ClusterSpecifier::Cluster(
                    "inbound|8080".into()
                ))
            );
        }
    }
}

#[test]
fn sidecar_inbound_security_seam() {
    let params = SidecarParams {
        service: "a".into(),
        inbound_port: 15006,
        app_port: 8080,
        outbound_port: 15001,
    };
    let tls = TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        ..Default::default()
    };
    let security = InboundSecurity {
        transport_socket: Some(tls.clone()),
        accept_plaintext: false,
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            ..Default::default()
        }],
        network_filters: vec![Filter {
            name: "envoy.filters.network.rbac".into(),
            ..Default::default()
        }],
    };
    let (l, _) = sidecar_inbound_with(&params, Protocol::Http, &security).unwrap();
    assert_eq!(l.filter_chains[0].transport_socket, Some(tls.clone()));
    assert_eq!(
        filter_names(&chain_hcm(&l)),
        ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    );
    let (l, _) = sidecar_inbound_with(&params, Protocol::Tcp, &security).unwrap();
    let names: Vec<&str> = l.filter_chains[0]
        .filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.network.rbac",
            "envoy.filters.network.tcp_proxy"
        ]
    );
}

#[test]
fn sidecar_inbound_rejects_bad_ports() {
    for (inbound_port, app_port, err) in [
        (
            0,
            8080,
            TranslateError::InvalidPort {
                field: "inbound_port",
                value: 0,
            },
        ),
        (
            15006,
            70000,
            TranslateError::InvalidPort {
                field: "app_port",
                value: 70000,
            },
        ),
        (8080, 8080, TranslateError::PortClash { port: 8080 }),
    ] {
        let params = SidecarParams {
            service: "a".into(),
            inbound_port,
            app_port,
            outbound_port: 15001,
        };
        assert_eq!(sidecar_inbound(&params, Protocol::Http).unwrap_err(), err);
    }
}

fn tcp_cluster(f: &Filter) -> String {
    assert_eq!(f.name, "envoy.filters.network.tcp_proxy");
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!()
    };
    let p: TcpProxy = prost::Message::decode(any.value.as_slice()).unwrap();
    match p.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn gateways_http_and_tcp() {
    let res = base()
        .route_to("web", &["www.example.com", "api.example.com:8443", "internal"], "a")
        .route("shop", json!({"hostnames": ["shop.example.com"], "rules": [{"backends": [{"service": "b"}], "fault": {"delay": {"fixed": "1s"}}}]}))
        .gateway("edge", json!({"port": 8080, "hostnames": ["*.example.com"], "routes": ["web", "shop"]}))
        .gateway("plain", json!({"port": 80, "routes": ["web"]}))
        .gateway("db", json!({"port": 5432, "protocol": "tcp", "service": "m"}))
        .translate();
    assert!(res.warnings.is_empty(), "{:?}", res.warnings);

    let l = listener(&res, "gateway/edge");
    assert_eq!(addr(&l), (s("0.0.0.0"), 8080));
    let hcm = chain_hcm(&l);
    assert_eq!(rds(&hcm).route_config_name, "gateway/edge");
    assert_eq!(
        filter_names(&hcm),
        ["envoy.filters.http.fault", "envoy.filters.http.router"]
    );
    assert_eq!(
        domains(&route_config(&res, "gateway/edge")),
        [
            (
                s("web"),
                strings(&[
                    "www.example.com",
                    "api.example.com:8443",
                    "www.example.com:8080",
                    "api.example.com"
                ])
            ),
            (
                s("shop"),
                strings(&["shop.example.com", "shop.example.com:8080"])
            ),
        ]
    );
    // No host names on the gateway: every host name of the attached routes.
    assert_eq!(
        domains(&route_config(&res, "gateway/plain")),
        [(
            s("web"),
            strings(&[
                "www.example.com",
                "api.example.com:8443",
                "internal",
                "www.example.com:80",
                "api.example.com",
                "internal:80"
            ])
        )]
    );
    assert_eq!(
        filter_names(&chain_hcm(&listener(&res, "gateway/plain"))),
        ["envoy.filters.http.router"]
    );

    let l = listener(&res, "gateway/db");
    assert_eq!(addr(&l), (s("0.0.0.0"), 5432));
    assert_eq!(tcp_cluster(&l.filter_chains[0].filters[0]), "m");
    assert!(!res.route_configurations.contains_key("gateway/db"));
}

#[test]
fn listeners_by_role() {
    let res = base()
        .route_to("web", &["web"], "a")
        .gateway("edge", json!({"port": 8080, "routes": ["web"]}))
        .translate();
    let names_for = |role: NodeRole| -> Vec<String> {
        res.listeners_for(&role).map(|r| r.name.clone()).collect()
    };
    assert_eq!(
        names_for(NodeRole::Proxyless),
        strings(&[
            "a", "a:8080", "b", "b:8080", "g", "g:9090", "m", "m:8080", "web"
        ])
    );
    let sidecar = SidecarParams {
        service: "a".into(),
        inbound_port: 15006,
        app_port: 8080,
        outbound_port: 15001,
    };
    assert_eq!(names_for(NodeRole::Sidecar(sidecar)), [names::OUTBOUND]);
    assert_eq!(
        names_for(NodeRole::Gateway {
            name: "edge".into()
        }),
        ["gateway/edge"]
    );
    assert_eq!(names::gateway_listener_names("edge"), ["gateway/edge"]);
    assert!(
        names_for(NodeRole::Gateway {
            name: "nope".into()
        })
        .is_empty()
    );
}

#[test]
fn user_names_cannot_collide_with_generated_ones() {
    // A route called `outbound` claiming host names `outbound` and `gateway-edge`.
    let res = base()
        .route_to("outbound", &["outbound", "gateway-edge"], "a")
        .gateway("edge", json!({"port": 8080, "routes": ["outbound"]}))
        .translate();
    assert_eq!(
        rds(&api_hcm(&listener(&res, "outbound"))).route_config_name,
        "outbound"
    );
    assert_eq!(route_config(&res, "outbound").virtual_hosts.len(), 1);
    assert!(route_config(&res, names::OUTBOUND).virtual_hosts.len() > 1);
    assert!(
        res.listeners.contains_key("gateway/edge") && res.listeners.contains_key("gateway-edge")
    );
}
