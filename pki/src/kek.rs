//! The key-encryption key (KEK): CA private keys are stored only sealed with it.
//!
//! Sealed format: `version (1 byte) ‖ nonce (12 bytes) ‖ AES-256-GCM ciphertext and tag`. The
//! nonce is random (ring's `SystemRandom`); the additional data binds the sealed key to its
//! tenant, mesh and CA id ([`ca_key_aad`]), so a sealed key copied to another row does not
//! open.

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KekError {
    #[error(
        "the CA key-encryption key must be 32 bytes written as 64 hex characters or as base64 \
         (e.g. the output of `openssl rand -hex 32`); got {0}"
    )]
    Malformed(String),
    #[error("no randomness available from the operating system")]
    Random,
    /// The sealed bytes are not in a format this version writes.
    #[error("sealed key is corrupt: {0}")]
    Corrupt(&'static str),
    /// Authentication failed: the wrong KEK, the wrong tenant/mesh/CA, or altered bytes.
    #[error(
        "sealed key does not open with this key-encryption key (a different key, or the bytes \
         or their tenant/mesh binding were altered)"
    )]
    Open,
}

/// A 32-byte key-encryption key. Its [`id`](Kek::id) (a short hash) is stored beside every
/// sealed key, so that a store can tell "configured with another key" from "corrupt".
pub struct Kek {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek").field("id", &self.id).finish()
    }
}

impl Kek {
    /// Parses a key written as 64 hex characters or as base64 of 32 bytes (surrounding
    /// whitespace ignored). The error never repeats the input.
    pub fn parse(text: &str) -> Result<Kek, KekError> {
        let text = text.trim();
        let bytes: Zeroizing<Vec<u8>> = if text.len() == 2 * KEY_LEN
            && text.bytes().all(|b| b.is_ascii_hexdigit())
        {
            Zeroizing::new(hex::decode(text).map_err(|_| KekError::Malformed("bad hex".into()))?)
        } else {
            let b64 = base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
                .map_err(|_| {
                    KekError::Malformed(format!(
                        "{} characters that are neither 64 hex characters nor base64",
                        text.len()
                    ))
                })?;
            Zeroizing::new(b64)
        };
        if bytes.len() != KEY_LEN {
            return Err(KekError::Malformed(format!(
                "base64 of {} bytes instead of 32",
                bytes.len()
            )));
        }
        Kek::from_bytes(&bytes)
    }

    /// A new random key, with its hex text (what to write to a key file).
    pub fn generate() -> Result<(Kek, Zeroizing<String>), KekError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| KekError::Random)?;
        let text = Zeroizing::new(hex::encode(bytes.as_ref()));
        Ok((Kek::from_bytes(bytes.as_ref())?, text))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Kek, KekError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| KekError::Malformed("not an AES-256 key".into()))?;
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"switchboard-kek-id\0".as_slice(), bytes].concat(),
        );
        Ok(Kek {
            key: LessSafeKey::new(unbound),
            id: hex::encode(&digest.as_ref()[..8]),
        })
    }

    /// A short, non-secret identifier of this key (16 hex characters).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext`, binding it to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KekError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KekError::Random)?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| KekError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts what [`seal`](Kek::seal) returned for the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let (&version, rest) = sealed.split_first().ok_or(KekError::Corrupt("empty"))?;
        if version != VERSION {
            return Err(KekError::Corrupt("unknown format version"));
        }
        if rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(KekError::Corrupt("too short"));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| KekError::Corrupt("nonce"))?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), buf.as_mut_slice())
            .map_err(|_| KekError::Open)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// The additional data a CA's sealed key is bound to.
pub fn ca_key_aad(tenant: &str, mesh: &str, ca_id: &str) -> Vec<u8> {
    format!("switchboard-ca-key/v1\0{tenant}\0{mesh}\0{ca_id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(byte: u8) -> Kek {
        Kek::parse(&hex::encode([byte; 32])).unwrap()
    }

    #[test]
    fn seal_then_open() {
        let k = kek(1);
        let sealed = k.seal(b"secret key", b"aad").unwrap();
        assert_eq!(sealed[0], VERSION);
        assert!(!sealed.windows(10).any(|w| w == b"secret key"));
        assert_eq!(k.open(&sealed, b"aad").unwrap().as_slice(), b"secret key");
        // A fresh nonce each time.
        assert_ne!(sealed, k.seal(b"secret key", b"aad").unwrap());
    }

    #[test]
    fn wrong_key_wrong_aad_and_tampering_fail() {
        let k = kek(1);
        let sealed = k.seal(b"secret key", b"tenant a").unwrap();
        assert_eq!(kek(2).open(&sealed, b"tenant a"), Err(KekError::Open));
        assert_eq!(k.open(&sealed, b"tenant b"), Err(KekError::Open));
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(k.open(&bad, b"tenant a"), Err(KekError::Open), "byte {i}");
        }
        let mut bad = sealed.clone();
        bad[0] = 9;
        assert!(matches!(
            k.open(&bad, b"tenant a"),
            Err(KekError::Corrupt(_))
        ));
        assert!(matches!(
            k.open(&sealed[..10], b"tenant a"),
            Err(KekError::Corrupt(_))
        ));
        assert!(matches!(
            k.open(&[], b"tenant a"),
            Err(KekError::Corrupt(_))
        ));
    }

    #[test]
    fn parses_hex_and_base64_with_the_same_id() {
        let bytes = [7u8; 32];
        let h = Kek::parse(&format!(" {}\n", hex::encode(bytes))).unwrap();
        let b = Kek::parse(&base64::engine::general_purpose::STANDARD.encode(bytes)).unwrap();
        assert_eq!(h.id(), b.id());
        assert_eq!(h.id().len(), 16);
        assert_ne!(h.id(), kek(8).id());
        let sealed = h.seal(b"x", b"").unwrap();
        assert_eq!(b.open(&sealed, b"").unwrap().as_slice(), b"x");
    }

    #[test]
    fn rejects_other_lengths_without_echoing_the_input() {
        for bad in [
            "",
            "abcd",
            &hex::encode([1u8; 16]),
            &base64::engine::general_purpose::STANDARD.encode([1u8; 31]),
            "not base64 at all!!",
        ] {
            let e = Kek::parse(bad).unwrap_err();
            assert!(matches!(e, KekError::Malformed(_)), "{bad:?}");
            if bad.len() > 4 {
                assert!(!e.to_string().contains(bad), "{e}");
            }
        }
    }

    #[test]
    fn generated_keys_parse_back() {
        let (k, text) = Kek::generate().unwrap();
        assert_eq!(Kek::parse(&text).unwrap().id(), k.id());
    }
}
