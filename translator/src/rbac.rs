//! Authorization policies → Envoy RBAC filters on a service's inbound listener.
//!
//! Envoy evaluates one action per RBAC configuration, so a service gets up to two filters, in
//! Istio's documented order: a DENY filter with the service's deny policies (a request matching
//! one is refused), then an ALLOW filter with its allow policies (a request matching none is
//! refused). With no allow policy the mesh's `defaultAuthorization` decides: `deny` is an ALLOW
//! filter without policies (it refuses everything the deny filter let through), `allow` is no
//! filter at all. Each Envoy policy is named after its resource, which is what Envoy's
//! `rbac_access_denied_matched_policy[…]` response detail (and our proxy's access log) shows.
//!
//! HTTP services get `envoy.filters.http.rbac`; TCP services `envoy.filters.network.rbac`,
//! which sees only the caller's identity: a policy narrowing by path, method or header (the
//! store refuses those for TCP services, so only a service that changed protocol under an old
//! policy has one) fails closed as Istio's does: an allow policy then matches nothing, a deny
//! policy denies its sources everything.

use std::collections::{BTreeMap, HashMap};

use prost::{Message, Name};
use switchboard_model::identity::{mesh_identity_prefix, spiffe_id};
use switchboard_model::spec::{AuthorizationHeader, AuthorizationOperation, PathPattern, Protocol};
use switchboard_model::{AuthorizationAction, AuthorizationPolicySpec};

use crate::MeshConfig;
use crate::filters::http_filter;
use crate::names;
use crate::pb::envoy::config::listener::v3::{Filter, filter};
use crate::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac as Rules, permission, principal, rbac,
};
use crate::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use crate::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use crate::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use crate::pb::envoy::r#type::matcher::v3::{
    PathMatcher, StringMatcher, path_matcher, string_matcher,
};
use crate::pb::google::protobuf::Any;

/// The RBAC filters of one service's inbound listener, in order: `http_filters` go before the
/// router of an HTTP service, `network_filters` before the TCP proxy of a TCP service. Empty
/// when every caller is allowed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundRbac {
    pub http_filters: Vec<HttpFilter>,
    pub network_filters: Vec<Filter>,
}

/// The RBAC filters for `service`'s inbound listeners (empty for a service that does not
/// exist: it has no inbound listener).
pub fn inbound_rbac(config: &MeshConfig, service: &str) -> InboundRbac {
    let policies = config.authorization_policies.iter();
    build(config, service, policies.map(|(n, p)| (n.as_str(), p))).0
}

/// [`inbound_rbac`] from the policies that may name `service` (others are skipped), with
/// warnings about policies a TCP service cannot fully honour.
pub(crate) fn build<'a>(
    config: &MeshConfig,
    service: &str,
    policies: impl Iterator<Item = (&'a str, &'a AuthorizationPolicySpec)>,
) -> (InboundRbac, Vec<String>) {
    let Some(spec) = config.services.get(service) else {
        return (InboundRbac::default(), vec![]);
    };
    let tcp = spec.protocol == Protocol::Tcp;
    let mut warnings = Vec::new();
    let mut deny = BTreeMap::new();
    let mut allow = BTreeMap::new();
    let mut has_allow = false;
    for (name, p) in policies.filter(|(_, p)| p.service == service) {
        has_allow |= p.action == AuthorizationAction::Allow;
        let permissions = if tcp && !p.to.is_empty() {
            warnings.push(format!(
                "authorization policy {name}: service {service} is tcp, which has no paths, \
                 methods or headers; {}",
                match p.action {
                    AuthorizationAction::Allow => "the policy allows nothing",
                    AuthorizationAction::Deny => "the policy denies its sources everything",
                }
            ));
            match p.action {
                AuthorizationAction::Allow => continue,
                AuthorizationAction::Deny => vec![any_permission()],
            }
        } else {
            permissions(&p.to)
        };
        let policy = Policy {
            permissions,
            principals: principals(config, p),
            ..Default::default()
        };
        match p.action {
            AuthorizationAction::Deny => deny.insert(name, policy),
            AuthorizationAction::Allow => allow.insert(name, policy),
        };
    }
    let mut out = InboundRbac::default();
    let mut configs = Vec::with_capacity(2);
    if !deny.is_empty() {
        configs.push((rbac::Action::Deny, deny));
    }
    if has_allow || config.spec.default_authorization == AuthorizationAction::Deny {
        configs.push((rbac::Action::Allow, allow));
    }
    for (action, policies) in configs {
        let label = match action {
            rbac::Action::Deny => "deny.",
            _ => "allow.",
        };
        if tcp {
            out.network_filters.push(Filter {
                name: names::RBAC_NETWORK_FILTER.to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(network_config(
                    action, &policies, label,
                ))),
            });
        } else {
            out.http_filters.push(http_filter(
                names::RBAC_HTTP_FILTER,
                http_config(action, &policies, label),
            ));
        }
    }
    (out, warnings)
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC`; its stats are
/// `http.<hcm stat prefix>.rbac.{deny,allow}.{allowed,denied}`.
fn http_config(action: rbac::Action, policies: &BTreeMap<&str, Policy>, label: &str) -> Any {
    let value = merged(action, policies, |rules| HttpRbac {
        rules: Some(rules),
        rules_stat_prefix: label.to_owned(),
        ..Default::default()
    });
    Any {
        type_url: HttpRbac::type_url(),
        value,
    }
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC`; its stats are
/// `sidecar_inbound.{deny,allow}.rbac.{allowed,denied}`.
fn network_config(action: rbac::Action, policies: &BTreeMap<&str, Policy>, label: &str) -> Any {
    let stat_prefix = format!("{}.{label}", names::stat_prefix(names::INBOUND));
    let value = merged(action, policies, |rules| NetworkRbac {
        rules: Some(rules),
        stat_prefix: stat_prefix.clone(),
        ..Default::default()
    });
    Any {
        type_url: NetworkRbac::type_url(),
        value,
    }
}

/// The encoding of the filter configuration `wrap` builds around `policies`, in name order.
///
/// `Rbac.policies` is a protobuf map, which prost holds in a `HashMap` and encodes in a random
/// order, while resource versions need the same bytes every time. Protobuf parsers merge
/// repeated occurrences of a message (map entries accumulate, singular fields take the last
/// value), so one message per policy, concatenated in name order, decodes to the whole
/// configuration and encodes deterministically.
fn merged<M: Message>(
    action: rbac::Action,
    policies: &BTreeMap<&str, Policy>,
    wrap: impl Fn(Rules) -> M,
) -> Vec<u8> {
    let rules = |policies: HashMap<String, Policy>| Rules {
        action: action as i32,
        policies,
        ..Default::default()
    };
    if policies.is_empty() {
        return wrap(rules(HashMap::new())).encode_to_vec();
    }
    let mut out = Vec::new();
    for (name, policy) in policies {
        let one = HashMap::from([((*name).to_owned(), policy.clone())]);
        out.extend(wrap(rules(one)).encode_to_vec());
    }
    out
}

/// Each source as principals (any one matches): a service's SPIFFE ID exactly, or any
/// identity of the mesh.
fn principals(config: &MeshConfig, p: &AuthorizationPolicySpec) -> Vec<Principal> {
    let (tenant, domain, mesh) = (&config.tenant, &config.trust_domain, &config.mesh);
    let mut out = Vec::new();
    for source in &p.from {
        for s in &source.services {
            out.push(authenticated(string_matcher::MatchPattern::Exact(
                spiffe_id(tenant, domain, mesh, s),
            )));
        }
        if source.any_authenticated {
            out.push(authenticated(string_matcher::MatchPattern::Prefix(
                mesh_identity_prefix(tenant, domain, mesh),
            )));
        }
    }
    out
}

fn authenticated(pattern: string_matcher::MatchPattern) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(matcher(pattern)),
            },
        )),
    }
}

/// `to` as permissions (any one matches); no `to` matches every request.
fn permissions(to: &[AuthorizationOperation]) -> Vec<Permission> {
    if to.is_empty() {
        return vec![any_permission()];
    }
    to.iter().map(operation).collect()
}

/// Every set field of `op` must match: paths (any one), methods (any one), each header.
fn operation(op: &AuthorizationOperation) -> Permission {
    let mut all = Vec::new();
    if !op.paths.is_empty() {
        all.push(any_of(op.paths.iter().map(|p| path(p)).collect()));
    }
    if !op.methods.is_empty() {
        let methods = op
            .methods
            .iter()
            .map(|m| header(":method", string_matcher::MatchPattern::Exact(m.clone())));
        all.push(any_of(methods.collect()));
    }
    all.extend(op.headers.iter().map(header_permission));
    if all.len() == 1 {
        all.pop().unwrap_or_else(any_permission)
    } else {
        rule(permission::Rule::AndRules(permission::Set { rules: all }))
    }
}

fn any_of(mut rules: Vec<Permission>) -> Permission {
    if rules.len() == 1 {
        rules.pop().unwrap_or_else(any_permission)
    } else {
        rule(permission::Rule::OrRules(permission::Set { rules }))
    }
}

/// `url_path` matches the path without the query string.
fn path(p: &str) -> Permission {
    let pattern = match PathPattern::parse(p) {
        PathPattern::Exact(e) => string_matcher::MatchPattern::Exact(e.to_owned()),
        PathPattern::Prefix(prefix) => string_matcher::MatchPattern::Prefix(prefix.to_owned()),
    };
    rule(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(matcher(pattern))),
    }))
}

fn header_permission(h: &AuthorizationHeader) -> Permission {
    let specifier = match (&h.value, &h.prefix) {
        (Some(v), _) => string_match(string_matcher::MatchPattern::Exact(v.clone())),
        (None, Some(p)) => string_match(string_matcher::MatchPattern::Prefix(p.clone())),
        // Validation requires one of them; a header with neither matches when present.
        (None, None) => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
    };
    header_rule(&h.name, specifier)
}

fn header(name: &str, pattern: string_matcher::MatchPattern) -> Permission {
    header_rule(name, string_match(pattern))
}

fn string_match(pattern: string_matcher::MatchPattern) -> header_matcher::HeaderMatchSpecifier {
    header_matcher::HeaderMatchSpecifier::StringMatch(matcher(pattern))
}

fn header_rule(name: &str, specifier: header_matcher::HeaderMatchSpecifier) -> Permission {
    rule(permission::Rule::Header(HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }))
}

fn matcher(pattern: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

fn any_permission() -> Permission {
    rule(permission::Rule::Any(true))
}

fn rule(r: permission::Rule) -> Permission {
    Permission { rule: Some(r) }
}
