//! Content-hash versions.
//!
//! A resource's version is derived from its encoded bytes alone, so it is the same on every
//! replica and after a restart, and a recomputed but unchanged resource keeps its version (the
//! server then has nothing to send). This relies on deterministic encoding: prost encodes
//! repeated fields in order, and the only protobuf maps we fill (`typed_per_filter_config`,
//! `typed_extension_protocol_options`, and for mTLS an endpoint's `filter_metadata` and the
//! `Struct` of it and of a transport socket match) never get more than one entry, since a
//! `HashMap` with several would encode in a random order.

use sha2::{Digest, Sha256};

/// Hex digits kept from the SHA-256: 64 bits is plenty to tell two versions of one resource
/// apart, and keeps responses and logs short.
const VERSION_LEN: usize = 16;

/// The version of a resource whose encoding is `bytes`.
pub(crate) fn version(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(VERSION_LEN);
    for b in digest.iter().take(VERSION_LEN / 2) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        assert_eq!(version(b"abc"), version(b"abc"));
        assert_ne!(version(b"abc"), version(b"abd"));
        // SHA-256("abc") starts with ba7816bf8f01cfea.
        assert_eq!(version(b"abc"), "ba7816bf8f01cfea");
    }
}
