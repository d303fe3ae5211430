//! RBAC enforcement, as Envoy's RBAC filters decide: the HTTP filters of a listener run in
//! order before routing, the network filters once per connection after the TLS handshake;
//! the first filter that denies ends it. Pure: the caller answers 403 or closes the
//! connection, and counts it.
//!
//! Evaluation walks the matcher tree converted (and compiled) by the xDS client; it
//! allocates only to join a repeated header or to rebuild `:path` with its query.

use std::borrow::Cow;

use http::{HeaderMap, Method};
use switchboard_proxy_xds::config::matcher::HeaderMatch;
use switchboard_proxy_xds::config::rbac::{
    Action, HttpRbac, NetworkRbac, Permission, Policy, Principal, Rules,
};

use crate::router::value_matches;
use crate::tls::PeerIdentity;

/// The request as RBAC sees it. `request` is `None` for a network filter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub(crate) peer: Option<&'a PeerIdentity>,
    /// The local port of the connection (`destination_port`).
    pub(crate) destination_port: Option<u16>,
    pub(crate) request: Option<RequestView<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestView<'a> {
    pub(crate) method: &'a Method,
    pub(crate) host: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
}

/// A denial: the policy that matched under DENY, `None` when no policy allowed the request
/// under ALLOW (Envoy reports `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Denied<'a> {
    pub(crate) policy: Option<&'a str>,
}

impl Denied<'_> {
    /// The policy's name, or `none`: the `policy` label of the denial counter.
    pub(crate) fn policy_name(&self) -> &str {
        self.policy.unwrap_or("none")
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for a denied request.
    pub(crate) fn details(&self) -> String {
        format!("rbac_access_denied_matched_policy[{}]", self.policy_name())
    }
}

/// The first denial of `filters` (HTTP RBAC filters in chain order), if any.
pub(crate) fn check_http<'a>(filters: &'a [HttpRbac], subject: &Subject<'_>) -> Option<Denied<'a>> {
    filters
        .iter()
        .filter_map(|f| f.rules.as_ref())
        .find_map(|rules| check(rules, subject))
}

/// The first denial of `filters` (network RBAC filters in chain order), with the denying
/// filter's `stat_prefix`.
pub(crate) fn check_network<'a>(
    filters: &'a [NetworkRbac],
    subject: &Subject<'_>,
) -> Option<(&'a str, Denied<'a>)> {
    filters.iter().find_map(|f| {
        let denied = check(f.rules.as_ref()?, subject)?;
        Some((f.stat_prefix.as_str(), denied))
    })
}

fn check<'a>(rules: &'a Rules, subject: &Subject<'_>) -> Option<Denied<'a>> {
    let matched = rules
        .policies
        .iter()
        .find(|p| policy_matches(p, subject))
        .map(|p| p.name.as_str());
    match (rules.action, matched) {
        (Action::Allow, Some(_)) | (Action::Deny, None) => None,
        (Action::Allow, None) => Some(Denied { policy: None }),
        (Action::Deny, Some(name)) => Some(Denied { policy: Some(name) }),
    }
}

fn policy_matches(p: &Policy, s: &Subject<'_>) -> bool {
    p.permissions.iter().any(|x| permission_matches(x, s))
        && p.principals.iter().any(|x| principal_matches(x, s))
}

fn permission_matches(p: &Permission, s: &Subject<'_>) -> bool {
    match p {
        Permission::Any => true,
        Permission::And(all) => all.iter().all(|x| permission_matches(x, s)),
        Permission::Or(any) => any.iter().any(|x| permission_matches(x, s)),
        Permission::Not(inner) => !permission_matches(inner, s),
        Permission::DestinationPort(port) => s.destination_port == Some(*port),
        Permission::UrlPath(m) => s.request.is_some_and(|r| value_matches(m, r.path)),
        Permission::Header(h) => s.request.is_some_and(|r| header_matches(h, &r)),
    }
}

fn principal_matches(p: &Principal, s: &Subject<'_>) -> bool {
    match p {
        Principal::Any => true,
        Principal::And(all) => all.iter().all(|x| principal_matches(x, s)),
        Principal::Or(any) => any.iter().any(|x| principal_matches(x, s)),
        Principal::Not(inner) => !principal_matches(inner, s),
        Principal::Authenticated(None) => s.peer.is_some(),
        Principal::Authenticated(Some(m)) => s
            .peer
            .is_some_and(|peer| peer.uri_sans.iter().any(|san| value_matches(m, san))),
    }
}

/// Envoy's header matching: repeated values joined by `,`; pseudo-headers from the request.
fn header_matches(h: &HeaderMatch, r: &RequestView<'_>) -> bool {
    let value: Option<Cow<'_, str>> = match h.name.as_str() {
        ":method" => Some(Cow::Borrowed(r.method.as_str())),
        ":authority" => Some(Cow::Borrowed(r.host)),
        ":path" => Some(match r.query {
            Some(q) => Cow::Owned(format!("{}?{q}", r.path)),
            None => Cow::Borrowed(r.path),
        }),
        name => {
            let mut values = r
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok());
            match (values.next(), values.next()) {
                (None, _) => None,
                (Some(one), None) => Some(Cow::Borrowed(one)),
                (Some(first), Some(second)) => {
                    let mut joined = format!("{first},{second}");
                    for v in values {
                        joined.push(',');
                        joined.push_str(v);
                    }
                    Some(Cow::Owned(joined))
                }
            }
        }
    };
    let found = value.is_some_and(|v| value_matches(&h.value, &v));
    found != h.invert
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proxy_xds::config::matcher::ValueMatch;

    fn policy(name: &str, permissions: Vec<Permission>, principals: Vec<Principal>) -> Policy {
        Policy {
            name: name.into(),
            permissions,
            principals,
        }
    }

    fn spiffe(id: &str) -> Principal {
        Principal::Authenticated(Some(ValueMatch::Exact(id.into())))
    }

    fn subject<'a>(peer: Option<&'a PeerIdentity>, req: RequestView<'a>) -> Subject<'a> {
        Subject {
            peer,
            destination_port: Some(15006),
            request: Some(req),
        }
    }

    #[test]
    fn allow_deny_and_matchers() {
        let headers = HeaderMap::new();
        let get = RequestView {
            method: &Method::GET,
            host: "svc",
            path: "/api/x",
            query: Some("q=1"),
            headers: &headers,
        };
        let a = PeerIdentity {
            uri_sans: vec!["spiffe://t/ns/a".into()],
            ..Default::default()
        };
        let c = PeerIdentity {
            uri_sans: vec!["spiffe://t/ns/c".into()],
            ..Default::default()
        };
        let allow_a = Rules {
            action: Action::Allow,
            policies: vec![policy(
                "a-reads",
                vec![Permission::And(vec![
                    Permission::UrlPath(ValueMatch::Prefix("/api/".into())),
                    Permission::Header(HeaderMatch {
                        name: ":method".into(),
                        value: ValueMatch::Exact("GET".into()),
                        invert: false,
                    }),
                ])],
                vec![spiffe("spiffe://t/ns/a")],
            )],
        };
        let filters = [HttpRbac {
            rules: Some(allow_a),
        }];
        assert_eq!(check_http(&filters, &subject(Some(&a), get)), None);
        let denied = check_http(&filters, &subject(Some(&c), get)).unwrap();
        assert_eq!(denied.details(), "rbac_access_denied_matched_policy[none]");
        assert!(check_http(&filters, &subject(None, get)).is_some());
        let post = RequestView {
            method: &Method::POST,
            ..get
        };
        assert!(check_http(&filters, &subject(Some(&a), post)).is_some());

        let deny_a = Rules {
            action: Action::Deny,
            policies: vec![policy(
                "no-a",
                vec![Permission::Not(Box::new(Permission::DestinationPort(1)))],
                vec![Principal::Or(vec![spiffe("spiffe://t/ns/a")])],
            )],
        };
        let filters = [
            HttpRbac { rules: None },
            HttpRbac {
                rules: Some(deny_a),
            },
        ];
        let denied = check_http(&filters, &subject(Some(&a), get)).unwrap();
        assert_eq!(denied.details(), "rbac_access_denied_matched_policy[no-a]");
        assert_eq!(check_http(&filters, &subject(Some(&c), get)), None);

        let nobody = [HttpRbac {
            rules: Some(Rules {
                action: Action::Allow,
                policies: vec![],
            }),
        }];
        assert!(check_http(&nobody, &subject(Some(&a), get)).is_some());
    }

    #[test]
    fn repeated_headers_and_path_with_query() {
        let mut headers = HeaderMap::new();
        headers.append("x-role", "a".parse().unwrap());
        headers.append("x-role", "b".parse().unwrap());
        let req = RequestView {
            method: &Method::GET,
            host: "svc",
            path: "/p",
            query: Some("q=1"),
            headers: &headers,
        };
        let h = |name: &str, value: &str| HeaderMatch {
            name: name.into(),
            value: ValueMatch::Exact(value.into()),
            invert: false,
        };
        assert!(header_matches(&h("x-role", "a,b"), &req));
        assert!(header_matches(&h(":path", "/p?q=1"), &req));
        assert!(header_matches(&h(":authority", "svc"), &req));
        let missing = HeaderMatch {
            invert: true,
            ..h("x-missing", "1")
        };
        assert!(header_matches(&missing, &req));
    }
}
