//! Proxy tokens this replica has verified against the store, remembered so that their
//! streams are still admitted while the store is unreachable (a sidecar reconnecting after a
//! network blip or a replica's drain keeps its configuration through a database outage).
//!
//! Used only when the store cannot answer: whenever it can, its answer counts, so a revoked
//! or deleted token is refused at once. A revocation this replica heard of also ends a stream
//! admitted from here, as soon as the stream holds the credential (revoked ids are kept for
//! the process's life, see `crate::revocation`). An entry serves for [`KNOWN_FOR`] after its
//! last verification (a revocation notice lost just before an outage is not trusted away
//! forever), and is keyed by the token's SHA-256: the secret itself is not kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use switchboard_store::{Credential, CredentialKind};

/// How long after its last verification a token is still admitted while the store is
/// unreachable.
pub const KNOWN_FOR: Duration = Duration::from_secs(3600);

/// Entries kept at most; past that the memory starts over (it refills as tokens verify).
const MAX_KNOWN: usize = 100_000;

/// A verified token's credential and when it was verified, by the token's SHA-256.
type Verified = HashMap<[u8; 32], (Credential, Instant)>;

/// The proxy tokens verified here, by SHA-256. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct KnownCredentials {
    inner: Arc<Mutex<Verified>>,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl KnownCredentials {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Credential, Instant)>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that the store just verified `token` as `credential` (proxy tokens only).
    pub fn remember(&self, token: &str, credential: &Credential, now: Instant) {
        if credential.kind != CredentialKind::ProxyToken {
            return;
        }
        let mut known = self.lock();
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(key(token), (credential.clone(), now));
    }

    /// The credential `token` was last verified as, if that was within [`KNOWN_FOR`].
    pub fn recall(&self, token: &str, now: Instant) -> Option<Credential> {
        let known = self.lock();
        let (credential, at) = known.get(&key(token))?;
        (now.saturating_duration_since(*at) <= KNOWN_FOR).then(|| credential.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(kind: CredentialKind) -> Credential {
        Credential {
            id: "id".to_owned(),
            tenant: "acme".to_owned(),
            kind,
            mesh: None,
            description: String::new(),
            create_time: 0,
        }
    }

    #[test]
    fn recalls_verified_proxy_tokens_for_a_while() {
        let known = KnownCredentials::default();
        let t0 = Instant::now();
        known.remember("sbp_a", &credential(CredentialKind::ProxyToken), t0);
        known.remember("sbk_b", &credential(CredentialKind::ApiKey), t0);
        assert_eq!(
            known.recall("sbp_a", t0 + KNOWN_FOR).map(|c| c.id),
            Some("id".into())
        );
        assert_eq!(
            known.recall("sbp_a", t0 + KNOWN_FOR + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            known.recall("sbk_b", t0),
            None,
            "API keys are not proxy tokens"
        );
        assert_eq!(known.recall("sbp_other", t0), None);
        // Verified again: good for another while.
        known.remember(
            "sbp_a",
            &credential(CredentialKind::ProxyToken),
            t0 + KNOWN_FOR,
        );
        assert!(known.recall("sbp_a", t0 + KNOWN_FOR * 2).is_some());
    }
}
