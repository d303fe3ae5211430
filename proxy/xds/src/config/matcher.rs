//! Request matching: path, header and query-parameter matchers, with RE2-style regexes
//! (`safe_regex`) compiled once here, so the data path never compiles or fails on a pattern.

use switchboard_xds_proto::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RouteMatch as PbRouteMatch, header_matcher,
    query_parameter_matcher, route_match,
};
use switchboard_xds_proto::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher,
};

use super::{ConfigError, Path, check_fields};

/// Which requests a route takes. Everything listed must match.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query_parameters: Vec<QueryMatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Matched against the whole path (without the query string).
    Regex(Pattern),
}

/// A header matcher; `invert` negates it (a missing header then matches).
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    pub name: String,
    pub value: ValueMatch,
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

/// How a header or query value matches. `Present` only asks that it exists.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueMatch {
    Present,
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Pattern),
}

/// A compiled regex that must match the whole value, as Envoy's `safe_regex` does.
#[derive(Debug, Clone)]
pub struct Pattern(regex::Regex);

impl Pattern {
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        regex::Regex::new(&format!("^(?:{pattern})$")).map(Self)
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.0.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

pub(crate) fn route_match(m: &PbRouteMatch, path: &Path) -> Result<RouteMatch, ConfigError> {
    check_fields(
        m,
        &[
            "prefix",
            "path",
            "safe_regex",
            "headers",
            "query_parameters",
            "case_sensitive",
        ],
        path,
    )?;
    if m.case_sensitive.as_ref().is_some_and(|b| !b.value) {
        return Err(path
            .field("case_sensitive")
            .err("case-insensitive paths are not supported"));
    }
    let path_match = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(route_match::PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(route_match::PathSpecifier::SafeRegex(r)) => {
            PathMatch::Regex(regex(r, &path.field("safe_regex"))?)
        }
        _ => return Err(path.err("prefix, path or safe_regex is required")),
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header(h, &path.index("headers", i)))
        .collect::<Result<_, _>>()?;
    let query_parameters = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query(q, &path.index("query_parameters", i)))
        .collect::<Result<_, _>>()?;
    Ok(RouteMatch {
        path: path_match,
        headers,
        query_parameters,
    })
}

pub(crate) fn header(h: &HeaderMatcher, path: &Path) -> Result<HeaderMatch, ConfigError> {
    use header_matcher::HeaderMatchSpecifier as S;
    check_fields(
        h,
        &[
            "name",
            "invert_match",
            "present_match",
            "exact_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "safe_regex_match",
            "string_match",
        ],
        path,
    )?;
    if h.name.is_empty() {
        return Err(path.field("name").err("a header name is required"));
    }
    #[allow(deprecated)]
    let value = match &h.header_match_specifier {
        None => ValueMatch::Present,
        Some(S::PresentMatch(true)) => ValueMatch::Present,
        Some(S::PresentMatch(false)) => {
            return Err(path.err("present_match: false is not supported; use invert_match"));
        }
        Some(S::ExactMatch(v)) => ValueMatch::Exact(v.clone()),
        Some(S::PrefixMatch(v)) => ValueMatch::Prefix(v.clone()),
        Some(S::SuffixMatch(v)) => ValueMatch::Suffix(v.clone()),
        Some(S::ContainsMatch(v)) => ValueMatch::Contains(v.clone()),
        Some(S::SafeRegexMatch(r)) => ValueMatch::Regex(regex(r, &path.field("safe_regex_match"))?),
        Some(S::StringMatch(s)) => string(s, &path.field("string_match"))?,
        Some(S::RangeMatch(_)) => return Err(path.err("range_match is not supported")),
    };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        value,
        invert: h.invert_match,
    })
}

fn query(q: &QueryParameterMatcher, path: &Path) -> Result<QueryMatch, ConfigError> {
    use query_parameter_matcher::QueryParameterMatchSpecifier as S;
    check_fields(q, &["name", "string_match", "present_match"], path)?;
    let value = match &q.query_parameter_match_specifier {
        Some(S::PresentMatch(true)) => ValueMatch::Present,
        Some(S::StringMatch(s)) => string(s, &path.field("string_match"))?,
        _ => return Err(path.err("string_match or present_match: true is required")),
    };
    Ok(QueryMatch {
        name: q.name.clone(),
        value,
    })
}

pub(crate) fn string(s: &StringMatcher, path: &Path) -> Result<ValueMatch, ConfigError> {
    use string_matcher::MatchPattern as P;
    check_fields(
        s,
        &["exact", "prefix", "suffix", "contains", "safe_regex"],
        path,
    )?;
    Ok(match &s.match_pattern {
        Some(P::Exact(v)) => ValueMatch::Exact(v.clone()),
        Some(P::Prefix(v)) => ValueMatch::Prefix(v.clone()),
        Some(P::Suffix(v)) => ValueMatch::Suffix(v.clone()),
        Some(P::Contains(v)) => ValueMatch::Contains(v.clone()),
        Some(P::SafeRegex(r)) => ValueMatch::Regex(regex(r, &path.field("safe_regex"))?),
        _ => return Err(path.err("a match pattern is required")),
    })
}

pub(crate) fn regex(r: &RegexMatcher, path: &Path) -> Result<Pattern, ConfigError> {
    check_fields(r, &["regex", "google_re2"], path)?;
    Pattern::new(&r.regex).map_err(|e| {
        path.field("regex")
            .err(format!("invalid regex {:?}: {e}", r.regex))
    })
}
