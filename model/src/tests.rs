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
