//! Header checks on the request path that most requests answer "absent".
//!
//! `HeaderMap` finds a name by hashing it, and it hashes a name outside the standard set
//! (`traceparent`, `x-forwarded-client-cert`) byte by byte, for a `get` and for a `remove`
//! alike, also when the name is not there. A message carries few headers, and comparing
//! names is cheap (a standard name compares as an integer, a custom one by length first), so
//! one pass over the names answers these checks for less. Above [`SCAN_MAX`] names the
//! hashed lookup is used.

use http::HeaderMap;
use http::header::{
    ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, DATE, GetAll, HOST, HeaderName, HeaderValue,
    InvalidHeaderName, SERVER, TRANSFER_ENCODING, USER_AGENT,
};

/// Past this many distinct names, a pass costs more than a hash.
const SCAN_MAX: usize = 16;

/// Whether `headers` has `name`.
pub(crate) fn contains(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.keys_len() > SCAN_MAX {
        return headers.contains_key(name);
    }
    headers.keys().any(|k| k == name)
}

/// Whether `headers` has any of `names`.
pub(crate) fn contains_any(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    if headers.keys_len() > SCAN_MAX {
        return names.iter().any(|n| headers.contains_key(n));
    }
    headers.keys().any(|k| names.contains(k))
}

/// A header's name as read off the wire. The names almost every message carries are
/// matched as clients and servers spell them (hyper, Go and curl in lowercase, nginx,
/// Java and browsers capitalised) before [`HeaderName::from_bytes`], which first
/// lowercases every name through a table: about 115 instructions a name
/// (loadtest/proxy-bench-log.md, nineteenth session).
pub(crate) fn header_name(name: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    Ok(match name {
        b"content-length" | b"Content-Length" => CONTENT_LENGTH,
        b"content-type" | b"Content-Type" => CONTENT_TYPE,
        b"date" | b"Date" => DATE,
        b"server" | b"Server" => SERVER,
        b"connection" | b"Connection" => CONNECTION,
        b"transfer-encoding" | b"Transfer-Encoding" => TRANSFER_ENCODING,
        b"host" | b"Host" => HOST,
        b"user-agent" | b"User-Agent" => USER_AGENT,
        b"accept" | b"Accept" => ACCEPT,
        _ => return HeaderName::from_bytes(name),
    })
}

/// Whether a comma-separated header value lists `token` (any case).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether `chunked` is the last transfer coding of a `transfer-encoding` value.
pub(crate) fn last_token_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The `content-length` values seen so far: equal values are one length (RFC 9110 §8.6),
/// anything else makes it invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    None,
    Valid(u64),
    Invalid,
}

impl Length {
    /// This length with one more `content-length` value (itself a list) seen.
    pub(crate) fn add(self, value: &[u8]) -> Self {
        let mut out = self;
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = if !part.is_empty() && part.iter().all(u8::is_ascii_digit) {
                std::str::from_utf8(part)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
            } else {
                None
            };
            out = match (out, n) {
                (Length::Invalid, _) | (_, None) => Length::Invalid,
                (Length::None, Some(n)) => Length::Valid(n),
                (Length::Valid(m), Some(n)) if m == n => Length::Valid(n),
                (Length::Valid(_), Some(_)) => Length::Invalid,
            };
        }
        out
    }
}

/// Removes every value of `name`, hashing it only when it is there.
pub(crate) fn remove(headers: &mut HeaderMap, name: &HeaderName) {
    if contains(headers, name) {
        headers.remove(name);
    }
}

/// Every value of `name`, hashing it only when it is there.
pub(crate) fn get_all<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Option<GetAll<'h, HeaderValue>> {
    contains(headers, name).then(|| headers.get_all(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn many(n: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        for i in 0..n {
            h.insert(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        h
    }

    #[test]
    fn content_length_lists_must_agree() {
        let of = |v: &[u8]| Length::None.add(v);
        assert_eq!(of(b"42"), Length::Valid(42));
        assert_eq!(of(b"42, 42"), Length::Valid(42));
        assert_eq!(of(b"42, 43"), Length::Invalid);
        assert_eq!(of(b"-1"), Length::Invalid);
        assert_eq!(of(b""), Length::Invalid);
        assert_eq!(of(b"99999999999999999999999"), Length::Invalid);
        assert_eq!(of(b"3").add(b"3"), Length::Valid(3));
        assert_eq!(of(b"3").add(b"4"), Length::Invalid);
    }

    #[test]
    fn answers_as_the_hashed_lookups_do_below_and_above_the_scan_limit() {
        let custom = HeaderName::from_static("x-forwarded-client-cert");
        let other = HeaderName::from_static("x-forwarded-client");
        for n in [0, 3, SCAN_MAX, SCAN_MAX + 1, 40] {
            let mut h = many(n);
            h.insert(http::header::HOST, HeaderValue::from_static("a"));
            assert!(!contains(&h, &custom), "{n}");
            assert!(get_all(&h, &custom).is_none(), "{n}");
            assert!(contains(&h, &http::header::HOST), "{n}");
            assert!(
                !contains_any(&h, &[custom.clone(), http::header::TE]),
                "{n}"
            );
            h.append(&custom, HeaderValue::from_static("1"));
            h.append(&custom, HeaderValue::from_static("2"));
            assert!(contains(&h, &custom) && !contains(&h, &other), "{n}");
            assert!(contains_any(&h, &[http::header::TE, custom.clone()]), "{n}");
            let values: Vec<_> = get_all(&h, &custom).into_iter().flatten().collect();
            assert_eq!(values, ["1", "2"], "{n}");
            remove(&mut h, &other);
            remove(&mut h, &custom);
            assert!(
                !h.contains_key(&custom) && h.contains_key(http::header::HOST),
                "{n}"
            );
            assert_eq!(h.keys_len(), n + 1);
        }
    }
}
