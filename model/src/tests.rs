use crate::spec::{MAX_MATCHES, MAX_RULES};
use crate::*;
use serde_json::json;

fn fields(kind: Kind, v: serde_json::Value) -> Vec<String> {
    match Spec::parse(kind, v).and_then(|s| s.validate()) {
        Ok(()) => vec![],
        Err(e) => e.0.into_iter().map(|f| f.field).collect(),
    }
}

#[test]
fn unknown_and_mistyped_fields_are_named() {
    let e = Spec::parse(Kind::Service, json!({"port": 80, "bogus": 1})).unwrap_err();
    assert_eq!(e.0[0].field, "spec.bogus");
    assert!(e.0[0].message.contains("unknown field `bogus`"), "{e}");
    let e = Spec::parse(Kind::Service, json!({"port": "eighty"})).unwrap_err();
    assert_eq!(e.0[0].field, "spec.port");
    let e = Spec::parse(
        Kind::Route,
        json!({"hostnames": ["a"], "rules": [{"backends": [{"service": "a", "weight": "x"}]}]}),
    )
    .unwrap_err();
    assert_eq!(e.0[0].field, "spec.rules[0].backends[0].weight");
    let e = Spec::parse(
        Kind::Route,
        json!({"hostnames": ["a"], "rules": [{"timeout": "5 s"}]}),
    )
    .unwrap_err();
    assert_eq!(e.0[0].field, "spec.rules[0].timeout");
}

#[test]
fn service_ports_and_settings() {
    assert!(fields(Kind::Service, json!({"port": 8080, "protocol": "grpc"})).is_empty());
    assert_eq!(fields(Kind::Service, json!({"port": 0})), ["spec.port"]);
    assert_eq!(fields(Kind::Service, json!({"port": 65536})), ["spec.port"]);
    assert_eq!(
        fields(
            Kind::Service,
            json!({"port": 1, "outlierDetection": {"maxEjectionPercent": 101}})
        ),
        ["spec.outlierDetection.maxEjectionPercent"]
    );
}

#[test]
fn route_weights_regexes_headers() {
    let base = |rule: serde_json::Value| json!({"hostnames": ["pay:8080"], "rules": [rule]});
    assert!(fields(Kind::Route, base(json!({"backends": [{"service": "a", "weight": 80}, {"service": "b", "weight": 20}]}))).is_empty());
    assert_eq!(
        fields(
            Kind::Route,
            base(json!({"backends": [{"service": "a", "weight": 0}]}))
        ),
        ["spec.rules[0].backends"]
    );
    assert_eq!(
        fields(
            Kind::Route,
            base(json!({"backends": [{"service": "a", "weight": 1001}]}))
        ),
        ["spec.rules[0].backends[0].weight"]
    );
    assert_eq!(
        fields(
            Kind::Route,
            base(
                json!({"matches": [{"path": {"type": "regex", "value": "(a"}}], "backends": [{"service": "a"}]})
            )
        ),
        ["spec.rules[0].matches[0].path.value"]
    );
    assert_eq!(
        fields(
            Kind::Route,
            base(
                json!({"matches": [{"path": {"type": "regex", "value": "(?=a)"}}], "backends": [{"service": "a"}]})
            )
        ),
        ["spec.rules[0].matches[0].path.value"]
    );
    assert_eq!(
        fields(
            Kind::Route,
            base(
                json!({"matches": [{"headers": [{"name": "bad header", "value": "x"}]}], "backends": [{"service": "a"}]})
            )
        ),
        ["spec.rules[0].matches[0].headers[0].name"]
    );
    assert_eq!(
        fields(
            Kind::Route,
            base(
                json!({"requestHeaders": {"set": [{"name": "host", "value": "x"}]}, "backends": [{"service": "a"}]})
            )
        ),
        ["spec.rules[0].requestHeaders.set[0].name"]
    );
    assert_eq!(
        fields(
            Kind::Route,
            json!({"hostnames": ["Bad_Host"], "rules": [{"backends": [{"service": "a"}]}]})
        ),
        ["spec.hostnames[0]"]
    );
    assert_eq!(
        fields(
            Kind::Route,
            base(json!({"backends": [{"service": "Not_A_Name"}]}))
        ),
        ["spec.rules[0].backends[0].service"]
    );
}

#[test]
fn references_and_claims() {
    let spec = Spec::parse(
        Kind::Route,
        json!({"hostnames": ["a", "b:80"], "rules": [{"backends": [{"service": "x"}, {"service": "y"}], "mirror": {"service": "z"}}]}),
    )
    .unwrap();
    let refs: Vec<_> = spec
        .references()
        .into_iter()
        .map(|r| (r.field, r.name))
        .collect();
    assert_eq!(
        refs,
        [
            (
                "spec.rules[0].backends[0].service".to_string(),
                "x".to_string()
            ),
            ("spec.rules[0].backends[1].service".into(), "y".into()),
            ("spec.rules[0].mirror.service".into(), "z".into()),
        ]
    );
    let claims: Vec<_> = spec.claims().into_iter().map(|c| c.value).collect();
    assert_eq!(claims, ["a", "b:80"]);
}

#[test]
fn endpoints_and_gateways() {
    assert!(
        fields(
            Kind::Endpoint,
            json!({"service": "a", "address": "127.0.0.1", "port": 80})
        )
        .is_empty()
    );
    assert_eq!(
        fields(Kind::Endpoint, json!({"service": "a", "address": "nope"})),
        ["spec.address"]
    );
    assert_eq!(
        fields(
            Kind::Endpoint,
            json!({"service": "a", "address": "::1", "weight": 0})
        ),
        ["spec.weight"]
    );
    assert!(
        fields(
            Kind::Endpoint,
            json!({"service": "a", "address": "::1", "node": "pay-1.pod"})
        )
        .is_empty()
    );
    // `mtls` marks a workload behind a sidecar; a non-boolean is named, and `false` (the
    // default) is left out of the canonical JSON so that endpoints written before it existed
    // read back unchanged.
    let e = Spec::parse(
        Kind::Endpoint,
        json!({"service": "a", "address": "::1", "mtls": "yes"}),
    )
    .unwrap_err();
    assert_eq!(e.0[0].field, "spec.mtls");
    let plain = Spec::parse(Kind::Endpoint, json!({"service": "a", "address": "::1"})).unwrap();
    assert!(plain.to_json().get("mtls").is_none());
    let Spec::Endpoint(meshed) = Spec::parse(
        Kind::Endpoint,
        json!({"service": "a", "address": "::1", "mtls": true}),
    )
    .unwrap() else {
        panic!("not an endpoint")
    };
    assert!(meshed.mtls);
    for bad in ["", "a/b", "tab\there"] {
        assert_eq!(
            fields(
                Kind::Endpoint,
                json!({"service": "a", "address": "::1", "node": bad})
            ),
            ["spec.node"],
            "{bad:?}"
        );
    }
    assert_eq!(
        fields(Kind::Gateway, json!({"port": 80, "protocol": "tcp"})),
        ["spec.service"]
    );
}

#[test]
fn canonical_json_roundtrip() {
    let v = json!({"port": 80, "connectTimeout": "1500ms"});
    let s = Spec::parse(Kind::Service, v).unwrap();
    assert_eq!(s.to_json()["connectTimeout"], "1s500ms");
    assert_eq!(s.to_json()["protocol"], "http");
    let again = Spec::parse(Kind::Service, s.to_json()).unwrap();
    assert_eq!(again, s);
}

fn policy(extra: serde_json::Value) -> serde_json::Value {
    let mut base = json!({"service": "b", "action": "allow", "from": [{"services": ["a"]}]});
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    base
}

#[test]
fn authorization_policies_name_each_bad_field() {
    let ok = policy(json!({
        "from": [{"services": ["a", "c"]}, {"anyAuthenticated": true}],
        "to": [{"paths": ["/api/*", "/healthz"], "methods": ["GET", "PURGE"],
                "headers": [{"name": "x-team", "value": "pay"}, {"name": "x-v", "prefix": "2"}]}]
    }));
    assert!(fields(Kind::AuthorizationPolicy, ok).is_empty());
    assert!(fields(Kind::AuthorizationPolicy, policy(json!({"action": "deny"}))).is_empty());
    let cases = [
        (json!({"service": "Bad_Name"}), "spec.service"),
        (json!({"from": []}), "spec.from"),
        (json!({"from": [{}]}), "spec.from[0]"),
        (
            json!({"from": [{"services": ["a"], "anyAuthenticated": true}]}),
            "spec.from[0].anyAuthenticated",
        ),
        (
            json!({"from": [{"services": ["ok", "Not_A_Name"]}]}),
            "spec.from[0].services[1]",
        ),
        (json!({"to": [{}]}), "spec.to[0]"),
        (json!({"to": [{"paths": ["api"]}]}), "spec.to[0].paths[0]"),
        (
            json!({"to": [{"paths": ["/a", "/a*b"]}]}),
            "spec.to[0].paths[1]",
        ),
        (json!({"to": [{"paths": ["/a/**"]}]}), "spec.to[0].paths[0]"),
        (
            json!({"to": [{"paths": ["/a?x=1"]}]}),
            "spec.to[0].paths[0]",
        ),
        (
            json!({"to": [{"methods": ["GET", "G ET"]}]}),
            "spec.to[0].methods[1]",
        ),
        (json!({"to": [{"methods": [""]}]}), "spec.to[0].methods[0]"),
        (
            json!({"to": [{"headers": [{"name": "Bad Header", "value": "x"}]}]}),
            "spec.to[0].headers[0].name",
        ),
        (
            json!({"to": [{"headers": [{"name": ":method", "value": "GET"}]}]}),
            "spec.to[0].headers[0].name",
        ),
        (
            json!({"to": [{"headers": [{"name": "x"}]}]}),
            "spec.to[0].headers[0]",
        ),
        (
            json!({"to": [{"headers": [{"name": "x", "value": "a", "prefix": "b"}]}]}),
            "spec.to[0].headers[0]",
        ),
        (
            json!({"to": [{"headers": [{"name": "x", "value": "a\nb"}]}]}),
            "spec.to[0].headers[0].value",
        ),
        (json!({"description": "x".repeat(1025)}), "spec.description"),
    ];
    for (extra, field) in cases {
        assert_eq!(
            fields(Kind::AuthorizationPolicy, policy(extra.clone())),
            [field],
            "{extra}"
        );
    }
    let many: Vec<_> = (0..=MAX_RULES)
        .map(|_| json!({"anyAuthenticated": true}))
        .collect();
    assert_eq!(
        fields(Kind::AuthorizationPolicy, policy(json!({"from": many}))),
        ["spec.from"]
    );
    let methods: Vec<_> = (0..=MAX_MATCHES).map(|i| format!("M{i}")).collect();
    assert_eq!(
        fields(
            Kind::AuthorizationPolicy,
            policy(json!({"to": [{"methods": methods}]}))
        ),
        ["spec.to[0].methods"]
    );
    let e = Spec::parse(
        Kind::AuthorizationPolicy,
        policy(json!({"action": "maybe"})),
    )
    .unwrap_err();
    assert_eq!(e.0[0].field, "spec.action");
    let e = Spec::parse(
        Kind::AuthorizationPolicy,
        json!({"service": "b", "from": []}),
    )
    .unwrap_err();
    assert!(e.0[0].message.contains("action"), "{e}");
    let e = Spec::parse(
        Kind::AuthorizationPolicy,
        policy(json!({"to": [{"path": ["/"]}]})),
    )
    .unwrap_err();
    assert_eq!(e.0[0].field, "spec.to[0].path");
}

#[test]
fn authorization_policy_references_and_tcp_rule() {
    let spec = Spec::parse(
        Kind::AuthorizationPolicy,
        policy(json!({"from": [{"services": ["a", "c"]}, {"anyAuthenticated": true}, {"services": ["d"]}],
                      "to": [{"methods": ["GET"]}]})),
    )
    .unwrap();
    let refs: Vec<_> = spec
        .references()
        .into_iter()
        .map(|r| (r.field, r.name))
        .collect();
    let expected = [
        ("spec.service", "b"),
        ("spec.from[0].services[0]", "a"),
        ("spec.from[0].services[1]", "c"),
        ("spec.from[2].services[0]", "d"),
    ];
    assert_eq!(refs, expected.map(|(f, n)| (f.to_owned(), n.to_owned())));
    let tcp = Spec::parse(Kind::Service, json!({"port": 5432, "protocol": "tcp"})).unwrap();
    let http = Spec::parse(Kind::Service, json!({"port": 80})).unwrap();
    let destination = &spec.references()[0];
    let source = &spec.references()[1];
    let err = spec.check_target(destination, &tcp).unwrap();
    assert_eq!(err.field, "spec.to");
    assert!(spec.check_target(destination, &http).is_none());
    assert!(
        spec.check_target(source, &tcp).is_none(),
        "a tcp source is fine"
    );
    let err = tcp.check_referrer("b", "p", &spec).unwrap();
    assert_eq!(err.field, "spec.protocol");
    assert!(err.message.contains("\"p\""), "{err}");
    assert!(tcp.check_referrer("a", "p", &spec).is_none());
    let from_only = Spec::parse(Kind::AuthorizationPolicy, policy(json!({}))).unwrap();
    assert!(from_only.check_target(destination, &tcp).is_none());
    assert_eq!(
        Spec::constrained_by(Kind::Service),
        [Kind::AuthorizationPolicy]
    );
    assert!(Spec::constrained_by(Kind::Route).is_empty());
}

#[test]
fn authorization_policy_kind_and_json() {
    assert_eq!(Kind::AuthorizationPolicy.plural(), "authorization-policies");
    assert_eq!(
        Kind::from_plural("authorization-policies"),
        Some(Kind::AuthorizationPolicy)
    );
    let s = Spec::parse(Kind::AuthorizationPolicy, policy(json!({"action": "deny"}))).unwrap();
    assert_eq!(s.kind(), Kind::AuthorizationPolicy);
    assert_eq!(
        s.to_json(),
        json!({"service": "b", "action": "deny", "from": [{"services": ["a"]}]})
    );
    assert_eq!(
        Spec::parse(Kind::AuthorizationPolicy, s.to_json()).unwrap(),
        s
    );
    assert_eq!(
        spec::PathPattern::parse("/api/*"),
        spec::PathPattern::Prefix("/api/")
    );
    assert_eq!(
        spec::PathPattern::parse("/api"),
        spec::PathPattern::Exact("/api")
    );
}

#[test]
fn certificates_take_a_pem_key_and_keep_a_sealed_one_without_showing_either() {
    let written = Spec::parse(
        Kind::Certificate,
        json!({"certificateChain": "CHAIN", "privateKey": "-----BEGIN PRIVATE KEY-----\nS3\n"}),
    )
    .unwrap();
    let Spec::Certificate(c) = &written else {
        panic!("not a certificate");
    };
    assert!(matches!(c.private_key, spec::CertificateKey::Pem(_)));
    assert!(c.sealed_key().is_none());
    assert!(!format!("{written:?}").contains("S3"), "{written:?}");
    let stored = Spec::parse(
        Kind::Certificate,
        json!({"certificateChain": "CHAIN", "privateKey": {"kekId": "k1", "sealed": "c2VhbGVk"},
               "dnsNames": ["a.example.com"]}),
    )
    .unwrap();
    let Spec::Certificate(c) = &stored else {
        panic!("not a certificate");
    };
    assert_eq!(c.sealed_key().unwrap().kek_id, "k1");
    assert!(!format!("{stored:?}").contains("c2VhbGVk"));
    assert_eq!(stored.to_json()["privateKey"]["sealed"], "c2VhbGVk");
    assert_eq!(
        fields(
            Kind::Certificate,
            json!({"certificateChain": " ", "privateKey": ""})
        ),
        ["spec.certificateChain", "spec.privateKey"]
    );
    assert_eq!(
        fields(Kind::Certificate, json!({"certificateChain": "C"})),
        ["spec"]
    );
}

#[test]
fn gateway_tls_names_certificates_once_each() {
    let gw = |tls: serde_json::Value| json!({"port": 443, "routes": ["r"], "tls": tls});
    assert!(fields(Kind::Gateway, gw(json!({"certificates": ["a", "b"]}))).is_empty());
    assert_eq!(
        fields(Kind::Gateway, gw(json!({"certificates": []}))),
        ["spec.tls.certificates"]
    );
    assert_eq!(
        fields(Kind::Gateway, gw(json!({"certificates": ["a", "a"]}))),
        ["spec.tls.certificates[1]"]
    );
    assert_eq!(
        fields(Kind::Gateway, gw(json!({"certificates": ["A_"]}))),
        ["spec.tls.certificates[0]"]
    );
    assert_eq!(
        fields(
            Kind::Gateway,
            gw(json!({"mode": "passthrough", "certificates": ["a"]}))
        ),
        ["spec.tls.mode"]
    );
    let spec = Spec::parse(Kind::Gateway, gw(json!({"certificates": ["a", "b"]}))).unwrap();
    let refs: Vec<_> = spec
        .references()
        .into_iter()
        .filter(|r| r.kind == Kind::Certificate)
        .map(|r| (r.field, r.name))
        .collect();
    assert_eq!(
        refs,
        [
            ("spec.tls.certificates[0]".to_owned(), "a".to_owned()),
            ("spec.tls.certificates[1]".to_owned(), "b".to_owned())
        ]
    );
}

#[test]
fn service_tls_needs_a_dns_name_and_pem_certificates() {
    use crate::Kind;
    let parse = |v: serde_json::Value| {
        crate::Spec::parse(Kind::Service, v).and_then(|s| s.validate().map(|()| s))
    };
    assert!(parse(serde_json::json!({"port": 443, "tls": {"sni": "api.example.com"}})).is_ok());
    let err = |v| parse(v).unwrap_err().to_string();
    let e = err(serde_json::json!({"port": 443, "tls": {"sni": "not a name"}}));
    assert!(e.contains("spec.tls.sni"), "{e}");
    let e = err(
        serde_json::json!({"port": 443, "tls": {"sni": "a.example", "caCertificates": "nope"}}),
    );
    assert!(e.contains("spec.tls.caCertificates"), "{e}");
    let e = err(serde_json::json!({"port": 443, "protocol": "tcp", "tls": {"sni": "a.example"}}));
    assert!(e.contains("spec.tls"), "{e}");
}
