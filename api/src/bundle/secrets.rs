//! Private keys in an export, encrypted with a key derived from the caller's passphrase.
//!
//! A value is `sbx1:` then base64 of `salt (16) ‖ nonce (12) ‖ AES-256-GCM ciphertext and
//! tag`; the key is PBKDF2-HMAC-SHA256 of the passphrase and the salt, [`ITERATIONS`] rounds
//! (ring, which the KEK's sealing already uses). One export uses one salt, so an import
//! derives the key once per file; every value carries it, so a document cut out of the file
//! still imports. The additional data binds a value to what it is the key of (a CA's id, a
//! certificate's fingerprint), so a key moved to another document does not open. Neither
//! the passphrase nor a key is ever logged or kept.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::num::NonZeroU32;
use zeroize::Zeroizing;

const PREFIX: &str = "sbx1:";
const SALT_LEN: usize = 16;
/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
const ITERATIONS: u32 = 600_000;
/// Shorter passphrases are refused: the file may travel and be attacked offline.
pub(crate) const MIN_PASSPHRASE: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SecretError {
    #[error("not a value this version encrypts (it starts with `{PREFIX}` and is base64)")]
    Malformed,
    #[error(
        "does not decrypt with this passphrase (a different passphrase, or the value or the \
         document it is in was altered)"
    )]
    Open,
    #[error("no randomness available from the operating system")]
    Random,
}

/// The additional data of a mesh CA's key.
pub(crate) fn ca_aad(ca_id: &str) -> Vec<u8> {
    format!("switchboard-export/v1\0ca\0{ca_id}").into_bytes()
}

/// The additional data of a gateway certificate's key.
pub(crate) fn certificate_aad(fingerprint: &str) -> Vec<u8> {
    format!("switchboard-export/v1\0certificate\0{fingerprint}").into_bytes()
}

/// The key of `passphrase` and `salt`, derived on a blocking thread (it takes a while, by
/// design).
async fn derive_off(
    passphrase: Zeroizing<String>,
    salt: [u8; SALT_LEN],
) -> Result<LessSafeKey, SecretError> {
    tokio::task::spawn_blocking(move || derive(&passphrase, &salt))
        .await
        .map_err(|_| SecretError::Random)?
}

fn derive(passphrase: &str, salt: &[u8]) -> Result<LessSafeKey, SecretError> {
    let mut key = Zeroizing::new([0u8; 32]);
    let rounds = NonZeroU32::new(ITERATIONS).ok_or(SecretError::Random)?;
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        passphrase.as_bytes(),
        key.as_mut(),
    );
    let unbound = UnboundKey::new(&AES_256_GCM, key.as_ref()).map_err(|_| SecretError::Random)?;
    Ok(LessSafeKey::new(unbound))
}

/// Encrypts the secrets of one export (one salt, one derived key).
pub(crate) struct Sealer {
    salt: [u8; SALT_LEN],
    key: LessSafeKey,
}

impl Sealer {
    pub async fn new(passphrase: Zeroizing<String>) -> Result<Sealer, SecretError> {
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| SecretError::Random)?;
        Ok(Sealer {
            key: derive_off(passphrase, salt).await?,
            salt,
        })
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| SecretError::Random)?;
        let mut out = Vec::with_capacity(SALT_LEN + NONCE_LEN + buf.len());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }
}

/// Decrypts the secrets of an import, deriving the key once per salt.
pub(crate) struct Opener {
    passphrase: Zeroizing<String>,
    keys: HashMap<[u8; SALT_LEN], LessSafeKey>,
}

impl Opener {
    pub fn new(passphrase: Zeroizing<String>) -> Opener {
        Opener {
            passphrase,
            keys: HashMap::new(),
        }
    }

    pub async fn open(
        &mut self,
        value: &str,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let bytes = value
            .strip_prefix(PREFIX)
            .and_then(|b| STANDARD.decode(b.trim()).ok())
            .ok_or(SecretError::Malformed)?;
        if bytes.len() < SALT_LEN + NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SecretError::Malformed);
        }
        let (salt, rest) = bytes.split_at(SALT_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let salt: [u8; SALT_LEN] = salt.try_into().map_err(|_| SecretError::Malformed)?;
        if !self.keys.contains_key(&salt) {
            let key = derive_off(self.passphrase.clone(), salt).await?;
            self.keys.insert(salt, key);
        }
        let key = self.keys.get(&salt).ok_or(SecretError::Random)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Malformed)?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = key
            .open_in_place(nonce, Aad::from(aad), buf.as_mut_slice())
            .map_err(|_| SecretError::Open)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn round_trip_and_refusals() {
        let sealer = Sealer::new(Zeroizing::new("correct horse battery".into()))
            .await
            .unwrap();
        let value = sealer.seal(b"key bytes", &ca_aad("ca1")).unwrap();
        assert!(value.starts_with(PREFIX));
        assert!(!value.contains("key bytes"));
        let mut opener = Opener::new(Zeroizing::new("correct horse battery".into()));
        assert_eq!(
            opener
                .open(&value, &ca_aad("ca1"))
                .await
                .unwrap()
                .as_slice(),
            b"key bytes"
        );
        // Bound to what it is the key of.
        assert_eq!(
            opener.open(&value, &ca_aad("ca2")).await.unwrap_err(),
            SecretError::Open
        );
        assert_eq!(
            opener.open("sbx1:AAAA", &ca_aad("ca1")).await.unwrap_err(),
            SecretError::Malformed
        );
        let mut wrong = Opener::new(Zeroizing::new("another passphrase".into()));
        assert_eq!(
            wrong.open(&value, &ca_aad("ca1")).await.unwrap_err(),
            SecretError::Open
        );
    }
}
