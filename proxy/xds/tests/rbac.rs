#![allow(clippy::unwrap_used, clippy::expect_used)]
//! RBAC filters (HTTP and network) → the proxy's matcher tree: each supported shape, and the
//! precise rejection of each refused field.

use switchboard_proxy_xds::config::listener::{Listener, ListenerKind};
use switchboard_proxy_xds::config::matcher::{HeaderMatch, ValueMatch};
use switchboard_proxy_xds::config::rbac::{Action, Permission, Policy, Principal, Rules};
use switchboard_proxy_xds::config::route::RouteConfig;
use switchboard_proxy_xds::testing::rbac::*;
use switchboard_proxy_xds::testing::resources::route_config;
use switchboard_xds_proto::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use switchboard_xds_proto::pb::envoy::config::listener::v3::filter;
use switchboard_xds_proto::pb::envoy::config::rbac::v3::{
    Permission as PbPermission, Principal as PbPrincipal, Rbac as PbRules, permission, principal,
    rbac,
};
use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use switchboard_xds_proto::{HttpFault, HttpRbac, HttpRbacPerRoute, NetworkRbac, pack};

fn http(filters: Vec<HttpFilter>) -> Result<Listener, String> {
    Listener::try_from(inbound_http_listener("in", 15006, "app", filters, None))
        .map_err(|e| e.to_string())
}

fn http_rules(l: &Listener) -> Vec<Option<Rules>> {
    match &l.kind {
        ListenerKind::Http(h) => h.rbac.iter().map(|r| r.rules.clone()).collect(),
        other => panic!("not HTTP: {other:?}"),
    }
}

fn raw_http_filter(f: &HttpRbac) -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.rbac".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(f))),
        ..Default::default()
    }
}

#[test]
fn deny_then_allow_convert_in_order_with_policies_sorted() {
    let deny = rules(
        rbac::Action::Deny,
        vec![(
            "no-c",
            policy(
                vec![any_permission()],
                vec![authenticated(exact("spiffe://t/ns/m/sa/c"))],
            ),
        )],
    );
    let allow = rules(
        rbac::Action::Allow,
        vec![
            (
                "z-any",
                policy(vec![url_path(prefix("/public/"))], vec![any_principal()]),
            ),
            (
                "a-reads",
                policy(
                    vec![and_rules(vec![url_path(prefix("/api/")), method("GET")])],
                    vec![authenticated(prefix("spiffe://t/ns/m/sa/a"))],
                ),
            ),
        ],
    );
    let l = http(vec![http_rbac_filter(deny), http_rbac_filter(allow)]).unwrap();
    let got = http_rules(&l);
    assert_eq!(
        got[0],
        Some(Rules {
            action: Action::Deny,
            policies: vec![Policy {
                name: "no-c".into(),
                permissions: vec![Permission::Any],
                principals: vec![Principal::Authenticated(Some(ValueMatch::Exact(
                    "spiffe://t/ns/m/sa/c".into()
                )))],
            }],
        })
    );
    let allow = got[1].as_ref().unwrap();
    assert_eq!(allow.action, Action::Allow);
    let names: Vec<&str> = allow.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a-reads", "z-any"]);
    assert_eq!(
        allow.policies[0].permissions,
        [Permission::And(vec![
            Permission::UrlPath(ValueMatch::Prefix("/api/".into())),
            Permission::Header(HeaderMatch {
                name: ":method".into(),
                value: ValueMatch::Exact("GET".into()),
                invert: false,
            }),
        ])]
    );
    assert_eq!(
        allow.policies[0].principals,
        [Principal::Authenticated(Some(ValueMatch::Prefix(
            "spiffe://t/ns/m/sa/a".into()
        )))]
    );
}

#[test]
fn combinators_ports_and_empty_configs_convert() {
    let not_c = PbPrincipal {
        identifier: Some(principal::Identifier::NotId(Box::new(authenticated(
            exact("c"),
        )))),
    };
    let or_ids = PbPrincipal {
        identifier: Some(principal::Identifier::OrIds(principal::Set {
            ids: vec![not_c, any_principal()],
        })),
    };
    let and_ids = PbPrincipal {
        identifier: Some(principal::Identifier::AndIds(principal::Set {
            ids: vec![PbPrincipal {
                identifier: Some(principal::Identifier::Authenticated(
                    principal::Authenticated {
                        principal_name: None,
                    },
                )),
            }],
        })),
    };
    let or_rules = PbPermission {
        rule: Some(permission::Rule::OrRules(permission::Set {
            rules: vec![
                PbPermission {
                    rule: Some(permission::Rule::DestinationPort(15006)),
                },
                PbPermission {
                    rule: Some(permission::Rule::NotRule(Box::new(method("DELETE")))),
                },
            ],
        })),
    };
    let r = rules(
        rbac::Action::Allow,
        vec![("p", policy(vec![or_rules], vec![or_ids, and_ids]))],
    );
    let l = http(vec![http_rbac_filter(r)]).unwrap();
    let got = http_rules(&l);
    let p = &got[0].as_ref().unwrap().policies[0];
    assert!(matches!(&p.permissions[0], Permission::Or(v)
        if v[0] == Permission::DestinationPort(15006) && matches!(v[1], Permission::Not(_))));
    assert!(matches!(&p.principals[0], Principal::Or(v) if matches!(v[0], Principal::Not(_))));
    assert_eq!(
        p.principals[1],
        Principal::And(vec![Principal::Authenticated(None)])
    );

    // ALLOW with no policies converts (and denies everything); no rules enforces nothing.
    let l = http(vec![http_rbac_filter(rules(rbac::Action::Allow, vec![]))]).unwrap();
    assert_eq!(
        http_rules(&l),
        [Some(Rules {
            action: Action::Allow,
            policies: vec![]
        })]
    );
    let l = http(vec![raw_http_filter(&HttpRbac::default())]).unwrap();
    assert_eq!(http_rules(&l), [None]);
    // No RBAC: nothing to run per request.
    assert!(http_rules(&http(vec![]).unwrap()).is_empty());
}

#[test]
fn network_rbac_converts_before_tcp_proxy_and_hcm() {
    let r = rules(
        rbac::Action::Allow,
        vec![(
            "a",
            policy(
                vec![any_permission()],
                vec![authenticated(exact("spiffe://a"))],
            ),
        )],
    );
    let l = Listener::try_from(inbound_tcp_listener(
        "in",
        15006,
        "app",
        vec![network_rbac_filter(r.clone())],
        None,
    ))
    .unwrap();
    assert!(matches!(l.kind, ListenerKind::Tcp(_)));
    assert_eq!(l.network_rbac.len(), 1);
    assert_eq!(l.network_rbac[0].stat_prefix, "inbound");
    assert_eq!(
        l.network_rbac[0].rules.as_ref().unwrap().policies[0].principals,
        [Principal::Authenticated(Some(ValueMatch::Exact(
            "spiffe://a".into()
        )))]
    );

    let mut pb = inbound_http_listener("in", 15006, "app", vec![], None);
    pb.filter_chains[0]
        .filters
        .insert(0, network_rbac_filter(r.clone()));
    let l = Listener::try_from(pb).unwrap();
    assert!(matches!(l.kind, ListenerKind::Http(_)));
    assert_eq!(l.network_rbac.len(), 1);

    // RBAC alone, or after the terminal filter: refused.
    let mut pb = inbound_tcp_listener("in", 15006, "app", vec![], None);
    pb.filter_chains[0].filters.push(network_rbac_filter(r));
    assert_eq!(
        Listener::try_from(pb).unwrap_err().to_string(),
        "listener \"in\": filter_chains[0].filters[0]: http_connection_manager or tcp_proxy \
         must be the last network filter"
    );
}

/// The error of an HTTP listener whose only RBAC filter is `f`.
fn http_err(f: HttpRbac) -> String {
    http(vec![raw_http_filter(&f)]).unwrap_err()
}

/// The error of an HTTP listener whose RBAC filter has `rules`.
fn rules_err(r: PbRules) -> String {
    http(vec![http_rbac_filter(r)]).unwrap_err()
}

const AT: &str =
    "listener \"in\": filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";

#[test]
fn refused_fields_are_named() {
    let r = rules(rbac::Action::Allow, vec![]);
    assert_eq!(
        http_err(HttpRbac {
            shadow_rules: Some(r.clone()),
            ..Default::default()
        }),
        format!("{AT}.shadow_rules: shadow rules are not supported; remove shadow_rules")
    );
    assert!(
        http_err(HttpRbac {
            matcher: Some(Default::default()),
            ..Default::default()
        })
        .starts_with(&format!("{AT}: unsupported field matcher"))
    );
    assert!(
        http_err(HttpRbac {
            track_per_rule_stats: true,
            ..Default::default()
        })
        .starts_with(&format!("{AT}: unsupported field track_per_rule_stats"))
    );
    assert_eq!(
        rules_err(rules(rbac::Action::Log, vec![])),
        format!("{AT}.rules.action: only ALLOW and DENY are supported")
    );

    let with_permission = |p: PbPermission| {
        rules_err(rules(
            rbac::Action::Allow,
            vec![("p", policy(vec![p], vec![any_principal()]))],
        ))
    };
    let at_p = format!("{AT}.rules.policies[\"p\"]");
    assert!(
        with_permission(PbPermission {
            rule: Some(permission::Rule::DestinationIp(CidrRange::default())),
        })
        .starts_with(&format!(
            "{at_p}.permissions[0]: unsupported field destination_ip"
        ))
    );
    assert!(
        with_permission(PbPermission {
            rule: Some(permission::Rule::RequestedServerName(Default::default())),
        })
        .starts_with(&format!(
            "{at_p}.permissions[0]: unsupported field requested_server_name"
        ))
    );
    assert_eq!(
        with_permission(PbPermission {
            rule: Some(permission::Rule::DestinationPort(70000)),
        }),
        format!("{at_p}.permissions[0].destination_port: port 70000 is out of range")
    );
    let mut ignore_case = prefix("/x");
    ignore_case.ignore_case = true;
    assert!(with_permission(url_path(ignore_case)).starts_with(&format!(
        "{at_p}.permissions[0].url_path.path: unsupported field ignore_case"
    )));

    let with_principal = |p: PbPrincipal| {
        rules_err(rules(
            rbac::Action::Allow,
            vec![("p", policy(vec![any_permission()], vec![p]))],
        ))
    };
    assert!(
        with_principal(PbPrincipal {
            identifier: Some(principal::Identifier::DirectRemoteIp(CidrRange::default())),
        })
        .starts_with(&format!(
            "{at_p}.principals[0]: unsupported field direct_remote_ip"
        ))
    );
    assert!(
        with_principal(PbPrincipal {
            identifier: Some(principal::Identifier::Custom(
                TypedExtensionConfig::default()
            )),
        })
        .starts_with(&format!("{at_p}.principals[0]: unsupported field custom"))
    );
    assert!(
        with_principal(PbPrincipal {
            identifier: Some(principal::Identifier::AndIds(principal::Set {
                ids: vec![PbPrincipal {
                    identifier: Some(principal::Identifier::RemoteIp(CidrRange::default())),
                }],
            })),
        })
        .starts_with(&format!(
            "{at_p}.principals[0].and_ids.ids[0]: unsupported field remote_ip"
        ))
    );

    let mut with_condition = policy(vec![any_permission()], vec![any_principal()]);
    with_condition.condition = Some(Default::default());
    assert!(
        rules_err(rules(rbac::Action::Allow, vec![("p", with_condition)]))
            .starts_with(&format!("{at_p}: unsupported field condition"))
    );
    assert_eq!(
        rules_err(rules(
            rbac::Action::Allow,
            vec![("p", policy(vec![], vec![any_principal()]))]
        )),
        format!("{at_p}.permissions: at least one permission is required")
    );
}

#[test]
fn network_rbac_refuses_http_permissions_and_shadow_rules() {
    let at = "listener \"in\": filter_chains[0].filters[0].typed_config";
    let tcp = |f: NetworkRbac| {
        let mut pb = inbound_tcp_listener("in", 15006, "app", vec![], None);
        pb.filter_chains[0].filters.insert(
            0,
            switchboard_xds_proto::pb::envoy::config::listener::v3::Filter {
                name: "envoy.filters.network.rbac".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&f))),
            },
        );
        Listener::try_from(pb).unwrap_err().to_string()
    };
    let r = rules(
        rbac::Action::Deny,
        vec![(
            "p",
            policy(vec![url_path(exact("/"))], vec![any_principal()]),
        )],
    );
    assert!(
        tcp(NetworkRbac {
            stat_prefix: "in".into(),
            rules: Some(r),
            ..Default::default()
        })
        .starts_with(&format!(
            "{at}.rules.policies[\"p\"].permissions[0]: unsupported field url_path"
        ))
    );
    assert_eq!(
        tcp(NetworkRbac {
            stat_prefix: "in".into(),
            shadow_rules: Some(rules(rbac::Action::Deny, vec![])),
            ..Default::default()
        }),
        format!("{at}.shadow_rules: shadow rules are not supported; remove shadow_rules")
    );
    assert_eq!(
        tcp(NetworkRbac::default()),
        format!("{at}.stat_prefix: required")
    );
    assert!(
        tcp(NetworkRbac {
            stat_prefix: "in".into(),
            enforcement_type: 1,
            ..Default::default()
        })
        .starts_with(&format!("{at}: unsupported field enforcement_type"))
    );
}

#[test]
fn rbac_after_fault_and_per_route_overrides_are_refused() {
    let fault = HttpFilter {
        name: "envoy.filters.http.fault".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(
            &HttpFault::default(),
        ))),
        ..Default::default()
    };
    let err = http(vec![
        fault,
        http_rbac_filter(rules(rbac::Action::Allow, vec![])),
    ])
    .unwrap_err();
    assert!(
        err.contains("http_filters[1]: RBAC filters must come before the fault filter"),
        "{err}"
    );

    let mut rc = route_config("rc", "*", "app");
    rc.virtual_hosts[0].routes[0]
        .typed_per_filter_config
        .insert(
            "envoy.filters.http.rbac".to_owned(),
            pack(&HttpRbacPerRoute::default()),
        );
    let err = RouteConfig::try_from(rc).unwrap_err().to_string();
    assert!(
        err.contains("per-route RBAC overrides (RBACPerRoute) are not supported"),
        "{err}"
    );
}
