//! HTTP/gRPC routing in the spirit of Gateway API's HTTPRoute; every field maps to an Envoy
//! route field (see the translator).

use super::{Claim, Reference};
use crate::validate::Errors;
use crate::{Duration, Kind, ValidationErrors};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// Host names this route serves, e.g. `payments` or `payments:8080` (proxyless gRPC
    /// targets `xds:///payments:8080`). One host name belongs to one route per mesh.
    pub hostnames: Vec<String>,
    /// Evaluated in order; the first rule whose match succeeds wins.
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one match selects the rule; no matches means every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "5s")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PathMatchType {
    Exact,
    Prefix,
    Regex,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub kind: PathMatchType,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HeaderMatchType {
    Exact,
    Prefix,
    Suffix,
    Regex,
    Present,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(rename = "type", default = "default_header_match")]
    pub kind: HeaderMatchType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Match when the header does NOT match.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

fn default_header_match() -> HeaderMatchType {
    HeaderMatchType::Exact
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueryMatchType {
    Exact,
    Regex,
    Present,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryMatch {
    pub name: String,
    #[serde(rename = "type", default = "default_query_match")]
    pub kind: QueryMatchType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

fn default_query_match() -> QueryMatchType {
    QueryMatchType::Exact
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    pub service: String,
    /// Relative weight, 0 to 1000; the weights of a rule must add up to more than 0.
    #[serde(default = "default_backend_weight")]
    pub weight: u32,
}

fn default_backend_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "1s")]
    pub per_try_timeout: Option<Duration>,
    /// Envoy's retry_on conditions; default `5xx,reset,connect-failure`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u32>,
}

/// The retry_on conditions Envoy (HTTP and gRPC) and gRPC's xDS client understand.
pub const RETRY_ON: [&str; 14] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
    "envoy-ratelimited",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Replace (or add) these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    /// Append these headers, keeping existing values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// 301, 302, 303, 307 or 308; default 302.
    #[serde(default = "default_redirect_code")]
    pub status_code: u32,
}

fn default_redirect_code() -> u32 {
    302
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replace the matched path prefix with this one (needs a prefix path match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Replace the Host/:authority header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[schema(value_type = String, example = "100ms")]
    pub fixed: Duration,
    /// Percentage of requests, 0 to 100.
    #[serde(default = "hundred")]
    pub percent: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status to answer with (200 to 599); exactly one of httpStatus and grpcStatus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
    /// gRPC status code to answer with (1 to 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    #[serde(default = "hundred")]
    pub percent: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    pub service: String,
    #[serde(default = "hundred")]
    pub percent: u32,
}

fn hundred() -> u32 {
    100
}

impl RouteSpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = Errors::default();
        if self.hostnames.is_empty() {
            e.push("spec.hostnames", "name at least one host name");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, h) in self.hostnames.iter().enumerate() {
            e.hostname(&format!("spec.hostnames[{i}]"), h);
            if !seen.insert(h) {
                e.push(
                    format!("spec.hostnames[{i}]"),
                    format!("{h:?} is listed twice"),
                );
            }
        }
        if self.rules.is_empty() {
            e.push("spec.rules", "name at least one rule");
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate(&format!("spec.rules[{i}]"), &mut e);
        }
        e.into_result()
    }

    pub fn references(&self) -> Vec<Reference> {
        let mut refs = vec![];
        for (i, r) in self.rules.iter().enumerate() {
            for (j, b) in r.backends.iter().enumerate() {
                refs.push(Reference {
                    field: format!("spec.rules[{i}].backends[{j}].service"),
                    kind: Kind::Service,
                    name: b.service.clone(),
                });
            }
            if let Some(m) = &r.mirror {
                refs.push(Reference {
                    field: format!("spec.rules[{i}].mirror.service"),
                    kind: Kind::Service,
                    name: m.service.clone(),
                });
            }
        }
        refs
    }

    pub fn claims(&self) -> Vec<Claim> {
        self.hostnames
            .iter()
            .enumerate()
            .map(|(i, h)| Claim {
                field: format!("spec.hostnames[{i}]"),
                what: "hostname",
                value: h.clone(),
            })
            .collect()
    }
}

impl RouteRule {
    fn validate(&self, at: &str, e: &mut Errors) {
        for (i, m) in self.matches.iter().enumerate() {
            m.validate(&format!("{at}.matches[{i}]"), e);
        }
        if self.redirect.is_some() {
            if !self.backends.is_empty() || self.rewrite.is_some() || self.mirror.is_some() {
                e.push(
                    format!("{at}.redirect"),
                    "a redirect rule has no backends, rewrite or mirror",
                );
            }
        } else if self.backends.is_empty() {
            e.push(
                format!("{at}.backends"),
                "name at least one backend (or a redirect)",
            );
        }
        let mut sum = 0u64;
        for (j, b) in self.backends.iter().enumerate() {
            e.reference(&format!("{at}.backends[{j}].service"), &b.service);
            e.range(&format!("{at}.backends[{j}].weight"), b.weight, 0, 1000);
            sum += u64::from(b.weight);
        }
        if !self.backends.is_empty() && sum == 0 {
            e.push(
                format!("{at}.backends"),
                "the weights add up to 0: at least one must be above 0",
            );
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            e.push(format!("{at}.timeout"), "must be greater than 0s");
        }
        if let Some(r) = &self.retries {
            e.range(&format!("{at}.retries.attempts"), r.attempts, 1, 10);
            if r.per_try_timeout.is_some_and(|t| t.is_zero()) {
                e.push(
                    format!("{at}.retries.perTryTimeout"),
                    "must be greater than 0s",
                );
            }
            for (k, cond) in r.retry_on.iter().enumerate() {
                if !RETRY_ON.contains(&cond.as_str()) {
                    e.push(
                        format!("{at}.retries.retryOn[{k}]"),
                        format!(
                            "{cond:?} is not a retry condition; use one of {}",
                            RETRY_ON.join(", ")
                        ),
                    );
                }
            }
            for (k, code) in r.retriable_status_codes.iter().enumerate() {
                e.range(
                    &format!("{at}.retries.retriableStatusCodes[{k}]"),
                    *code,
                    100,
                    599,
                );
            }
        }
        for (name, hm) in [
            ("requestHeaders", &self.request_headers),
            ("responseHeaders", &self.response_headers),
        ] {
            if let Some(hm) = hm {
                for (list, hs) in [("set", &hm.set), ("add", &hm.add)] {
                    for (k, h) in hs.iter().enumerate() {
                        e.mutable_header(&format!("{at}.{name}.{list}[{k}].name"), &h.name);
                        e.header_value(&format!("{at}.{name}.{list}[{k}].value"), &h.value);
                    }
                }
                for (k, h) in hm.remove.iter().enumerate() {
                    e.mutable_header(&format!("{at}.{name}.remove[{k}]"), h);
                }
            }
        }
        if let Some(r) = &self.redirect {
            if r.scheme
                .as_ref()
                .is_some_and(|s| s != "http" && s != "https")
            {
                e.push(format!("{at}.redirect.scheme"), "use http or https");
            }
            if let Some(h) = &r.hostname {
                e.hostname(&format!("{at}.redirect.hostname"), h);
            }
            if r.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
                e.push(format!("{at}.redirect.path"), "must start with '/'");
            }
            if let Some(p) = r.port {
                e.port(&format!("{at}.redirect.port"), p);
            }
            if ![301, 302, 303, 307, 308].contains(&r.status_code) {
                e.push(
                    format!("{at}.redirect.statusCode"),
                    "use 301, 302, 303, 307 or 308",
                );
            }
        }
        if let Some(rw) = &self.rewrite {
            if let Some(p) = &rw.prefix {
                if !p.starts_with('/') {
                    e.push(format!("{at}.rewrite.prefix"), "must start with '/'");
                }
                let all_prefix = !self.matches.is_empty()
                    && self.matches.iter().all(|m| {
                        m.path
                            .as_ref()
                            .is_some_and(|p| p.kind == PathMatchType::Prefix)
                    });
                if !all_prefix {
                    e.push(
                        format!("{at}.rewrite.prefix"),
                        "a prefix rewrite needs every match of the rule to be a prefix path match",
                    );
                }
            }
            if let Some(h) = &rw.hostname {
                e.hostname(&format!("{at}.rewrite.hostname"), h);
            }
        }
        if let Some(f) = &self.fault {
            if f.delay.is_none() && f.abort.is_none() {
                e.push(format!("{at}.fault"), "name a delay, an abort or both");
            }
            if let Some(d) = &f.delay {
                e.range(&format!("{at}.fault.delay.percent"), d.percent, 0, 100);
            }
            if let Some(a) = &f.abort {
                e.range(&format!("{at}.fault.abort.percent"), a.percent, 0, 100);
                match (a.http_status, a.grpc_status) {
                    (Some(h), None) => {
                        e.range(&format!("{at}.fault.abort.httpStatus"), h, 200, 599)
                    }
                    (None, Some(g)) => e.range(&format!("{at}.fault.abort.grpcStatus"), g, 1, 16),
                    _ => e.push(
                        format!("{at}.fault.abort"),
                        "name exactly one of httpStatus and grpcStatus",
                    ),
                }
            }
        }
        if let Some(m) = &self.mirror {
            e.reference(&format!("{at}.mirror.service"), &m.service);
            e.range(&format!("{at}.mirror.percent"), m.percent, 0, 100);
        }
    }
}

impl RouteMatch {
    fn validate(&self, at: &str, e: &mut Errors) {
        if let Some(p) = &self.path {
            match p.kind {
                PathMatchType::Exact | PathMatchType::Prefix => {
                    if !p.value.starts_with('/') {
                        e.push(format!("{at}.path.value"), "must start with '/'");
                    }
                }
                PathMatchType::Regex => e.regex(&format!("{at}.path.value"), &p.value),
            }
        }
        for (k, h) in self.headers.iter().enumerate() {
            let f = format!("{at}.headers[{k}]");
            e.header_name(&format!("{f}.name"), &h.name);
            match (h.kind, &h.value) {
                (HeaderMatchType::Present, Some(_)) => {
                    e.push(format!("{f}.value"), "a present match takes no value")
                }
                (HeaderMatchType::Present, None) => {}
                (HeaderMatchType::Regex, Some(v)) => e.regex(&format!("{f}.value"), v),
                (_, Some(_)) => {}
                (_, None) => e.push(format!("{f}.value"), "this match type needs a value"),
            }
        }
        for (k, q) in self.query_params.iter().enumerate() {
            let f = format!("{at}.queryParams[{k}]");
            if q.name.is_empty() {
                e.push(format!("{f}.name"), "must not be empty");
            }
            match (q.kind, &q.value) {
                (QueryMatchType::Present, Some(_)) => {
                    e.push(format!("{f}.value"), "a present match takes no value")
                }
                (QueryMatchType::Present, None) => {}
                (QueryMatchType::Regex, Some(v)) => e.regex(&format!("{f}.value"), v),
                (QueryMatchType::Exact, Some(_)) => {}
                (_, None) => e.push(format!("{f}.value"), "this match type needs a value"),
            }
        }
    }
}
