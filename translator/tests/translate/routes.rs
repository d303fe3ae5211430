//! Route rules → Envoy routes: one test per feature, each a table of (input, expected).

use std::collections::HashMap;

use serde_json::{Value, json};
use switchboard_translator::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
    header_value_option::HeaderAppendAction,
};
use switchboard_translator::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route, RouteAction,
    RouteMatch, WeightedCluster, header_matcher, query_parameter_matcher, redirect_action,
    retry_policy, route, route_action, route_match, weighted_cluster,
};
use switchboard_translator::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay, fault_delay,
};
use switchboard_translator::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use switchboard_translator::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher,
};
use switchboard_translator::pb::envoy::r#type::v3::FractionalPercent;
use switchboard_translator::pb::google::protobuf::{Duration, UInt32Value};

use crate::common::{base, rule_route, rules_routes, unpack};

/// The match of a one-rule route to service `a` that has the one match `m`.
fn match_of(m: Value) -> RouteMatch {
    rule_route(json!({"matches": [m], "backends": [{"service": "a"}]}))
        .r#match
        .unwrap()
}

fn action(r: &Route) -> &RouteAction {
    match &r.action {
        Some(route::Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

fn exact(v: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(v.into())),
        ..Default::default()
    }
}

fn regex(v: &str) -> RegexMatcher {
    RegexMatcher {
        regex: v.into(),
        engine_type: None,
    }
}

fn secs(seconds: i64, millis: i32) -> Duration {
    Duration {
        seconds,
        nanos: millis * 1_000_000,
    }
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn hundredths(numerator: u32) -> FractionalPercent {
    FractionalPercent {
        numerator,
        denominator: 0, // HUNDRED
    }
}

#[test]
fn path_matches() {
    use route_match::PathSpecifier as P;
    for (path, expected) in [
        (
            json!({"type": "exact", "value": "/pay"}),
            P::Path("/pay".into()),
        ),
        (
            json!({"type": "prefix", "value": "/api/"}),
            P::Prefix("/api/".into()),
        ),
        (
            json!({"type": "regex", "value": "/v[0-9]+/.*"}),
            P::SafeRegex(regex("/v[0-9]+/.*")),
        ),
    ] {
        let m = match_of(json!({"path": path}));
        assert_eq!(m.path_specifier, Some(expected));
        assert!(m.headers.is_empty() && m.query_parameters.is_empty());
    }
}

#[test]
fn no_match_is_prefix_slash_and_each_match_is_a_route() {
    let routes = rules_routes(json!([
        {"backends": [{"service": "a"}]},
    ]));
    assert_eq!(
        routes[0].r#match,
        Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        })
    );

    let routes = rules_routes(json!([
        {"name": "two", "matches": [
            {"path": {"type": "exact", "value": "/x"}},
            {"headers": [{"name": "x-y", "value": "1"}]},
        ], "backends": [{"service": "a"}]},
        {"matches": [{"path": {"type": "prefix", "value": "/z"}}], "backends": [{"service": "b"}]},
    ]));
    let got: Vec<(&str, &str)> = routes
        .iter()
        .map(|r| match &action(r).cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => (r.name.as_str(), c.as_str()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, [("r/two/0", "a"), ("r/two/1", "a"), ("r/1", "b")]);
    // A match without a path matches every path.
    assert_eq!(
        routes[1].r#match.as_ref().unwrap().path_specifier,
        Some(route_match::PathSpecifier::Prefix("/".into()))
    );
}

#[test]
fn header_matches() {
    use header_matcher::HeaderMatchSpecifier as H;
    use string_matcher::MatchPattern as S;
    let string = |p: S| {
        H::StringMatch(StringMatcher {
            match_pattern: Some(p),
            ..Default::default()
        })
    };
    for (header, expected, invert) in [
        (
            json!({"name": "x-env", "value": "canary"}),
            H::StringMatch(exact("canary")),
            false,
        ),
        (
            json!({"name": "x-env", "type": "exact", "value": "a"}),
            H::StringMatch(exact("a")),
            false,
        ),
        (
            json!({"name": "x-env", "type": "prefix", "value": "can"}),
            string(S::Prefix("can".into())),
            false,
        ),
        (
            json!({"name": "x-env", "type": "suffix", "value": "ary"}),
            string(S::Suffix("ary".into())),
            false,
        ),
        (
            json!({"name": "x-env", "type": "regex", "value": "c.*y"}),
            string(S::SafeRegex(regex("c.*y"))),
            false,
        ),
        (
            json!({"name": "x-env", "type": "present"}),
            H::PresentMatch(true),
            false,
        ),
        (
            json!({"name": "x-env", "type": "present", "invert": true}),
            H::PresentMatch(true),
            true,
        ),
        (
            json!({"name": "x-env", "value": "prod", "invert": true}),
            H::StringMatch(exact("prod")),
            true,
        ),
    ] {
        assert_eq!(
            match_of(json!({"headers": [header.clone()]})).headers,
            vec![HeaderMatcher {
                name: "x-env".into(),
                invert_match: invert,
                header_match_specifier: Some(expected),
                ..Default::default()
            }],
            "{header}"
        );
    }
}

#[test]
fn query_matches() {
    use query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    for (query, expected) in [
        (
            json!({"name": "v", "value": "2"}),
            Q::StringMatch(exact("2")),
        ),
        (
            json!({"name": "v", "type": "regex", "value": "[0-9]+"}),
            Q::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex("[0-9]+"))),
                ..Default::default()
            }),
        ),
        (
            json!({"name": "v", "type": "present"}),
            Q::PresentMatch(true),
        ),
    ] {
        assert_eq!(
            match_of(json!({"queryParams": [query.clone()]})).query_parameters,
            vec![QueryParameterMatcher {
                name: "v".into(),
                query_parameter_match_specifier: Some(expected),
            }],
            "{query}"
        );
    }
}

#[test]
fn method_is_a_method_header_match() {
    for method in ["GET", "POST", "DELETE"] {
        let headers =
            match_of(json!({"method": method, "headers": [{"name": "x-a", "type": "present"}]}))
                .headers;
        assert_eq!(headers.len(), 2);
        assert_eq!(
            headers[1],
            HeaderMatcher {
                name: ":method".into(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    exact(method)
                )),
                ..Default::default()
            }
        );
    }
}

#[test]
fn weighted_backends() {
    use route_action::ClusterSpecifier as C;
    let weighted = |cs: &[(&str, u32)], total: u32| {
        #[allow(deprecated)]
        C::WeightedClusters(WeightedCluster {
            clusters: cs
                .iter()
                .map(|(n, w)| weighted_cluster::ClusterWeight {
                    name: (*n).into(),
                    weight: u32v(*w),
                    ..Default::default()
                })
                .collect(),
            total_weight: u32v(total),
            ..Default::default()
        })
    };
    for (backends, expected) in [
        (json!([{"service": "a"}]), C::Cluster("a".into())),
        (
            json!([{"service": "a", "weight": 7}]),
            C::Cluster("a".into()),
        ),
        (
            json!([{"service": "a", "weight": 90}, {"service": "b", "weight": 10}]),
            weighted(&[("a", 90), ("b", 10)], 100),
        ),
        (
            json!([{"service": "a"}, {"service": "b"}, {"service": "m"}]),
            weighted(&[("a", 1), ("b", 1), ("m", 1)], 3),
        ),
        // A 0-weight backend is dropped while others remain…
        (
            json!([{"service": "a", "weight": 0}, {"service": "b", "weight": 5}, {"service": "m", "weight": 5}]),
            weighted(&[("b", 5), ("m", 5)], 10),
        ),
        (
            json!([{"service": "a", "weight": 0}, {"service": "b", "weight": 5}]),
            C::Cluster("b".into()),
        ),
        // …and a service named twice gets the sum.
        (
            json!([{"service": "a", "weight": 1}, {"service": "b", "weight": 2}, {"service": "a", "weight": 3}]),
            weighted(&[("a", 4), ("b", 2)], 6),
        ),
    ] {
        let r = rule_route(json!({"backends": backends.clone()}));
        assert_eq!(action(&r).cluster_specifier, Some(expected), "{backends}");
    }
}

#[test]
fn timeout() {
    for (timeout, expected) in [
        (json!("5s"), Some(secs(5, 0))),
        (json!("1m1s250ms"), Some(secs(61, 250))),
        // Unset: 0s, no timeout (Envoy's own default of 15 s would cut streams).
        (json!(null), Some(secs(0, 0))),
    ] {
        let mut rule = json!({"backends": [{"service": "a"}]});
        if !timeout.is_null() {
            rule["timeout"] = timeout.clone();
        }
        assert_eq!(action(&rule_route(rule)).timeout, expected, "{timeout}");
    }
}

#[test]
fn retries() {
    let policy = |retry_on: &str, n: u32| RetryPolicy {
        retry_on: retry_on.into(),
        num_retries: u32v(n),
        retry_back_off: Some(retry_policy::RetryBackOff {
            base_interval: Some(secs(0, 25)),
            max_interval: Some(secs(0, 250)),
        }),
        ..Default::default()
    };
    for (backends, retries, expected) in [
        // HTTP services: HTTP conditions by default.
        (
            json!([{"service": "a"}]),
            json!({"attempts": 3}),
            policy("5xx,reset,connect-failure", 3),
        ),
        // gRPC services: gRPC status conditions.
        (
            json!([{"service": "g"}]),
            json!({"attempts": 2}),
            policy("cancelled,deadline-exceeded,unavailable", 2),
        ),
        // A mix: both.
        (
            json!([{"service": "a"}, {"service": "g"}]),
            json!({"attempts": 2}),
            policy(
                "5xx,reset,connect-failure,cancelled,deadline-exceeded,unavailable",
                2,
            ),
        ),
        // Conditions as given, joined.
        (
            json!([{"service": "a"}]),
            json!({"attempts": 1, "retryOn": ["gateway-error", "reset"]}),
            policy("gateway-error,reset", 1),
        ),
        (
            json!([{"service": "a"}]),
            json!({"attempts": 4, "perTryTimeout": "250ms"}),
            RetryPolicy {
                per_try_timeout: Some(secs(0, 250)),
                ..policy("5xx,reset,connect-failure", 4)
            },
        ),
        // Status codes only work under retriable-status-codes, which is added.
        (
            json!([{"service": "a"}]),
            json!({"attempts": 2, "retryOn": ["5xx"], "retriableStatusCodes": [409, 429]}),
            RetryPolicy {
                retriable_status_codes: vec![409, 429],
                ..policy("5xx,retriable-status-codes", 2)
            },
        ),
        (
            json!([{"service": "a"}]),
            json!({"attempts": 2, "retryOn": ["retriable-status-codes"], "retriableStatusCodes": [503]}),
            RetryPolicy {
                retriable_status_codes: vec![503],
                ..policy("retriable-status-codes", 2)
            },
        ),
    ] {
        let r = rule_route(json!({"backends": backends, "retries": retries.clone()}));
        assert_eq!(action(&r).retry_policy, Some(expected), "{retries}");
    }
    let r = rule_route(json!({"backends": [{"service": "a"}]}));
    assert_eq!(action(&r).retry_policy, None);
}

#[test]
fn header_changes_both_directions() {
    let opt = |k: &str, v: &str, a: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
        append_action: a as i32,
        ..Default::default()
    };
    let changes = json!({
        "set": [{"name": "x-set", "value": "1"}],
        "add": [{"name": "x-add", "value": "2"}],
        "remove": ["x-gone", "x-gone-too"],
    });
    let expected_add = vec![
        opt("x-set", "1", HeaderAppendAction::OverwriteIfExistsOrAdd),
        opt("x-add", "2", HeaderAppendAction::AppendIfExistsOrAdd),
    ];
    let expected_remove = vec!["x-gone".to_string(), "x-gone-too".to_string()];

    let r = rule_route(json!({"backends": [{"service": "a"}], "requestHeaders": changes}));
    assert_eq!(r.request_headers_to_add, expected_add);
    assert_eq!(r.request_headers_to_remove, expected_remove);
    assert!(r.response_headers_to_add.is_empty() && r.response_headers_to_remove.is_empty());

    let r = rule_route(json!({"backends": [{"service": "a"}], "responseHeaders": changes}));
    assert_eq!(r.response_headers_to_add, expected_add);
    assert_eq!(r.response_headers_to_remove, expected_remove);
    assert!(r.request_headers_to_add.is_empty() && r.request_headers_to_remove.is_empty());
}

#[test]
fn redirects() {
    use redirect_action::RedirectResponseCode as Code;
    let plain = |code: Code| RedirectAction {
        response_code: code as i32,
        ..Default::default()
    };
    for (redirect, expected) in [
        (json!({}), plain(Code::Found)),
        (json!({"statusCode": 301}), plain(Code::MovedPermanently)),
        (json!({"statusCode": 302}), plain(Code::Found)),
        (json!({"statusCode": 303}), plain(Code::SeeOther)),
        (json!({"statusCode": 307}), plain(Code::TemporaryRedirect)),
        (json!({"statusCode": 308}), plain(Code::PermanentRedirect)),
        (
            json!({"scheme": "https", "hostname": "new.example", "path": "/moved", "port": 8443, "statusCode": 301}),
            RedirectAction {
                scheme_rewrite_specifier: Some(
                    redirect_action::SchemeRewriteSpecifier::SchemeRedirect("https".into()),
                ),
                host_redirect: "new.example".into(),
                path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                    "/moved".into(),
                )),
                port_redirect: 8443,
                response_code: Code::MovedPermanently as i32,
                ..Default::default()
            },
        ),
    ] {
        let r = rule_route(json!({"redirect": redirect.clone()}));
        assert_eq!(
            r.action,
            Some(route::Action::Redirect(expected)),
            "{redirect}"
        );
    }
}

#[test]
fn rewrites() {
    let r = rule_route(json!({
        "matches": [{"path": {"type": "prefix", "value": "/old/"}}],
        "backends": [{"service": "a"}],
        "rewrite": {"prefix": "/new/"},
    }));
    assert_eq!(action(&r).prefix_rewrite, "/new/");
    assert_eq!(action(&r).host_rewrite_specifier, None);

    let r =
        rule_route(json!({"backends": [{"service": "a"}], "rewrite": {"hostname": "internal.a"}}));
    assert_eq!(action(&r).prefix_rewrite, "");
    assert_eq!(
        action(&r).host_rewrite_specifier,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
            "internal.a".into()
        ))
    );
}

#[test]
fn fault_injection_per_route() {
    let delay = |ms: i32, pct: u32| FaultDelay {
        percentage: Some(hundredths(pct)),
        fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(secs(0, ms))),
    };
    let abort = |e: fault_abort::ErrorType, pct: u32| FaultAbort {
        percentage: Some(hundredths(pct)),
        error_type: Some(e),
        ..Default::default()
    };
    for (fault, expected) in [
        (
            json!({"delay": {"fixed": "100ms"}}),
            HttpFault {
                delay: Some(delay(100, 100)),
                ..Default::default()
            },
        ),
        (
            json!({"delay": {"fixed": "5ms", "percent": 10}}),
            HttpFault {
                delay: Some(delay(5, 10)),
                ..Default::default()
            },
        ),
        (
            json!({"abort": {"httpStatus": 503, "percent": 25}}),
            HttpFault {
                abort: Some(abort(fault_abort::ErrorType::HttpStatus(503), 25)),
                ..Default::default()
            },
        ),
        (
            json!({"abort": {"grpcStatus": 14}}),
            HttpFault {
                abort: Some(abort(fault_abort::ErrorType::GrpcStatus(14), 100)),
                ..Default::default()
            },
        ),
        (
            json!({"delay": {"fixed": "1ms", "percent": 1}, "abort": {"httpStatus": 500, "percent": 2}}),
            HttpFault {
                delay: Some(delay(1, 1)),
                abort: Some(abort(fault_abort::ErrorType::HttpStatus(500), 2)),
                ..Default::default()
            },
        ),
    ] {
        let r = rule_route(json!({"backends": [{"service": "a"}], "fault": fault.clone()}));
        assert_eq!(r.typed_per_filter_config.len(), 1);
        let got: HttpFault = unpack(
            &r.typed_per_filter_config["envoy.filters.http.fault"],
            "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        );
        assert_eq!(got, expected, "{fault}");
    }
    let r = rule_route(json!({"backends": [{"service": "a"}]}));
    assert_eq!(r.typed_per_filter_config, HashMap::new());
}

#[test]
fn mirroring() {
    for (mirror, pct) in [
        (json!({"service": "m"}), 100),
        (json!({"service": "m", "percent": 5}), 5),
    ] {
        let r = rule_route(json!({"backends": [{"service": "a"}], "mirror": mirror}));
        assert_eq!(
            action(&r).request_mirror_policies,
            vec![route_action::RequestMirrorPolicy {
                cluster: "m".into(),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(hundredths(pct)),
                    runtime_key: String::new(),
                }),
                ..Default::default()
            }]
        );
    }
}

#[test]
fn missing_backend_is_a_warning_not_a_failure() {
    let res = base().route_to("r", &["r"], "nope").translate();
    assert_eq!(res.warnings.len(), 1, "{:?}", res.warnings);
    assert!(res.warnings[0].contains("nope"));
    assert!(res.route_configurations.contains_key("r"));
}
