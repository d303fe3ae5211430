//! Role-based access control: Envoy's RBAC HTTP filter (`envoy.filters.http.rbac`) and
//! network filter (`envoy.filters.network.rbac`), converted into a small tree of matchers
//! with every string matcher and regex compiled here, so the data path only walks it.
//!
//! Supported: `rules` with action ALLOW or DENY; principals `any`, `authenticated`
//! (`principal_name` matched against the peer certificate's URI SANs), `and_ids`, `or_ids`,
//! `not_id`; permissions `any`, `url_path`, `header` (HTTP only), `destination_port`,
//! `and_rules`, `or_rules`, `not_rule`. Refused, naming the field: `shadow_rules` and the
//! other shadow fields, the unified `matcher`, CEL `condition`s, the LOG action, audit
//! logging, and every other principal or permission kind. Per-route `RBACPerRoute`
//! overrides are refused by the route conversion.

use switchboard_xds_proto::pb::envoy::config::rbac::v3::{
    Permission as PbPermission, Policy as PbPolicy, Principal as PbPrincipal, Rbac as PbRules,
    permission, principal, rbac,
};
use switchboard_xds_proto::pb::envoy::r#type::matcher::v3::{PathMatcher, path_matcher};
use switchboard_xds_proto::{HttpRbac as PbHttpRbac, NetworkRbac as PbNetworkRbac};

use super::matcher::{HeaderMatch, ValueMatch, header, string};
use super::{ConfigError, Path, check_fields};

/// An RBAC HTTP filter of an HTTP connection manager, in filter chain order.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRbac {
    /// `None` when the filter has no `rules`: Envoy then enforces nothing.
    pub rules: Option<Rules>,
}

/// An RBAC network filter, evaluated once per connection after the TLS handshake.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRbac {
    /// The filter's `stat_prefix`, a label of its metrics.
    pub stat_prefix: String,
    pub rules: Option<Rules>,
}

/// One `rules` block: an action and its policies, sorted by name (Envoy's order, so the
/// policy reported for a request matched by several is always the same one).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub action: Action,
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A request is allowed only when a policy matches (no policies: nothing is allowed).
    Allow,
    /// A request is denied when a policy matches.
    Deny,
}

/// A policy matches when any of its permissions and any of its principals match.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// What is asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    /// The request path without its query string.
    UrlPath(ValueMatch),
    /// A request header; pseudo-headers (`:method`, `:path`, `:authority`) included.
    Header(HeaderMatch),
    /// The local port the connection arrived on.
    DestinationPort(u16),
}

/// Who asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// A peer that presented a verified client certificate; with a matcher, one of the
    /// certificate's URI SANs (the SPIFFE ID) must match it.
    Authenticated(Option<ValueMatch>),
}

/// Whether the rules belong to an HTTP or a network filter: network filters see no
/// requests, so HTTP-only permissions are refused there instead of never matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Http,
    Network,
}

/// The fields both filters refuse, with why.
const SHADOW: &str = "shadow rules are not supported; remove shadow_rules";

pub(crate) fn http_rbac(f: PbHttpRbac, path: &Path) -> Result<HttpRbac, ConfigError> {
    if f.shadow_rules.is_some() || !f.shadow_rules_stat_prefix.is_empty() {
        return Err(path.field("shadow_rules").err(SHADOW));
    }
    check_fields(&f, &["rules", "rules_stat_prefix"], path)?;
    let rules = f
        .rules
        .as_ref()
        .map(|r| rules(r, Layer::Http, &path.field("rules")))
        .transpose()?;
    Ok(HttpRbac { rules })
}

pub(crate) fn network_rbac(f: PbNetworkRbac, path: &Path) -> Result<NetworkRbac, ConfigError> {
    if f.shadow_rules.is_some() || !f.shadow_rules_stat_prefix.is_empty() {
        return Err(path.field("shadow_rules").err(SHADOW));
    }
    // enforcement_type ONE_TIME_ON_FIRST_BYTE (0, the default) is what this proxy does:
    // one decision per connection, once the peer is known.
    check_fields(&f, &["rules", "stat_prefix"], path)?;
    if f.stat_prefix.is_empty() {
        return Err(path.field("stat_prefix").err("required"));
    }
    let rules = f
        .rules
        .as_ref()
        .map(|r| rules(r, Layer::Network, &path.field("rules")))
        .transpose()?;
    Ok(NetworkRbac {
        stat_prefix: f.stat_prefix,
        rules,
    })
}

fn rules(r: &PbRules, layer: Layer, path: &Path) -> Result<Rules, ConfigError> {
    check_fields(r, &["action", "policies"], path)?;
    let action = match rbac::Action::try_from(r.action) {
        Ok(rbac::Action::Allow) => Action::Allow,
        Ok(rbac::Action::Deny) => Action::Deny,
        _ => {
            return Err(path
                .field("action")
                .err("only ALLOW and DENY are supported"));
        }
    };
    let mut names: Vec<&String> = r.policies.keys().collect();
    names.sort();
    let policies = names
        .into_iter()
        .map(|name| {
            let p = path.field(&format!("policies[{name:?}]"));
            policy(name, &r.policies[name], layer, &p)
        })
        .collect::<Result<_, _>>()?;
    Ok(Rules { action, policies })
}

fn policy(name: &str, p: &PbPolicy, layer: Layer, path: &Path) -> Result<Policy, ConfigError> {
    check_fields(p, &["permissions", "principals"], path)?;
    if p.permissions.is_empty() {
        return Err(path
            .field("permissions")
            .err("at least one permission is required"));
    }
    if p.principals.is_empty() {
        return Err(path
            .field("principals")
            .err("at least one principal is required"));
    }
    Ok(Policy {
        name: name.to_owned(),
        permissions: list(&p.permissions, "permissions", path, |x, p| {
            permission_of(x, layer, p)
        })?,
        principals: list(&p.principals, "principals", path, principal_of)?,
    })
}

fn list<T, U>(
    items: &[T],
    field: &str,
    path: &Path,
    convert: impl Fn(&T, &Path) -> Result<U, ConfigError>,
) -> Result<Vec<U>, ConfigError> {
    items
        .iter()
        .enumerate()
        .map(|(i, x)| convert(x, &path.index(field, i)))
        .collect()
}

fn permission_of(p: &PbPermission, layer: Layer, path: &Path) -> Result<Permission, ConfigError> {
    use permission::Rule as R;
    let mut supported = vec![
        "any",
        "and_rules",
        "or_rules",
        "not_rule",
        "destination_port",
    ];
    if layer == Layer::Http {
        supported.extend(["url_path", "header"]);
    }
    check_fields(p, &supported, path)?;
    let set = |s: &permission::Set, field: &str| {
        let sp = path.field(field);
        check_fields(s, &["rules"], &sp)?;
        list(&s.rules, "rules", &sp, |x, p| permission_of(x, layer, p))
    };
    Ok(match &p.rule {
        Some(R::Any(true)) => Permission::Any,
        Some(R::Any(false)) => return Err(path.field("any").err("must be true when set")),
        Some(R::AndRules(s)) => Permission::And(set(s, "and_rules")?),
        Some(R::OrRules(s)) => Permission::Or(set(s, "or_rules")?),
        Some(R::NotRule(inner)) => Permission::Not(Box::new(permission_of(
            inner,
            layer,
            &path.field("not_rule"),
        )?)),
        Some(R::DestinationPort(port)) => {
            Permission::DestinationPort(u16::try_from(*port).map_err(|_| {
                path.field("destination_port")
                    .err(format!("port {port} is out of range"))
            })?)
        }
        Some(R::UrlPath(m)) => Permission::UrlPath(url_path(m, &path.field("url_path"))?),
        Some(R::Header(h)) => Permission::Header(header(h, &path.field("header"))?),
        // Any other rule was refused by check_fields above.
        _ => return Err(path.err("a rule is required (any, url_path, header, ...)")),
    })
}

fn url_path(m: &PathMatcher, path: &Path) -> Result<ValueMatch, ConfigError> {
    check_fields(m, &["path"], path)?;
    match &m.rule {
        Some(path_matcher::Rule::Path(s)) => string(s, &path.field("path")),
        None => Err(path.field("path").err("required")),
    }
}

fn principal_of(p: &PbPrincipal, path: &Path) -> Result<Principal, ConfigError> {
    use principal::Identifier as I;
    check_fields(
        p,
        &["any", "and_ids", "or_ids", "not_id", "authenticated"],
        path,
    )?;
    let set = |s: &principal::Set, field: &str| {
        let sp = path.field(field);
        check_fields(s, &["ids"], &sp)?;
        list(&s.ids, "ids", &sp, principal_of)
    };
    Ok(match &p.identifier {
        Some(I::Any(true)) => Principal::Any,
        Some(I::Any(false)) => return Err(path.field("any").err("must be true when set")),
        Some(I::AndIds(s)) => Principal::And(set(s, "and_ids")?),
        Some(I::OrIds(s)) => Principal::Or(set(s, "or_ids")?),
        Some(I::NotId(inner)) => {
            Principal::Not(Box::new(principal_of(inner, &path.field("not_id"))?))
        }
        Some(I::Authenticated(a)) => {
            let ap = path.field("authenticated");
            check_fields(a, &["principal_name"], &ap)?;
            Principal::Authenticated(
                a.principal_name
                    .as_ref()
                    .map(|m| string(m, &ap.field("principal_name")))
                    .transpose()?,
            )
        }
        _ => return Err(path.err("an identifier is required (any, authenticated, ...)")),
    })
}
