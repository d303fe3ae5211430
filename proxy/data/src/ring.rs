//! Consistent hashing, as Envoy's RING_HASH load balancer does it.
//!
//! - [`Ring`]: a ketama ring of xxHash64 points. Each endpoint gets a number of points in
//!   proportion to its weight, scaled so that the lightest endpoint gets a whole number of
//!   points and the ring has at least `minimum_ring_size` of them (but never more than
//!   `maximum_ring_size`). An endpoint's points hash `"{address}_{i}"`, as Envoy's do, so
//!   the same endpoints give the same ring in every proxy.
//! - [`request_hash`]: a request's hash under a route's `hash_policy`: each policy that
//!   finds its input contributes `xxh64(value)`; the running hash is rotated left by one
//!   bit before each contribution is xored in, and a `terminal` policy stops the list once a
//!   hash exists. No hash means the caller picks at random.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, Method};
use switchboard_proxy_xds::config::cluster::RingHashConfig;
use switchboard_proxy_xds::config::route::{HashOn, HashPolicy};
use xxhash_rust::xxh64::xxh64;

/// A hash ring over a list of endpoints; points name endpoints by their index in that list.
#[derive(Debug, Clone)]
pub struct Ring {
    /// (hash, endpoint index), sorted by hash.
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// The ring of `endpoints` (address and positive weight); `None` when there is nothing
    /// to place. Weights are relative: only their ratios matter.
    pub fn build(endpoints: &[(SocketAddr, f64)], config: &RingHashConfig) -> Option<Ring> {
        let total: f64 = endpoints
            .iter()
            .map(|(_, w)| *w)
            .filter(|w| w.is_finite() && *w > 0.0)
            .sum();
        if total <= 0.0 {
            return None;
        }
        let normalized = |w: f64| {
            if w.is_finite() && w > 0.0 {
                w / total
            } else {
                0.0
            }
        };
        let min_weight = endpoints
            .iter()
            .map(|(_, w)| normalized(*w))
            .filter(|w| *w > 0.0)
            .fold(f64::INFINITY, f64::min);
        // Scale so that the lightest endpoint gets a whole number of points and the ring at
        // least the minimum size, then cap at the maximum.
        let min_size = config.minimum_ring_size as f64;
        let max_size = config.maximum_ring_size as f64;
        let scale = ((min_weight * min_size).ceil() / min_weight).min(max_size);
        let capacity = usize::try_from(scale.ceil() as u64).unwrap_or(0);
        let mut points = Vec::with_capacity(capacity);
        // Running sums keep the total number of points at `scale` even though each
        // endpoint's share is fractional.
        let mut placed = 0.0_f64;
        let mut target = 0.0_f64;
        let mut key = String::new();
        for (index, (address, weight)) in endpoints.iter().enumerate() {
            target += scale * normalized(*weight);
            let mut i: u64 = 0;
            while placed < target {
                key.clear();
                let _ = write!(key, "{address}_{i}");
                points.push((xxh64(key.as_bytes(), 0), index));
                i += 1;
                placed += 1.0;
            }
        }
        if points.is_empty() {
            return None;
        }
        points.sort_unstable();
        Some(Ring { points })
    }

    /// The endpoint owning `hash`: the first point at or after it, wrapping around.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        let i = self.points.partition_point(|(h, _)| *h < hash);
        self.points
            .get(i)
            .or_else(|| self.points.first())
            .map(|(_, index)| *index)
    }

    /// How many points the ring has.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// What a request is hashed on: the parts of it that hash policies read.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub method: &'a Method,
    /// The request's host (`:authority`).
    pub authority: Option<&'a str>,
    /// Path and query, as sent upstream.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The downstream connection's source address, when known.
    pub source_ip: Option<IpAddr>,
}

/// The request's hash under `policies`, or `None` when no policy found its input.
pub fn request_hash(policies: &[HashPolicy], input: &HashInput<'_>) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for policy in policies {
        if let Some(new) = policy_hash(&policy.on, input) {
            // Rotating keeps two identical policies from cancelling each other out.
            hash = Some(hash.map_or(0, |h| h.rotate_left(1)) ^ new);
        }
        if policy.terminal && hash.is_some() {
            break;
        }
    }
    hash
}

fn policy_hash(on: &HashOn, input: &HashInput<'_>) -> Option<u64> {
    match on {
        HashOn::Header(name) => match name.as_str() {
            ":authority" => input.authority.map(|a| xxh64(a.as_bytes(), 0)),
            ":path" => Some(xxh64(input.path_and_query.as_bytes(), 0)),
            ":method" => Some(xxh64(input.method.as_str().as_bytes(), 0)),
            _ => {
                // Every value, sorted so that their order does not matter, chained through
                // the seed.
                let mut values: Vec<&[u8]> = input
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                if values.is_empty() {
                    return None;
                }
                values.sort_unstable();
                Some(values.iter().fold(0, |seed, v| xxh64(v, seed)))
            }
        },
        HashOn::Cookie(name) => cookie(input.headers, name).map(|v| xxh64(v.as_bytes(), 0)),
        HashOn::QueryParameter(name) => {
            query_parameter(input.path_and_query, name).map(|v| xxh64(v.as_bytes(), 0))
        }
        HashOn::SourceIp => input
            .source_ip
            .map(|ip| xxh64(ip.to_string().as_bytes(), 0)),
        HashOn::Nothing => None,
    }
}

/// The first cookie called `name` across `cookie` headers, without surrounding quotes.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

/// The first value of query parameter `name` (undecoded; `""` for a bare `name`).
fn query_parameter<'a>(path_and_query: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path_and_query.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn policy(on: HashOn, terminal: bool) -> HashPolicy {
        HashPolicy { on, terminal }
    }

    fn input<'a>(headers: &'a HeaderMap, pq: &'a str) -> HashInput<'a> {
        HashInput {
            method: &Method::GET,
            authority: Some("svc"),
            path_and_query: pq,
            headers,
            source_ip: Some(IpAddr::from([192, 168, 0, 7])),
        }
    }

    #[test]
    fn ring_size_follows_config_and_weights() {
        let config = RingHashConfig::default();
        let ring = Ring::build(&[(addr(1), 1.0), (addr(2), 1.0)], &config).unwrap();
        assert_eq!(ring.len(), 1024);
        // The lightest endpoint gets ceil(0.25 × 1024) = 256 points, the other three times
        // as many.
        let ring = Ring::build(&[(addr(1), 1.0), (addr(2), 3.0)], &config).unwrap();
        assert_eq!(ring.len(), 1024);
        let on_first = ring.points.iter().filter(|(_, i)| *i == 0).count();
        assert_eq!(on_first, 256);
        let small = RingHashConfig {
            minimum_ring_size: 8,
            maximum_ring_size: 16,
        };
        let ring = Ring::build(&[(addr(1), 1.0), (addr(2), 1_000.0)], &small).unwrap();
        assert_eq!(ring.len(), 16, "capped at the maximum");
        assert!(Ring::build(&[], &config).is_none());
    }

    #[test]
    fn points_are_envoys() {
        // Envoy hashes "{address}_{i}" with xxHash64, seed 0.
        let ring = Ring::build(
            &[(addr(80), 1.0)],
            &RingHashConfig {
                minimum_ring_size: 2,
                maximum_ring_size: 2,
            },
        )
        .unwrap();
        let mut want = vec![xxh64(b"10.0.0.1:80_0", 0), xxh64(b"10.0.0.1:80_1", 0)];
        want.sort_unstable();
        let got: Vec<u64> = ring.points.iter().map(|(h, _)| *h).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn lookup_takes_the_next_point_and_wraps() {
        let ring = Ring {
            points: vec![(10, 0), (20, 1), (30, 2)],
        };
        let cases = [(0, 0), (10, 0), (11, 1), (20, 1), (25, 2), (30, 2), (31, 0)];
        for (hash, want) in cases {
            assert_eq!(ring.pick(hash), Some(want), "hash {hash}");
        }
        assert_eq!(ring.pick(u64::MAX), Some(0));
    }

    #[test]
    fn weights_share_the_keys() {
        let ring = Ring::build(
            &[(addr(1), 1.0), (addr(2), 3.0)],
            &RingHashConfig::default(),
        )
        .unwrap();
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for k in 0..20_000u32 {
            let h = xxh64(format!("key-{k}").as_bytes(), 0);
            *counts.entry(ring.pick(h).unwrap()).or_default() += 1;
        }
        // Expected 75% on the heavy endpoint; arc lengths of a 1024-point ring deviate
        // from point counts by a few percent at most.
        let heavy = counts.get(&1).copied().unwrap_or(0);
        assert!((13_500..=16_500).contains(&heavy), "{counts:?}");
    }

    #[test]
    fn same_key_same_endpoint_and_removal_moves_only_its_keys() {
        // 100 points per endpoint in both rings, so the surviving endpoints keep theirs.
        let sized = |minimum_ring_size| RingHashConfig {
            minimum_ring_size,
            maximum_ring_size: minimum_ring_size,
        };
        let three = [(addr(1), 1.0), (addr(2), 1.0), (addr(3), 1.0)];
        let a = Ring::build(&three, &sized(300)).unwrap();
        let b = Ring::build(&three[..2], &sized(200)).unwrap();
        for k in 0..3_000u32 {
            let h = xxh64(format!("key-{k}").as_bytes(), 0);
            let before = a.pick(h).unwrap();
            assert_eq!(a.pick(h), Some(before));
            if before != 2 {
                assert_eq!(b.pick(h), Some(before), "key-{k} moved");
            }
        }
    }

    #[test]
    fn policies_combine_like_envoy() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.insert("cookie", "theme=dark; session=\"abc\"".parse().unwrap());
        let inp = input(&headers, "/p?x=1&user=bob&flag");
        let h = |on: HashOn| request_hash(&[policy(on, false)], &inp);

        let alice = xxh64(b"alice", 0);
        assert_eq!(h(HashOn::Header("x-user".into())), Some(alice));
        assert_eq!(h(HashOn::Header("x-none".into())), None);
        assert_eq!(
            h(HashOn::Header("x-multi".into())),
            Some(xxh64(b"b", xxh64(b"a", 0))),
            "values sorted, chained through the seed"
        );
        assert_eq!(h(HashOn::Cookie("session".into())), Some(xxh64(b"abc", 0)));
        assert_eq!(h(HashOn::Cookie("nope".into())), None);
        assert_eq!(
            h(HashOn::QueryParameter("user".into())),
            Some(xxh64(b"bob", 0))
        );
        assert_eq!(
            h(HashOn::QueryParameter("flag".into())),
            Some(xxh64(b"", 0))
        );
        assert_eq!(h(HashOn::QueryParameter("nope".into())), None);
        assert_eq!(h(HashOn::SourceIp), Some(xxh64(b"192.168.0.7", 0)));
        assert_eq!(h(HashOn::Nothing), None);
        assert_eq!(
            h(HashOn::Header(":authority".into())),
            Some(xxh64(b"svc", 0))
        );

        // Two policies: rotate the first, xor the second.
        let both = [
            policy(HashOn::Header("x-user".into()), false),
            policy(HashOn::QueryParameter("user".into()), false),
        ];
        assert_eq!(
            request_hash(&both, &inp),
            Some(alice.rotate_left(1) ^ xxh64(b"bob", 0))
        );
        // A terminal policy that hashed ends the list; one that found nothing does not.
        let terminal = [
            policy(HashOn::Header("x-user".into()), true),
            policy(HashOn::QueryParameter("user".into()), false),
        ];
        assert_eq!(request_hash(&terminal, &inp), Some(alice));
        let fallback = [
            policy(HashOn::Header("x-none".into()), true),
            policy(HashOn::Header("x-user".into()), false),
        ];
        assert_eq!(request_hash(&fallback, &inp), Some(alice));
        // A terminal policy without input still ends the list once an earlier one hashed.
        let inert = [
            policy(HashOn::Header("x-user".into()), false),
            policy(HashOn::Nothing, true),
            policy(HashOn::QueryParameter("user".into()), false),
        ];
        assert_eq!(request_hash(&inert, &inp), Some(alice));
        assert_eq!(request_hash(&[], &inp), None);
    }
}
