//! Route selection: which virtual host serves a request, and which of its routes matches
//! first. Pure functions over a converted [`RouteConfig`], so the order rules (Envoy's) are
//! tested without sockets.

use http::HeaderMap;
use switchboard_proxy_xds::config::route::{
    HeaderMatch, PathMatch, QueryMatch, Route, RouteConfig, ValueMatch, VirtualHost,
};

/// The parts of a request that routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub method: &'a http::Method,
    /// The authority or `Host` header, as sent (port and case not normalised).
    pub host: &'a str,
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The first route of the best virtual host that matches `req`, or `None` (a 404).
pub fn route<'a>(config: &'a RouteConfig, req: &RequestInfo<'_>) -> Option<&'a Route> {
    route_in(virtual_host(config, req.host)?, req)
}

/// The first route of `vh` that matches `req`: [`route`] for a caller that already chose
/// the virtual host.
pub fn route_in<'a>(vh: &'a VirtualHost, req: &RequestInfo<'_>) -> Option<&'a Route> {
    vh.routes.iter().find(|r| matches(r, req))
}

/// Envoy's domain order: an exact domain wins over a suffix wildcard (`*.x`, longest first),
/// which wins over a prefix wildcard (`x.*`, longest first), which wins over `*`. The host is
/// tried as sent and without its port, and the better match of the two wins (as sent on a
/// tie), so `svc:8080` reaches a virtual host that lists only `svc` rather than `svc*`.
pub fn virtual_host<'a>(config: &'a RouteConfig, host: &str) -> Option<&'a VirtualHost> {
    // Host names arrive lower case almost always: no copy for those.
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    };
    let as_sent = best_domain(config, &host);
    if let Some(((EXACT, _), vh)) = as_sent {
        // Nothing ranks above an exact match, so the host without its port cannot win.
        return Some(vh);
    }
    let stripped = strip_port(&host).and_then(|h| best_domain(config, h));
    match (as_sent, stripped) {
        (Some(a), Some(s)) => Some(if s.0 < a.0 { s.1 } else { a.1 }),
        (a, s) => a.or(s).map(|(_, vh)| vh),
    }
}

fn strip_port(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        // [v6]:port
        let end = host.find(']')?;
        return (host.len() > end + 1).then(|| &host[..=end]);
    }
    let (h, port) = host.rsplit_once(':')?;
    port.bytes().all(|b| b.is_ascii_digit()).then_some(h)
}

/// Lower is better: the match class, then a longer pattern first.
type Rank = (u8, std::cmp::Reverse<usize>);

fn best_domain<'a>(config: &'a RouteConfig, host: &str) -> Option<(Rank, &'a VirtualHost)> {
    let mut best: Option<(Rank, &VirtualHost)> = None;
    for vh in &config.virtual_hosts {
        for domain in &vh.domains {
            let Some(class) = domain_class(domain, host) else {
                continue;
            };
            if class == EXACT {
                // The best rank there is, and the first one found wins ties.
                return Some(((EXACT, std::cmp::Reverse(domain.len())), vh));
            }
            let rank = (class, std::cmp::Reverse(domain.len()));
            if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                best = Some((rank, vh));
            }
        }
    }
    best
}

/// The class of an exact domain, the best of [`domain_class`]'s.
const EXACT: u8 = 0;

fn domain_class(domain: &str, host: &str) -> Option<u8> {
    if domain == host {
        Some(EXACT)
    } else if domain == "*" {
        Some(3)
    } else if let Some(suffix) = domain.strip_prefix('*') {
        // `*.x` (or `*-x`): the wildcard must match at least one character.
        (host.len() > suffix.len() && host.ends_with(suffix)).then_some(1)
    } else if let Some(prefix) = domain.strip_suffix('*') {
        (host.len() > prefix.len() && host.starts_with(prefix)).then_some(2)
    } else {
        None
    }
}

fn matches(route: &Route, req: &RequestInfo<'_>) -> bool {
    let m = &route.matcher;
    let path_ok = match &m.path {
        PathMatch::Exact(p) => req.path == p,
        PathMatch::Prefix(p) => req.path.starts_with(p.as_str()),
        PathMatch::Regex(r) => r.is_match(req.path),
    };
    path_ok
        && m.headers.iter().all(|h| header_matches(h, req))
        && m.query_parameters
            .iter()
            .all(|q| query_matches(q, req.query))
}

/// Several values of one header are matched joined by `,`, as Envoy does. Pseudo-headers
/// (`:method`, `:authority`, `:path`) are how xDS expresses method and host matches; hyper
/// keeps them out of the header map, so they are read from the request itself.
fn header_matches(h: &HeaderMatch, req: &RequestInfo<'_>) -> bool {
    let value = match h.name.as_str() {
        ":method" => Some(req.method.as_str().to_owned()),
        ":authority" => Some(req.host.to_owned()),
        ":path" => Some(match req.query {
            Some(q) => format!("{}?{q}", req.path),
            None => req.path.to_owned(),
        }),
        name => {
            let values: Vec<&str> = req
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        }
    };
    let found = value.is_some_and(|v| value_matches(&h.value, &v));
    found != h.invert
}

fn query_matches(q: &QueryMatch, query: Option<&str>) -> bool {
    let Some(query) = query else { return false };
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        name == q.name && value_matches(&q.value, value)
    })
}

pub(crate) fn value_matches(m: &ValueMatch, value: &str) -> bool {
    match m {
        ValueMatch::Present => true,
        ValueMatch::Exact(v) => value == v,
        ValueMatch::Prefix(v) => value.starts_with(v.as_str()),
        ValueMatch::Suffix(v) => value.ends_with(v.as_str()),
        ValueMatch::Contains(v) => value.contains(v.as_str()),
        ValueMatch::Regex(r) => r.is_match(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proxy_xds::config::route::{
        Action, HeaderMutation, Pattern, RouteMatch, ValueMatch,
    };

    fn r(name: &str, path: PathMatch) -> Route {
        Route {
            name: name.into(),
            matcher: RouteMatch {
                path,
                headers: vec![],
                query_parameters: vec![],
            },
            action: Action::Direct {
                status: 200,
                body: None,
            },
            request_headers: HeaderMutation::default(),
            response_headers: HeaderMutation::default(),
            fault: None,
        }
    }

    fn vh(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            routes,
        }
    }

    fn any(name: &str) -> Vec<Route> {
        vec![r(name, PathMatch::Prefix("/".into()))]
    }

    /// Each host reaches the virtual host named beside it.
    fn assert_virtual_hosts(config: &RouteConfig, cases: &[(&str, &str)]) {
        for &(host, want) in cases {
            assert_eq!(
                virtual_host(config, host).map(|v| v.name.as_str()),
                Some(want),
                "{host}"
            );
        }
    }

    #[test]
    fn domain_order() {
        let config = RouteConfig {
            name: "rc".into(),
            virtual_hosts: vec![
                vh("star", &["*"], any("star")),
                vh("prefix", &["api.*"], any("prefix")),
                vh("short-suffix", &["*.com"], any("short-suffix")),
                vh("suffix", &["*.example.com"], any("suffix")),
                vh("exact", &["api.example.com", "svc"], any("exact")),
            ],
        };
        let cases = [
            ("api.example.com", "exact"),
            ("API.Example.com", "exact"),
            ("api.example.com:8080", "exact"),
            ("svc:80", "exact"),
            ("www.example.com", "suffix"),
            ("www.other.com", "short-suffix"),
            ("api.internal", "prefix"),
            ("elsewhere", "star"),
            ("[::1]:80", "star"),
        ];
        assert_virtual_hosts(&config, &cases);
        let no_star = RouteConfig {
            name: "rc".into(),
            virtual_hosts: vec![vh("exact", &["a"], any("a"))],
        };
        assert!(virtual_host(&no_star, "b").is_none());
    }

    /// An exact match ends the search: the first virtual host listing the domain wins, and
    /// the host as sent wins over the host without its port, as when every domain was
    /// compared.
    #[test]
    fn exact_domain_first_and_as_sent() {
        let config = RouteConfig {
            name: "rc".into(),
            virtual_hosts: vec![
                vh("suffix", &["*.svc:80"], any("suffix")),
                vh("bare", &["a.svc"], any("bare")),
                vh("with-port", &["a.svc:80"], any("with-port")),
                vh("again", &["a.svc:80", "b.svc"], any("again")),
            ],
        };
        let cases = [
            ("a.svc:80", "with-port"),
            ("a.svc:81", "bare"),
            ("b.svc:80", "again"),
            ("c.svc:80", "suffix"),
        ];
        assert_virtual_hosts(&config, &cases);
        for (host, want) in cases {
            let info = RequestInfo {
                method: &http::Method::GET,
                host,
                path: "/",
                query: None,
                headers: &HeaderMap::new(),
            };
            assert_eq!(route(&config, &info).map(|r| r.name.as_str()), Some(want));
        }
    }

    #[test]
    fn route_order_and_matchers() {
        let mut header = r("header", PathMatch::Prefix("/".into()));
        header.matcher.headers.push(HeaderMatch {
            name: "x-canary".into(),
            value: ValueMatch::Exact("1".into()),
            invert: false,
        });
        let mut not_header = r("not-debug", PathMatch::Prefix("/nd".into()));
        not_header.matcher.headers.push(HeaderMatch {
            name: "x-debug".into(),
            value: ValueMatch::Present,
            invert: true,
        });
        let mut post = r("post", PathMatch::Prefix("/m".into()));
        post.matcher.headers.push(HeaderMatch {
            name: ":method".into(),
            value: ValueMatch::Exact("POST".into()),
            invert: false,
        });
        let mut query = r("query", PathMatch::Prefix("/q".into()));
        query.matcher.query_parameters.push(QueryMatch {
            name: "v".into(),
            value: ValueMatch::Exact("2".into()),
        });
        let regex = r(
            "regex",
            PathMatch::Regex(Pattern::new("/items/[0-9]+").unwrap()),
        );
        let config = RouteConfig {
            name: "rc".into(),
            virtual_hosts: vec![vh(
                "all",
                &["*"],
                vec![
                    header,
                    r("exact", PathMatch::Exact("/exact".into())),
                    regex,
                    post,
                    query,
                    not_header,
                    r("api", PathMatch::Prefix("/api".into())),
                    r("root", PathMatch::Prefix("/".into())),
                ],
            )],
        };
        type Case<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case; 12] = [
            ("/m", None, &[("x-method", "POST")], "post"),
            ("/m", None, &[], "root"),
            ("/exact", None, &[], "exact"),
            ("/exact/more", None, &[], "root"),
            ("/exact", None, &[("x-canary", "1")], "header"),
            ("/exact", None, &[("x-canary", "2")], "exact"),
            ("/items/42", None, &[], "regex"),
            ("/items/42x", None, &[], "root"),
            ("/q", Some("a=1&v=2"), &[], "query"),
            ("/q", Some("v=3"), &[], "root"),
            ("/nd", None, &[], "not-debug"),
            ("/nd", None, &[("x-debug", "")], "root"),
        ];
        for (path, query, headers, want) in cases {
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.insert(*k, v.parse().unwrap());
            }
            // The `x-method` pseudo-input picks the request method for the table.
            let method = match map.get("x-method") {
                Some(m) => m.to_str().unwrap().parse().unwrap(),
                None => http::Method::GET,
            };
            let req = RequestInfo {
                method: &method,
                host: "h",
                path,
                query,
                headers: &map,
            };
            assert_eq!(
                route(&config, &req).map(|r| r.name.as_str()),
                Some(want),
                "{path} {query:?} {headers:?}"
            );
        }
        let map = HeaderMap::new();
        let req = RequestInfo {
            method: &http::Method::GET,
            host: "h",
            path: "/apix",
            query: None,
            headers: &map,
        };
        assert_eq!(route(&config, &req).map(|r| r.name.as_str()), Some("api"));
    }
}
