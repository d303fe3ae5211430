//! Route matches → Envoy `RouteMatch`: path, headers, query parameters and method.

use switchboard_model::spec::{
    HeaderMatch, HeaderMatchType, PathMatch, PathMatchType, QueryMatch, QueryMatchType, RouteMatch,
};

use crate::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RouteMatch as PbRouteMatch, header_matcher,
    query_parameter_matcher, route_match,
};
use crate::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};

/// The Envoy match of one model match. A rule without matches matches everything: prefix `/`.
pub(crate) fn route_match(m: Option<&RouteMatch>) -> PbRouteMatch {
    let Some(m) = m else {
        return prefix_slash();
    };
    let mut headers: Vec<HeaderMatcher> = m.headers.iter().map(header_matcher).collect();
    if let Some(method) = m.method {
        headers.push(HeaderMatcher {
            name: ":method".to_owned(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(exact(
                method.as_str(),
            ))),
            ..Default::default()
        });
    }
    PbRouteMatch {
        path_specifier: Some(
            m.path
                .as_ref()
                .map(path_specifier)
                .unwrap_or_else(|| route_match::PathSpecifier::Prefix("/".to_owned())),
        ),
        headers,
        query_parameters: m.query_params.iter().map(query_matcher).collect(),
        ..Default::default()
    }
}

fn prefix_slash() -> PbRouteMatch {
    PbRouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
        ..Default::default()
    }
}

fn path_specifier(p: &PathMatch) -> route_match::PathSpecifier {
    match p.kind {
        PathMatchType::Exact => route_match::PathSpecifier::Path(p.value.clone()),
        PathMatchType::Prefix => route_match::PathSpecifier::Prefix(p.value.clone()),
        PathMatchType::Regex => route_match::PathSpecifier::SafeRegex(regex(&p.value)),
    }
}

fn header_matcher(h: &HeaderMatch) -> HeaderMatcher {
    use header_matcher::HeaderMatchSpecifier as S;
    let value = || h.value.clone().unwrap_or_default();
    let specifier = match h.kind {
        HeaderMatchType::Present => S::PresentMatch(true),
        HeaderMatchType::Exact => S::StringMatch(exact(&value())),
        HeaderMatchType::Prefix => {
            S::StringMatch(string(string_matcher::MatchPattern::Prefix(value())))
        }
        HeaderMatchType::Suffix => {
            S::StringMatch(string(string_matcher::MatchPattern::Suffix(value())))
        }
        HeaderMatchType::Regex => S::StringMatch(string(string_matcher::MatchPattern::SafeRegex(
            regex(&value()),
        ))),
    };
    HeaderMatcher {
        name: h.name.clone(),
        invert_match: h.invert,
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

fn query_matcher(q: &QueryMatch) -> QueryParameterMatcher {
    use query_parameter_matcher::QueryParameterMatchSpecifier as S;
    let value = || q.value.clone().unwrap_or_default();
    let specifier = match q.kind {
        QueryMatchType::Present => S::PresentMatch(true),
        QueryMatchType::Exact => S::StringMatch(exact(&value())),
        QueryMatchType::Regex => S::StringMatch(string(string_matcher::MatchPattern::SafeRegex(
            regex(&value()),
        ))),
    };
    QueryParameterMatcher {
        name: q.name.clone(),
        query_parameter_match_specifier: Some(specifier),
    }
}

fn exact(value: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::Exact(value.to_owned()))
}

fn string(pattern: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        ignore_case: false,
        match_pattern: Some(pattern),
    }
}

/// A regex for Envoy's and gRPC's default engine, RE2 (the `engine_type` field that would name
/// it is deprecated, and Envoy warns when it is set). Matched against the whole value.
pub(crate) fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher {
        regex: pattern.to_owned(),
        engine_type: None,
    }
}
