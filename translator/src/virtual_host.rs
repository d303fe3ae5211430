//! Route configurations: a route's own (proxyless clients), a route-less service's default,
//! the sidecars' outbound one (every route and service of the mesh) and a gateway's.
//!
//! Envoy NACKs a route configuration in which two virtual hosts share a domain, so domains are
//! handed out once per configuration: host names routes claim first, then default service
//! names, then aliases (`h` for a route's `h:port`, so that `Host: h` and `HTTP_PROXY` clients
//! that omit the port still match).
//!
//! Configurations that hold routes are assembled from each route's pre-encoded routes
//! ([`RouteOut::encoded_routes`]) rather than from messages: the outbound configuration holds
//! every route of the mesh, and cloning and re-encoding all of them on every change would
//! dominate an incremental update. The bytes are exactly what prost would produce for the
//! same message (a test checks), so versions do not depend on the path taken.

use std::borrow::Cow;
use std::collections::HashSet;

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use switchboard_model::RouteSpec;

use crate::names;
use crate::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, route, route_action,
};
use crate::route::{RouteOut, encode_routes};

/// `RouteConfiguration.name`, `RouteConfiguration.virtual_hosts`.
const RC_NAME: u32 = 1;
const RC_VIRTUAL_HOSTS: u32 = 2;
/// `VirtualHost.name`, `.domains` (`.routes` is encoded by [`encode_routes`]).
const VH_NAME: u32 = 1;
const VH_DOMAINS: u32 = 2;

/// A virtual host with only `name`, `domains` and (pre-encoded) `routes` set: all ours have.
struct VirtualHostParts<'a> {
    name: &'a str,
    domains: Vec<Cow<'a, str>>,
    routes: Cow<'a, [u8]>,
}

impl VirtualHostParts<'_> {
    fn encoded_len(&self) -> usize {
        let name = if self.name.is_empty() {
            0
        } else {
            str_len(VH_NAME, self.name)
        };
        name + self
            .domains
            .iter()
            .map(|d| str_len(VH_DOMAINS, d))
            .sum::<usize>()
            + self.routes.len()
    }

    /// As prost encodes it: fields in tag order, an empty name left out, every domain written.
    fn encode(&self, buf: &mut Vec<u8>) {
        if !self.name.is_empty() {
            encode_str(VH_NAME, self.name, buf);
        }
        for d in &self.domains {
            encode_str(VH_DOMAINS, d, buf);
        }
        buf.extend_from_slice(&self.routes);
    }
}

fn str_len(tag: u32, s: &str) -> usize {
    key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
}

fn encode_str(tag: u32, s: &str, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.extend_from_slice(s.as_bytes());
}

/// A `RouteConfiguration` with only `name` and `virtual_hosts` set, in one buffer.
fn encode_route_configuration(name: &str, virtual_hosts: &[VirtualHostParts<'_>]) -> Vec<u8> {
    let lens: Vec<usize> = virtual_hosts
        .iter()
        .map(VirtualHostParts::encoded_len)
        .collect();
    let total = if name.is_empty() {
        0
    } else {
        str_len(RC_NAME, name)
    } + lens
        .iter()
        .map(|l| key_len(RC_VIRTUAL_HOSTS) + encoded_len_varint(*l as u64) + l)
        .sum::<usize>();
    let mut buf = Vec::with_capacity(total);
    if !name.is_empty() {
        encode_str(RC_NAME, name, &mut buf);
    }
    for (vh, len) in virtual_hosts.iter().zip(lens) {
        encode_key(RC_VIRTUAL_HOSTS, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
        vh.encode(&mut buf);
    }
    buf
}

/// The route configuration `{route}` that proxyless clients reach through the listeners named
/// after the route's host names: one virtual host whose domains are those host names.
/// Returns the encoded `RouteConfiguration`.
pub(crate) fn route_configuration(name: &str, spec: &RouteSpec, out: &RouteOut) -> Vec<u8> {
    let vh = VirtualHostParts {
        name,
        domains: spec
            .hostnames
            .iter()
            .map(|h| Cow::Borrowed(h.as_str()))
            .collect(),
        routes: Cow::Borrowed(&out.encoded_routes),
    };
    encode_route_configuration(name, &[vh])
}

/// The route configuration of a service no route claims: everything to its cluster.
pub(crate) fn default_route_configuration(service: &str, port: u32) -> RouteConfiguration {
    let [with_port, bare] = names::default_listeners(service, port);
    RouteConfiguration {
        name: names::default_route_configuration(service, port),
        virtual_hosts: vec![VirtualHost {
            name: with_port.clone(),
            domains: vec![bare, with_port],
            routes: vec![default_route(service, port)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Every request to the service's cluster.
fn default_route(service: &str, port: u32) -> Route {
    Route {
        name: names::default_route_configuration(service, port),
        r#match: Some(crate::matcher::route_match(None)),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(names::cluster(
                service,
            ))),
            // No timeout, as for routes without one (see `route.rs`).
            timeout: Some(Default::default()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A route as one of several virtual hosts of a shared configuration.
pub(crate) struct Member<'a> {
    pub name: &'a str,
    /// The host names this route holds in that configuration, already filtered: no two
    /// members of one configuration may list the same host name.
    pub hostnames: Vec<&'a str>,
    pub out: &'a RouteOut,
}

/// The sidecars' outbound route configuration, encoded: a virtual host per route (its host
/// names, plus `h` for each `h:port`), and one per route-less service (`svc`, `svc:port`).
/// `taken` says whether a domain is already some route's host name or a default name.
pub(crate) fn outbound_route_configuration<'a>(
    routes: &[Member<'a>],
    route_less: impl IntoIterator<Item = (&'a str, u32)>,
    taken: impl Fn(&str) -> bool,
) -> Vec<u8> {
    let defaults: Vec<(String, [String; 2], Vec<u8>)> = route_less
        .into_iter()
        .map(|(service, port)| {
            let rc = names::default_route_configuration(service, port);
            let routes = encode_routes(&[default_route(service, port)]);
            (rc, names::default_listeners(service, port), routes)
        })
        .collect();
    let mut virtual_hosts = shared_virtual_hosts(routes, taken, None);
    virtual_hosts.extend(defaults.iter().map(|(name, [with_port, bare], routes)| {
        VirtualHostParts {
            name,
            domains: vec![
                Cow::Borrowed(bare.as_str()),
                Cow::Borrowed(with_port.as_str()),
            ],
            routes: Cow::Borrowed(routes),
        }
    }));
    encode_route_configuration(names::OUTBOUND, &virtual_hosts)
}

/// A gateway's route configuration, encoded: the attached routes' host names that the gateway
/// serves, each also with the gateway's port (browsers send `Host: example.com:8080` on a
/// non-default port).
pub(crate) fn gateway_route_configuration(
    gateway: &str,
    port: u32,
    routes: &[Member<'_>],
) -> Vec<u8> {
    let explicit: HashSet<&str> = routes
        .iter()
        .flat_map(|m| m.hostnames.iter().copied())
        .collect();
    let virtual_hosts = shared_virtual_hosts(routes, |d| explicit.contains(d), Some(port));
    encode_route_configuration(&names::gateway(gateway), &virtual_hosts)
}

/// Virtual hosts for routes sharing one configuration. Explicit host names first; then
/// aliases, each to the first route that wants it unless `taken` (explicit host names and
/// defaults) says it is someone's already. A route left without a domain gets no virtual host.
fn shared_virtual_hosts<'a>(
    routes: &[Member<'a>],
    taken: impl Fn(&str) -> bool,
    port: Option<u32>,
) -> Vec<VirtualHostParts<'a>> {
    let mut aliases: HashSet<Cow<'a, str>> = HashSet::new();
    let mut out = Vec::with_capacity(routes.len());
    for m in routes {
        let mut domains: Vec<Cow<'a, str>> = Vec::with_capacity(m.hostnames.len() * 2);
        domains.extend(m.hostnames.iter().map(|h| Cow::Borrowed(*h)));
        for h in &m.hostnames {
            let alias: Cow<'a, str> = match (names::split_port(h), port) {
                (Some((host, _)), _) => Cow::Borrowed(host),
                (None, Some(p)) => Cow::Owned(format!("{h}:{p}")),
                (None, None) => continue,
            };
            if !taken(&alias) && !aliases.contains(&alias) {
                aliases.insert(alias.clone());
                domains.push(alias);
            }
        }
        if domains.is_empty() {
            continue;
        }
        out.push(VirtualHostParts {
            name: m.name,
            domains,
            routes: Cow::Borrowed(&m.out.encoded_routes),
        });
    }
    out
}

/// Whether a gateway with these host names serves route host name `host` (Gateway API host
/// name intersection, on the host part: exact, or either side's `*.` wildcard covering the
/// other). A gateway without host names serves every host name.
pub(crate) fn gateway_serves(gateway_hostnames: &[String], host: &str) -> bool {
    if gateway_hostnames.is_empty() {
        return true;
    }
    let host = names::split_port(host).map_or(host, |(h, _)| h);
    gateway_hostnames.iter().any(|g| {
        let g = names::split_port(g).map_or(g.as_str(), |(h, _)| h);
        g == host || covers(g, host) || covers(host, g)
    })
}

/// `*.example.com` covers `a.example.com` and `*.a.example.com`.
fn covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::envoy::config::route::v3::RouteMatch;

    /// The hand-written encoding is byte for byte what prost writes for the same message,
    /// including empty names and domains and multi-byte lengths.
    #[test]
    fn manual_encoding_matches_prost() {
        use prost::Message;
        let route = |n: &str| Route {
            name: n.to_owned(),
            r#match: Some(RouteMatch::default()),
            ..Default::default()
        };
        let long = "x".repeat(300);
        for (vh_name, domains, routes) in [
            (
                "v",
                vec!["a".to_owned(), "b:80".to_owned()],
                vec![route("r1"), route("r2")],
            ),
            ("", vec![String::new()], vec![]),
            (long.as_str(), vec![long.clone()], vec![route(&long)]),
        ] {
            let vh = VirtualHost {
                name: vh_name.to_owned(),
                domains: domains.clone(),
                routes: routes.clone(),
                ..Default::default()
            };
            let encoded_routes = encode_routes(&routes);
            let parts = || VirtualHostParts {
                name: vh_name,
                domains: domains.iter().map(|d| Cow::Borrowed(d.as_str())).collect(),
                routes: Cow::Borrowed(&encoded_routes),
            };
            let empty = VirtualHostParts {
                name: "",
                domains: vec![],
                routes: Cow::Borrowed(&[]),
            };
            for rc_name in ["", "rc", long.as_str()] {
                let rc = RouteConfiguration {
                    name: rc_name.to_owned(),
                    virtual_hosts: vec![vh.clone(), VirtualHost::default(), vh.clone()],
                    ..Default::default()
                };
                let vhs = [parts(), empty.clone_parts(), parts()];
                assert_eq!(
                    encode_route_configuration(rc_name, &vhs),
                    rc.encode_to_vec()
                );
            }
        }
    }

    impl VirtualHostParts<'_> {
        fn clone_parts(&self) -> Self {
            VirtualHostParts {
                name: self.name,
                domains: self.domains.clone(),
                routes: self.routes.clone(),
            }
        }
    }

    #[test]
    fn default_route_configuration_encodes_like_the_outbound_default_host() {
        use prost::Message;
        let outbound = outbound_route_configuration(&[], [("pay", 8080)], |_| false);
        let rc = RouteConfiguration {
            name: names::OUTBOUND.to_owned(),
            virtual_hosts: default_route_configuration("pay", 8080).virtual_hosts,
            ..Default::default()
        };
        assert_eq!(outbound, rc.encode_to_vec());
    }

    #[test]
    fn gateway_host_intersection() {
        let gw = |hs: &[&str]| hs.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        for (gateway, host, serves) in [
            (gw(&[]), "anything", true),
            (gw(&["example.com"]), "example.com", true),
            (gw(&["example.com"]), "example.com:8080", true),
            (gw(&["example.com"]), "other.com", false),
            (gw(&["*.example.com"]), "api.example.com", true),
            (gw(&["*.example.com"]), "example.com", false),
            (gw(&["api.example.com"]), "*.example.com", true),
            (gw(&["*.example.com"]), "*.a.example.com", true),
        ] {
            assert_eq!(gateway_serves(&gateway, host), serves, "{gateway:?} {host}");
        }
    }
}
