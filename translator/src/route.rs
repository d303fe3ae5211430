//! A route's rules → Envoy `Route`s: one per match, in order, each carrying the rule's action
//! (weighted backends, timeout, retries, rewrite, mirroring, or a redirect), header changes and
//! fault injection. The result is shared by every route configuration the route appears in.

use std::collections::{BTreeMap, HashMap};

use switchboard_model::spec::{Backend, HeaderModifier, Protocol, Redirect, Retry, RouteRule};
use switchboard_model::{RouteSpec, ServiceSpec};

use crate::common::{duration, millis, percent, u32_value};
use crate::filters::fault_config;
use crate::matcher::route_match;
use crate::names;
use crate::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
    header_value_option::HeaderAppendAction,
};
use crate::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, RetryPolicy, Route, RouteAction, WeightedCluster,
    redirect_action, retry_policy, route, route_action, weighted_cluster,
};
use switchboard_xds_proto::pack;

/// What a route translates to, independent of where it is served.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouteOut {
    /// Envoy routes of all rules, in order, encoded once as `VirtualHost.routes` entries so
    /// that every route configuration holding the route copies bytes instead of re-encoding.
    pub encoded_routes: Vec<u8>,
    /// Whether any rule injects faults: listeners serving it then need the fault filter.
    pub has_fault: bool,
    pub warnings: Vec<String>,
}

/// `VirtualHost.routes`.
const VH_ROUTES: u32 = 3;

/// Routes encoded as the `routes` entries of a virtual host (see `virtual_host`, which
/// assembles route configurations from these bytes).
pub(crate) fn encode_routes(routes: &[Route]) -> Vec<u8> {
    let mut buf = Vec::new();
    for r in routes {
        prost::encoding::message::encode(VH_ROUTES, r, &mut buf);
    }
    buf
}

/// Retried when a rule asks for retries without naming conditions.
const HTTP_RETRY_ON: &str = "5xx,reset,connect-failure";
/// The gRPC equivalent: the status codes gRPC's own retry design calls retryable. gRPC clients
/// ignore the HTTP conditions above, so gRPC services get these instead.
const GRPC_RETRY_ON: &str = "cancelled,deadline-exceeded,unavailable";
/// Envoy's and gRPC's defaults, written out so config dumps show what is in force.
const RETRY_BASE_INTERVAL_MS: u64 = 25;
const RETRY_MAX_INTERVAL_MS: u64 = 250;

/// Translates route `name`. `services` is only read for the backends' protocols (retry
/// defaults) and to warn about backends that do not exist.
pub(crate) fn translate_route(
    name: &str,
    spec: &RouteSpec,
    services: &BTreeMap<String, ServiceSpec>,
) -> RouteOut {
    let mut out = RouteOut {
        encoded_routes: Vec::new(),
        has_fault: false,
        warnings: Vec::new(),
    };
    let mut routes = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let label = match &rule.name {
            Some(n) => format!("{name}/{n}"),
            None => format!("{name}/{i}"),
        };
        let template = rule_route(&label, rule, services, &mut out);
        if rule.matches.is_empty() {
            routes.push(Route {
                name: label,
                r#match: Some(route_match(None)),
                ..template
            });
        } else {
            let several = rule.matches.len() > 1;
            for (j, m) in rule.matches.iter().enumerate() {
                let mut r = template.clone();
                r.name = if several {
                    format!("{label}/{j}")
                } else {
                    label.clone()
                };
                r.r#match = Some(route_match(Some(m)));
                routes.push(r);
            }
        }
    }
    out.encoded_routes = encode_routes(&routes);
    out
}

/// Everything of a rule's route but its name and match.
fn rule_route(
    label: &str,
    rule: &RouteRule,
    services: &BTreeMap<String, ServiceSpec>,
    out: &mut RouteOut,
) -> Route {
    let action = match &rule.redirect {
        Some(r) => route::Action::Redirect(redirect(r)),
        None => route_or_503(label, rule, services, &mut out.warnings),
    };
    let (request_headers_to_add, request_headers_to_remove) = header_changes(&rule.request_headers);
    let (response_headers_to_add, response_headers_to_remove) =
        header_changes(&rule.response_headers);
    let mut typed_per_filter_config = HashMap::new();
    if let Some(f) = &rule.fault {
        let config = fault_config(f);
        if config.delay.is_some() || config.abort.is_some() {
            // A single entry: see `hash` on why maps must not have more.
            typed_per_filter_config.insert(names::FAULT_FILTER.to_owned(), pack(&config));
            out.has_fault = true;
        }
    }
    Route {
        action: Some(action),
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        typed_per_filter_config,
        ..Default::default()
    }
}

/// The forwarding action, or a 503 when the rule has no backend (validation forbids that; the
/// rest of the route is still served).
fn route_or_503(
    label: &str,
    rule: &RouteRule,
    services: &BTreeMap<String, ServiceSpec>,
    warnings: &mut Vec<String>,
) -> route::Action {
    for b in &rule.backends {
        if !services.contains_key(&b.service) {
            warnings.push(format!(
                "route rule {label}: backend service {} does not exist; its share of requests fails with 503",
                b.service
            ));
        }
    }
    if let Some(m) = &rule.mirror
        && !services.contains_key(&m.service)
    {
        warnings.push(format!(
            "route rule {label}: mirror service {} does not exist; nothing is mirrored",
            m.service
        ));
    }
    let Some(cluster_specifier) = cluster_specifier(label, &rule.backends, warnings) else {
        warnings.push(format!(
            "route rule {label}: no backend and no redirect; answering 503"
        ));
        return route::Action::DirectResponse(DirectResponseAction {
            status: 503,
            ..Default::default()
        });
    };
    route::Action::Route(RouteAction {
        cluster_specifier: Some(cluster_specifier),
        // No timeout unless the rule sets one, as in Istio: Envoy's unset default (15 s)
        // would cut gRPC streams and long downloads passing through sidecars and gateways.
        timeout: Some(rule.timeout.map(duration).unwrap_or_default()),
        retry_policy: rule
            .retries
            .as_ref()
            .map(|r| retry(r, &rule.backends, services)),
        prefix_rewrite: rule
            .rewrite
            .as_ref()
            .and_then(|r| r.prefix.clone())
            .unwrap_or_default(),
        host_rewrite_specifier: rule
            .rewrite
            .as_ref()
            .and_then(|r| r.hostname.clone())
            .map(route_action::HostRewriteSpecifier::HostRewriteLiteral),
        request_mirror_policies: rule
            .mirror
            .iter()
            .map(|m| route_action::RequestMirrorPolicy {
                cluster: names::cluster(&m.service),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(percent(m.percent)),
                    runtime_key: String::new(),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

/// One cluster, or weighted clusters. Backends of weight 0 are dropped when others remain
/// (Envoy and gRPC reject a 0 weight in some versions); a service named twice gets the sum.
#[allow(deprecated)] // total_weight: see below.
fn cluster_specifier(
    label: &str,
    backends: &[Backend],
    warnings: &mut Vec<String>,
) -> Option<route_action::ClusterSpecifier> {
    let mut merged: Vec<(&str, u32)> = Vec::with_capacity(backends.len());
    for b in backends {
        match merged.iter_mut().find(|(s, _)| *s == b.service) {
            Some((_, w)) => *w = w.saturating_add(b.weight),
            None => merged.push((&b.service, b.weight)),
        }
    }
    if merged.iter().any(|(_, w)| *w > 0) {
        merged.retain(|(_, w)| *w > 0);
    } else if !merged.is_empty() {
        warnings.push(format!(
            "route rule {label}: every backend has weight 0; splitting requests evenly"
        ));
        merged.iter_mut().for_each(|(_, w)| *w = 1);
    }
    match merged.as_slice() {
        [] => None,
        [(service, _)] => Some(route_action::ClusterSpecifier::Cluster(names::cluster(
            service,
        ))),
        _ => {
            let total = merged.iter().fold(0u32, |t, (_, w)| t.saturating_add(*w));
            Some(route_action::ClusterSpecifier::WeightedClusters(
                WeightedCluster {
                    clusters: merged
                        .iter()
                        .map(|(service, w)| weighted_cluster::ClusterWeight {
                            name: names::cluster(service),
                            weight: Some(u32_value(*w)),
                            ..Default::default()
                        })
                        .collect(),
                    // Deprecated in Envoy (which now sums the weights itself) but older gRPC
                    // clients check it against the sum, so it is sent, and always right.
                    total_weight: Some(u32_value(total)),
                    ..Default::default()
                },
            ))
        }
    }
}

fn retry(r: &Retry, backends: &[Backend], services: &BTreeMap<String, ServiceSpec>) -> RetryPolicy {
    let mut retry_on = if r.retry_on.is_empty() {
        default_retry_on(backends, services).to_owned()
    } else {
        r.retry_on.join(",")
    };
    // Envoy only looks at retriable_status_codes under this condition; asking for codes
    // without it would silently do nothing.
    if !r.retriable_status_codes.is_empty()
        && !retry_on.split(',').any(|c| c == "retriable-status-codes")
    {
        retry_on.push_str(",retriable-status-codes");
    }
    RetryPolicy {
        retry_on,
        num_retries: Some(u32_value(r.attempts)),
        per_try_timeout: r.per_try_timeout.map(duration),
        retriable_status_codes: r.retriable_status_codes.clone(),
        retry_back_off: Some(retry_policy::RetryBackOff {
            base_interval: Some(millis(RETRY_BASE_INTERVAL_MS)),
            max_interval: Some(millis(RETRY_MAX_INTERVAL_MS)),
        }),
        ..Default::default()
    }
}

/// gRPC conditions when every backend is a gRPC service, HTTP ones when none is, both for a
/// mix (each kind of client ignores the conditions it does not know).
fn default_retry_on(
    backends: &[Backend],
    services: &BTreeMap<String, ServiceSpec>,
) -> &'static str {
    let grpc = |b: &&Backend| {
        services
            .get(&b.service)
            .is_some_and(|s| s.protocol == Protocol::Grpc)
    };
    let grpc_count = backends.iter().filter(grpc).count();
    if grpc_count == 0 {
        HTTP_RETRY_ON
    } else if grpc_count == backends.len() {
        GRPC_RETRY_ON
    } else {
        "5xx,reset,connect-failure,cancelled,deadline-exceeded,unavailable"
    }
}

/// `set` replaces, `add` appends, `remove` removes.
fn header_changes(m: &Option<HeaderModifier>) -> (Vec<HeaderValueOption>, Vec<String>) {
    let Some(m) = m else {
        return (Vec::new(), Vec::new());
    };
    let option =
        |h: &switchboard_model::spec::Header, action: HeaderAppendAction| HeaderValueOption {
            header: Some(HeaderValue {
                key: h.name.clone(),
                value: h.value.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        };
    let add = m
        .set
        .iter()
        .map(|h| option(h, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(
            m.add
                .iter()
                .map(|h| option(h, HeaderAppendAction::AppendIfExistsOrAdd)),
        )
        .collect();
    (add, m.remove.clone())
}

fn redirect(r: &Redirect) -> RedirectAction {
    use redirect_action::RedirectResponseCode as Code;
    let code = match r.status_code {
        301 => Code::MovedPermanently,
        303 => Code::SeeOther,
        307 => Code::TemporaryRedirect,
        308 => Code::PermanentRedirect,
        _ => Code::Found,
    };
    RedirectAction {
        host_redirect: r.hostname.clone().unwrap_or_default(),
        port_redirect: r.port.unwrap_or(0),
        response_code: code as i32,
        scheme_rewrite_specifier: r
            .scheme
            .clone()
            .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: r
            .path
            .clone()
            .map(redirect_action::PathRewriteSpecifier::PathRedirect),
        ..Default::default()
    }
}
