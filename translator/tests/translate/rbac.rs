//! Authorization policies → RBAC filters: each case decodes the filters and compares them
//! with the Envoy messages they should be.

use std::collections::HashMap;

use serde_json::{Value, json};
use switchboard_model::AuthorizationPolicySpec;
use switchboard_translator::pb::envoy::config::listener::v3::{Filter, filter};
use switchboard_translator::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac,
};
use switchboard_translator::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use switchboard_translator::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use switchboard_translator::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use switchboard_translator::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use switchboard_translator::pb::envoy::r#type::matcher::v3::{
    PathMatcher, StringMatcher, path_matcher, string_matcher,
};
use switchboard_translator::{
    Change, InboundRbac, InboundSecurity, SidecarParams, Translator, inbound_rbac, names,
    sidecar_inbound_with,
};

use crate::common::{Mesh, chain_hcm, spec, unpack};

const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const A: &str = "spiffe://acme.mesh.test/mesh/prod/service/a";
const C: &str = "spiffe://acme.mesh.test/mesh/prod/service/c";

/// Services `a`, `c`, `b` (HTTP) and `db` (TCP) in trust domain `mesh.test`.
fn mesh() -> Mesh {
    let mut m = Mesh::new()
        .service("a", json!({"port": 8080}))
        .service("b", json!({"port": 8080}))
        .service("c", json!({"port": 8080}))
        .service("db", json!({"port": 5432, "protocol": "tcp"}));
    m.config.trust_domain = "mesh.test".into();
    m
}

fn with_policy(mut m: Mesh, name: &str, v: Value) -> Mesh {
    m.config
        .authorization_policies
        .insert(name.into(), spec::<AuthorizationPolicySpec>(v));
    m
}

/// The HTTP RBAC configurations of `service`, with their filter names checked.
fn http_rbacs(m: &Mesh, service: &str) -> Vec<HttpRbac> {
    let out = inbound_rbac(&m.config, service);
    assert!(out.network_filters.is_empty());
    out.http_filters.iter().map(http_rbac).collect()
}

fn http_rbac(f: &HttpFilter) -> HttpRbac {
    assert_eq!(f.name, "envoy.filters.http.rbac");
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("no typed config");
    };
    unpack(any, HTTP_RBAC)
}

fn network_rbac(f: &Filter) -> NetworkRbac {
    assert_eq!(f.name, "envoy.filters.network.rbac");
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("no typed config");
    };
    unpack(any, NETWORK_RBAC)
}

fn rules(action: rbac::Action, policies: &[(&str, Policy)]) -> Rbac {
    Rbac {
        action: action as i32,
        policies: policies
            .iter()
            .map(|(n, p)| ((*n).to_owned(), p.clone()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

fn http(action: rbac::Action, label: &str, policies: &[(&str, Policy)]) -> HttpRbac {
    HttpRbac {
        rules: Some(rules(action, policies)),
        rules_stat_prefix: label.into(),
        ..Default::default()
    }
}

fn matcher(p: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    }
}

fn exact(s: &str) -> string_matcher::MatchPattern {
    string_matcher::MatchPattern::Exact(s.into())
}

fn prefix(s: &str) -> string_matcher::MatchPattern {
    string_matcher::MatchPattern::Prefix(s.into())
}

fn authenticated(p: string_matcher::MatchPattern) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(matcher(p)),
            },
        )),
    }
}

fn any() -> Permission {
    Permission {
        rule: Some(permission::Rule::Any(true)),
    }
}

fn url_path(p: string_matcher::MatchPattern) -> Permission {
    Permission {
        rule: Some(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(matcher(p))),
        })),
    }
}

fn header(name: &str, p: string_matcher::MatchPattern) -> Permission {
    Permission {
        rule: Some(permission::Rule::Header(HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                matcher(p),
            )),
            ..Default::default()
        })),
    }
}

fn set(rules: Vec<Permission>, and: bool) -> Permission {
    let s = permission::Set { rules };
    Permission {
        rule: Some(if and {
            permission::Rule::AndRules(s)
        } else {
            permission::Rule::OrRules(s)
        }),
    }
}

fn policy(permissions: Vec<Permission>, principals: Vec<Principal>) -> Policy {
    Policy {
        permissions,
        principals,
        ..Default::default()
    }
}

#[test]
fn allow_from_a_denies_everyone_else() {
    let m = with_policy(
        mesh(),
        "only-a",
        json!({"service": "b", "action": "allow", "from": [{"services": ["a"]}]}),
    );
    let want = policy(vec![any()], vec![authenticated(exact(A))]);
    assert_eq!(
        http_rbacs(&m, "b"),
        [http(rbac::Action::Allow, "allow.", &[("only-a", want)])]
    );
    assert!(http_rbacs(&m, "a").is_empty(), "other services: no filter");
    assert_eq!(inbound_rbac(&m.config, "missing"), InboundRbac::default());
}

#[test]
fn deny_from_a_lets_others_through() {
    let m = with_policy(
        mesh(),
        "no-a",
        json!({"service": "b", "action": "deny", "from": [{"services": ["a", "c"]}]}),
    );
    let want = policy(
        vec![any()],
        vec![authenticated(exact(A)), authenticated(exact(C))],
    );
    assert_eq!(
        http_rbacs(&m, "b"),
        [http(rbac::Action::Deny, "deny.", &[("no-a", want)])]
    );
}

#[test]
fn deny_filter_comes_before_allow_filter() {
    let m = with_policy(
        mesh(),
        "z-allow",
        json!({"service": "b", "action": "allow", "from": [{"anyAuthenticated": true}]}),
    );
    let m = with_policy(
        m,
        "a-deny",
        json!({"service": "b", "action": "deny", "from": [{"services": ["a"]}]}),
    );
    let got = http_rbacs(&m, "b");
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].rules.as_ref().unwrap().action,
        rbac::Action::Deny as i32
    );
    assert_eq!(
        got[1].rules.as_ref().unwrap().action,
        rbac::Action::Allow as i32
    );
    assert_eq!(
        got[1].rules.as_ref().unwrap().policies["z-allow"].principals,
        [authenticated(prefix(
            "spiffe://acme.mesh.test/mesh/prod/service/"
        ))]
    );
}

#[test]
fn narrowed_by_path_method_and_header() {
    let m = with_policy(
        mesh(),
        "reads",
        json!({"service": "b", "action": "allow", "from": [{"services": ["a"]}],
        "to": [
            {"paths": ["/api/*", "/healthz"], "methods": ["GET", "HEAD"],
             "headers": [{"name": "x-team", "value": "pay"}]},
            {"methods": ["POST"]},
            {"headers": [{"name": "x-v", "prefix": "2"}]}
        ]}),
    );
    let first = set(
        vec![
            set(
                vec![url_path(prefix("/api/")), url_path(exact("/healthz"))],
                false,
            ),
            set(
                vec![
                    header(":method", exact("GET")),
                    header(":method", exact("HEAD")),
                ],
                false,
            ),
            header("x-team", exact("pay")),
        ],
        true,
    );
    let want = policy(
        vec![
            first,
            header(":method", exact("POST")),
            header("x-v", prefix("2")),
        ],
        vec![authenticated(exact(A))],
    );
    assert_eq!(
        http_rbacs(&m, "b"),
        [http(rbac::Action::Allow, "allow.", &[("reads", want)])]
    );
}

#[test]
fn any_authenticated_is_a_prefix_on_the_mesh_identities() {
    let m = with_policy(
        mesh(),
        "mesh-only",
        json!({"service": "b", "action": "allow", "from": [{"anyAuthenticated": true}, {"services": ["c"]}]}),
    );
    let want = policy(
        vec![any()],
        vec![
            authenticated(prefix("spiffe://acme.mesh.test/mesh/prod/service/")),
            authenticated(exact(C)),
        ],
    );
    assert_eq!(
        http_rbacs(&m, "b"),
        [http(rbac::Action::Allow, "allow.", &[("mesh-only", want)])]
    );
}

#[test]
fn default_deny_with_and_without_policies() {
    let mut m = mesh();
    m.config.spec = spec(json!({"defaultAuthorization": "deny"}));
    // No policy: an ALLOW filter without policies, which denies every request.
    for service in ["a", "b"] {
        assert_eq!(
            http_rbacs(&m, service),
            [http(rbac::Action::Allow, "allow.", &[])]
        );
    }
    let tcp = inbound_rbac(&m.config, "db");
    assert!(tcp.http_filters.is_empty());
    let got: Vec<_> = tcp.network_filters.iter().map(network_rbac).collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rules, Some(rules(rbac::Action::Allow, &[])));
    // A deny policy alone: it runs first, then the empty ALLOW denies the rest.
    let m = with_policy(
        m,
        "no-a",
        json!({"service": "b", "action": "deny", "from": [{"services": ["a"]}]}),
    );
    let got = http_rbacs(&m, "b");
    let deny = policy(vec![any()], vec![authenticated(exact(A))]);
    assert_eq!(
        got,
        [
            http(rbac::Action::Deny, "deny.", &[("no-a", deny)]),
            http(rbac::Action::Allow, "allow.", &[])
        ]
    );
    // An allow policy: callers it names get through, others are denied by it.
    let m = with_policy(
        m,
        "only-c",
        json!({"service": "b", "action": "allow", "from": [{"services": ["c"]}]}),
    );
    let got = http_rbacs(&m, "b");
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1]
            .rules
            .as_ref()
            .unwrap()
            .policies
            .keys()
            .collect::<Vec<_>>(),
        ["only-c"]
    );
}

#[test]
fn tcp_services_get_network_rbac() {
    let m = with_policy(
        mesh(),
        "db-callers",
        json!({"service": "db", "action": "allow", "from": [{"services": ["a"]}]}),
    );
    let out = inbound_rbac(&m.config, "db");
    assert!(out.http_filters.is_empty());
    let got: Vec<_> = out.network_filters.iter().map(network_rbac).collect();
    let want = policy(vec![any()], vec![authenticated(exact(A))]);
    assert_eq!(
        got,
        [NetworkRbac {
            rules: Some(rules(rbac::Action::Allow, &[("db-callers", want)])),
            stat_prefix: "sidecar_inbound.allow.".into(),
            ..Default::default()
        }]
    );
    // In front of the TCP proxy of the sidecar's inbound listener.
    let security = InboundSecurity::default().with_rbac(Some(&out));
    let (listener, _) =
        sidecar_inbound_with(&params(), switchboard_model::spec::Protocol::Tcp, &security).unwrap();
    let chain: Vec<_> = listener.filter_chains[0]
        .filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(chain, [names::RBAC_NETWORK_FILTER, names::TCP_PROXY_FILTER]);
}

#[test]
fn a_tcp_service_under_a_narrowing_policy_fails_closed() {
    // The store refuses this; a service that changed protocol under an old policy is the only
    // way to get here.
    let narrowed = |action: &str| {
        json!({"service": "db", "action": action, "from": [{"services": ["a"]}],
               "to": [{"paths": ["/x"]}]})
    };
    let m = with_policy(mesh(), "p", narrowed("allow"));
    let got: Vec<_> = inbound_rbac(&m.config, "db")
        .network_filters
        .iter()
        .map(network_rbac)
        .collect();
    assert_eq!(got[0].rules, Some(rules(rbac::Action::Allow, &[])));
    let m = with_policy(mesh(), "p", narrowed("deny"));
    let got: Vec<_> = inbound_rbac(&m.config, "db")
        .network_filters
        .iter()
        .map(network_rbac)
        .collect();
    let want = policy(vec![any()], vec![authenticated(exact(A))]);
    assert_eq!(
        got[0].rules,
        Some(rules(rbac::Action::Deny, &[("p", want)]))
    );
    let warnings = m.translate().warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("authorization policy p")),
        "{warnings:?}"
    );
}

fn params() -> SidecarParams {
    SidecarParams {
        service: "b".into(),
        inbound_port: 15006,
        app_port: 8080,
        outbound_port: 15001,
    }
}

#[test]
fn http_filters_sit_before_the_router_and_encode_deterministically() {
    let mut m = mesh();
    for i in 0..20 {
        m = with_policy(
            m,
            &format!("p{i:02}"),
            json!({"service": "b", "action": "allow", "from": [{"services": ["a"]}]}),
        );
    }
    let first = m.translate();
    let rbac = first.inbound_rbac.get("b").unwrap();
    // Recomputed from scratch (each HashMap with another random order): the same bytes.
    for _ in 0..5 {
        assert_eq!(m.translate().inbound_rbac.get("b").unwrap(), rbac);
    }
    let decoded = http_rbac(&rbac.http_filters[0]);
    assert_eq!(decoded.rules.unwrap().policies.len(), 20);
    let security = InboundSecurity::default().with_rbac(Some(rbac));
    let (listener, _) = sidecar_inbound_with(
        &params(),
        switchboard_model::spec::Protocol::Http,
        &security,
    )
    .unwrap();
    let filters: Vec<_> = chain_hcm(&listener)
        .http_filters
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(filters, [names::RBAC_HTTP_FILTER, names::ROUTER_FILTER]);
}

#[test]
fn the_translator_rebuilds_what_a_policy_or_the_mesh_default_touches() {
    let m = mesh();
    let mut t = Translator::new(m.config.clone());
    assert!(t.resources().inbound_rbac.is_empty());
    let p: AuthorizationPolicySpec =
        spec(json!({"service": "b", "action": "deny", "from": [{"services": ["a"]}]}));
    t.apply([Change::AuthorizationPolicy("p".into(), Some(p.clone()))]);
    assert_eq!(t.resources().inbound_rbac.keys().collect::<Vec<_>>(), ["b"]);
    let before = t.resources().inbound_rbac["b"].clone();
    t.apply([Change::Mesh(spec(json!({"defaultAuthorization": "deny"})))]);
    assert_eq!(
        t.resources().inbound_rbac.keys().collect::<Vec<_>>(),
        ["a", "b", "c", "db"]
    );
    assert_ne!(t.resources().inbound_rbac["b"], before);
    // Moving a policy to another service rebuilds both.
    let mut moved = p;
    moved.service = "c".into();
    t.apply([
        Change::Mesh(Default::default()),
        Change::AuthorizationPolicy("p".into(), Some(moved)),
    ]);
    assert_eq!(t.resources().inbound_rbac.keys().collect::<Vec<_>>(), ["c"]);
    // A new trust domain changes every principal.
    let mut config = t.config().clone();
    config.trust_domain = "other.test".into();
    t.update(config.clone());
    assert_eq!(*t.resources(), switchboard_translator::translate(&config));
    let c = http_rbac(&t.resources().inbound_rbac["c"].http_filters[0]);
    assert_eq!(
        c.rules.unwrap().policies["p"].principals,
        [authenticated(exact(
            "spiffe://acme.other.test/mesh/prod/service/a"
        ))]
    );
    t.apply([Change::AuthorizationPolicy("p".into(), None)]);
    assert!(t.resources().inbound_rbac.is_empty());
}
