//! Durations in the Gateway API format (GEP-2257): `1h30m`, `500ms`, `2s`. One format
//! everywhere, parsed at the edge so a typo is a 422 naming the field rather than a NACK later.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration as StdDuration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub fn from_millis(ms: u64) -> Self {
        Self(StdDuration::from_millis(ms))
    }
    pub fn as_std(&self) -> StdDuration {
        self.0
    }
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

/// Parses `^([0-9]{1,5}(h|m|s|ms)){1,4}$`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let err = || {
        format!(
            "{s:?} is not a duration: write e.g. \"500ms\", \"2s\", \"1m30s\" (units h, m, s, ms)"
        )
    };
    if s.is_empty() {
        return Err(err());
    }
    let b = s.as_bytes();
    let (mut i, mut parts, mut total) = (0usize, 0usize, 0u64);
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() || digits.len() > 5 {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        let unit_ms = if s[i..].starts_with("ms") {
            i += 2;
            1
        } else if s[i..].starts_with('h') {
            i += 1;
            3_600_000
        } else if s[i..].starts_with('m') {
            i += 1;
            60_000
        } else if s[i..].starts_with('s') {
            i += 1;
            1_000
        } else {
            return Err(err());
        };
        total += n * unit_ms;
        parts += 1;
        if parts > 4 {
            return Err(err());
        }
    }
    Ok(Duration::from_millis(total))
}

impl std::fmt::Display for Duration {
    /// Canonical form: the largest units first, e.g. `1h30m`, `1s500ms`, `0s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (input, ms, canon) in [
            ("500ms", 500, "500ms"),
            ("2s", 2000, "2s"),
            ("1m30s", 90_000, "1m30s"),
            ("1h", 3_600_000, "1h"),
            ("1s500ms", 1500, "1s500ms"),
            ("0s", 0, "0s"),
        ] {
            let d = parse(input).unwrap();
            assert_eq!(d.0.as_millis(), ms, "{input}");
            assert_eq!(d.to_string(), canon);
        }
        for bad in [
            "",
            "1",
            "s",
            "1.5s",
            "-1s",
            "1d",
            "123456s",
            "1h1m1s1ms1h",
            "1 s",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
