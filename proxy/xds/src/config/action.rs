//! What a route does: forward (one or weighted clusters, timeout, retries, rewrites,
//! mirrors), redirect, or answer directly; plus header mutations and fault injection, which
//! the route carries alongside its action.

use std::time::Duration;

use switchboard_xds_proto::HttpFault;
use switchboard_xds_proto::pb::envoy::config::core::v3::{
    HeaderValueOption, data_source, header_value_option::HeaderAppendAction,
};
use switchboard_xds_proto::pb::envoy::config::route::v3::route_action::HashPolicy as PbHashPolicy;
use switchboard_xds_proto::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, RetryPolicy as PbRetryPolicy, RouteAction,
    redirect_action, route_action,
};
use switchboard_xds_proto::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use switchboard_xds_proto::pb::envoy::extensions::filters::http::fault::v3::fault_abort;
use switchboard_xds_proto::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};

use super::{ConfigError, Path, check_fields, duration};

/// Envoy's route timeout when a route sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct { status: u16, body: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub clusters: Clusters,
    /// `None`: no timeout (Envoy's `0s`). Unset in the proto gives [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<String>,
    pub mirrors: Vec<Mirror>,
    /// What requests are hashed on for a ring hash cluster, in order (Envoy's `hash_policy`).
    pub hash_policy: Vec<HashPolicy>,
}

/// One entry of a route's `hash_policy`. Each entry that finds its input contributes to the
/// request's hash; a `terminal` entry stops the list once a hash exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub on: HashOn,
    pub terminal: bool,
}

/// The input of a [`HashPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header (lower-case); `:authority`, `:path` and `:method` name the request's
    /// host, path with query, and method.
    Header(String),
    /// The value of a cookie, by name (a missing cookie gives no hash: cookies are never
    /// generated).
    Cookie(String),
    /// The first value of a query parameter, undecoded.
    QueryParameter(String),
    /// The downstream connection's source IP address.
    SourceIp,
    /// `connection_properties` with `source_ip: false`: gives no hash, but its `terminal`
    /// still counts.
    Nothing,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Clusters {
    One(String),
    /// (cluster, weight); weights are positive.
    Weighted(Vec<(String, u32)>),
}

impl Clusters {
    pub fn names(&self) -> Vec<&str> {
        match self {
            Clusters::One(c) => vec![c.as_str()],
            Clusters::Weighted(w) => w.iter().map(|(c, _)| c.as_str()).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Conditions as Envoy spells them (`5xx`, `reset`, `connect-failure`,
    /// `retriable-status-codes`, gRPC's `unavailable`...).
    pub retry_on: Vec<String>,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    pub base_interval: Duration,
    pub max_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub cluster: String,
    /// Share of requests mirrored, in millionths.
    pub per_million: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub status: u16,
    pub strip_query: bool,
}

/// Header changes: `set` overwrites, `append` adds, `remove` deletes (applied first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderMutation {
    pub set: Vec<(String, String)>,
    pub append: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// Fault injection: delay and/or abort, each for a share of requests (millionths).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, u32)>,
    pub abort: Option<(Abort, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Abort {
    Http(u16),
    Grpc(u32),
}

pub(crate) fn forward(a: RouteAction, path: &Path) -> Result<Forward, ConfigError> {
    check_fields(
        &a,
        &[
            "cluster",
            "weighted_clusters",
            "timeout",
            "retry_policy",
            "prefix_rewrite",
            "host_rewrite_literal",
            "request_mirror_policies",
            "hash_policy",
        ],
        path,
    )?;
    let clusters = match a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) if !c.is_empty() => Clusters::One(c),
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let p = path.field("weighted_clusters");
            check_fields(&w, &["clusters", "total_weight"], &p)?;
            let mut out = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.into_iter().enumerate() {
                let cp = p.index("clusters", i);
                check_fields(&c, &["name", "weight"], &cp)?;
                let weight = c.weight.map_or(0, |w| w.value);
                if c.name.is_empty() {
                    return Err(cp.err("a cluster name is required"));
                }
                if weight > 0 {
                    out.push((c.name, weight));
                }
            }
            if out.is_empty() {
                return Err(p.err("at least one cluster with a positive weight is required"));
            }
            Clusters::Weighted(out)
        }
        _ => return Err(path.err("cluster or weighted_clusters is required")),
    };
    let timeout = match &a.timeout {
        None => Some(DEFAULT_TIMEOUT),
        Some(t) => Some(duration(t, &path.field("timeout"))?).filter(|d| !d.is_zero()),
    };
    let retry = a
        .retry_policy
        .map(|r| retry_policy(r, &path.field("retry_policy")))
        .transpose()?;
    let host_rewrite = match a.host_rewrite_specifier {
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h),
        _ => None,
    };
    let mut mirrors = Vec::new();
    for (i, m) in a.request_mirror_policies.into_iter().enumerate() {
        let p = path.index("request_mirror_policies", i);
        check_fields(&m, &["cluster", "runtime_fraction"], &p)?;
        let per_million = match &m.runtime_fraction {
            Some(f) => f.default_value.as_ref().map_or(0, per_million),
            None => 1_000_000,
        };
        mirrors.push(Mirror {
            cluster: m.cluster,
            per_million,
        });
    }
    let hash_policy = a
        .hash_policy
        .iter()
        .enumerate()
        .map(|(i, h)| hash_policy(h, &path.index("hash_policy", i)))
        .collect::<Result<_, _>>()?;
    Ok(Forward {
        clusters,
        timeout,
        retry,
        prefix_rewrite: Some(a.prefix_rewrite).filter(|p| !p.is_empty()),
        host_rewrite,
        mirrors,
        hash_policy,
    })
}

/// An HTTP token (RFC 9110 `tchar`s), what a header name is.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn hash_policy(h: &PbHashPolicy, path: &Path) -> Result<HashPolicy, ConfigError> {
    use route_action::hash_policy::PolicySpecifier as P;
    check_fields(
        h,
        &[
            "header",
            "cookie",
            "connection_properties",
            "query_parameter",
            "terminal",
        ],
        path,
    )?;
    let on = match &h.policy_specifier {
        Some(P::Header(header)) => {
            let p = path.field("header");
            check_fields(header, &["header_name"], &p)?;
            let name = header.header_name.to_ascii_lowercase();
            let pseudo = [":authority", ":path", ":method"].contains(&name.as_str());
            if !pseudo && !is_token(&name) {
                return Err(p
                    .field("header_name")
                    .err(format!("{:?} is not a header name", header.header_name)));
            }
            HashOn::Header(name)
        }
        Some(P::Cookie(cookie)) => {
            let p = path.field("cookie");
            if cookie.ttl.is_some() {
                return Err(p.field("ttl").err(
                    "generating cookies (a cookie with a ttl) is not supported; \
                     hash on an existing cookie by name only",
                ));
            }
            check_fields(cookie, &["name"], &p)?;
            if cookie.name.is_empty() {
                return Err(p.field("name").err("a cookie name is required"));
            }
            HashOn::Cookie(cookie.name.clone())
        }
        Some(P::ConnectionProperties(c)) => {
            check_fields(c, &["source_ip"], &path.field("connection_properties"))?;
            if c.source_ip {
                HashOn::SourceIp
            } else {
                HashOn::Nothing
            }
        }
        Some(P::QueryParameter(q)) => {
            let p = path.field("query_parameter");
            check_fields(q, &["name"], &p)?;
            if q.name.is_empty() {
                return Err(p.field("name").err("a query parameter name is required"));
            }
            HashOn::QueryParameter(q.name.clone())
        }
        Some(P::FilterState(_)) => {
            return Err(path.err("filter_state hash policies are not supported"));
        }
        None => {
            return Err(path.err(
                "one of header, cookie, connection_properties or query_parameter is required",
            ));
        }
    };
    Ok(HashPolicy {
        on,
        terminal: h.terminal,
    })
}

fn retry_policy(r: PbRetryPolicy, path: &Path) -> Result<RetryPolicy, ConfigError> {
    check_fields(
        &r,
        &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "retriable_status_codes",
            "retry_back_off",
        ],
        path,
    )?;
    let retriable_status_codes = r
        .retriable_status_codes
        .iter()
        .map(|c| {
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    path.field("retriable_status_codes")
                        .err(format!("{c} is not an HTTP status"))
                })
        })
        .collect::<Result<_, _>>()?;
    let (mut base_interval, mut max_interval) = (Duration::from_millis(25), None);
    if let Some(b) = &r.retry_back_off {
        let p = path.field("retry_back_off");
        if let Some(d) = &b.base_interval {
            base_interval = duration(d, &p.field("base_interval"))?;
        }
        if let Some(d) = &b.max_interval {
            max_interval = Some(duration(d, &p.field("max_interval"))?);
        }
    }
    Ok(RetryPolicy {
        retry_on: r
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        num_retries: r.num_retries.map_or(1, |n| n.value),
        per_try_timeout: r
            .per_try_timeout
            .as_ref()
            .map(|d| duration(d, &path.field("per_try_timeout")))
            .transpose()?,
        retriable_status_codes,
        base_interval,
        max_interval: max_interval.unwrap_or(base_interval * 10),
    })
}

pub(crate) fn redirect(r: RedirectAction, path: &Path) -> Result<Redirect, ConfigError> {
    use redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    check_fields(
        &r,
        &[
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "response_code",
            "strip_query",
        ],
        path,
    )?;
    let status = match C::try_from(r.response_code) {
        Ok(C::MovedPermanently) => 301,
        Ok(C::Found) => 302,
        Ok(C::SeeOther) => 303,
        Ok(C::TemporaryRedirect) => 307,
        Ok(C::PermanentRedirect) => 308,
        Err(_) => return Err(path.field("response_code").err("unknown response code")),
    };
    let scheme = match r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(S::SchemeRedirect(s)) => Some(s),
        _ => None,
    };
    let (path_redirect, prefix_rewrite) = match r.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => (Some(p), None),
        Some(P::PrefixRewrite(p)) => (None, Some(p)),
        Some(P::RegexRewrite(_) | P::PathRewrite(_)) => {
            return Err(path.err("regex_rewrite and path_rewrite are not supported"));
        }
        None => (None, None),
    };
    Ok(Redirect {
        scheme,
        host: Some(r.host_redirect).filter(|h| !h.is_empty()),
        port: match r.port_redirect {
            0 => None,
            p => Some(
                u16::try_from(p)
                    .map_err(|_| path.field("port_redirect").err("port out of range"))?,
            ),
        },
        path: path_redirect,
        prefix_rewrite,
        status,
        strip_query: r.strip_query,
    })
}

pub(crate) fn direct(d: DirectResponseAction, path: &Path) -> Result<Action, ConfigError> {
    check_fields(&d, &["status", "body"], path)?;
    let status = u16::try_from(d.status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .ok_or_else(|| {
            path.field("status")
                .err(format!("{} is not an HTTP status", d.status))
        })?;
    let body = match d.body.and_then(|b| b.specifier) {
        None => None,
        Some(data_source::Specifier::InlineString(s)) => Some(s),
        Some(data_source::Specifier::InlineBytes(b)) => Some(
            String::from_utf8(b).map_err(|_| path.field("body").err("the body must be UTF-8"))?,
        ),
        Some(_) => return Err(path.field("body").err("only inline bodies are supported")),
    };
    Ok(Action::Direct { status, body })
}

pub(crate) fn mutation(
    add: &[HeaderValueOption],
    remove: Vec<String>,
    path: &Path,
    field: &str,
) -> Result<HeaderMutation, ConfigError> {
    let mut m = HeaderMutation {
        remove,
        ..Default::default()
    };
    for (i, h) in add.iter().enumerate() {
        let p = path.index(field, i);
        check_fields(h, &["header", "append", "append_action"], &p)?;
        let Some(header) = &h.header else {
            return Err(p.err("header is required"));
        };
        let pair = (header.key.to_ascii_lowercase(), header.value.clone());
        #[allow(deprecated)]
        let legacy_append = h.append.as_ref().map(|a| a.value);
        let append = match legacy_append {
            Some(a) => a,
            None => h.append_action == HeaderAppendAction::AppendIfExistsOrAdd as i32,
        };
        if legacy_append.is_none() && h.append_action == HeaderAppendAction::AddIfAbsent as i32 {
            return Err(p
                .field("append_action")
                .err("ADD_IF_ABSENT is not supported"));
        }
        if append {
            m.append.push(pair)
        } else {
            m.set.push(pair)
        }
    }
    Ok(m)
}

/// A fault filter config (listener-wide or per route).
pub(crate) fn fault(f: HttpFault, path: &Path) -> Result<Fault, ConfigError> {
    check_fields(&f, &["delay", "abort"], path)?;
    let delay = match f.delay {
        Some(d) => {
            let p = path.field("delay");
            match d.fault_delay_secifier {
                Some(fault_delay::FaultDelaySecifier::FixedDelay(fixed)) => Some((
                    duration(&fixed, &p.field("fixed_delay"))?,
                    d.percentage.as_ref().map_or(1_000_000, per_million),
                )),
                _ => return Err(p.err("only fixed_delay is supported")),
            }
        }
        None => None,
    };
    let abort = match f.abort {
        Some(a) => {
            let p = path.field("abort");
            let kind = match a.error_type {
                Some(fault_abort::ErrorType::HttpStatus(s)) => Abort::Http(
                    u16::try_from(s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| p.err(format!("{s} is not an HTTP status")))?,
                ),
                Some(fault_abort::ErrorType::GrpcStatus(s)) => Abort::Grpc(s),
                _ => return Err(p.err("http_status or grpc_status is required")),
            };
            Some((kind, a.percentage.as_ref().map_or(1_000_000, per_million)))
        }
        None => None,
    };
    Ok(Fault { delay, abort })
}

/// A fractional percent in millionths, capped at all.
fn per_million(f: &FractionalPercent) -> u32 {
    use fractional_percent::DenominatorType as D;
    let scale = match D::try_from(f.denominator) {
        Ok(D::Hundred) => 10_000,
        Ok(D::TenThousand) => 100,
        Ok(D::Million) | Err(_) => 1,
    };
    f.numerator.saturating_mul(scale).min(1_000_000)
}
