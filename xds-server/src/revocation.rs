//! Ends the streams of a revoked proxy token, on every replica.
//!
//! A token is checked when a stream opens; revoking it later must not leave the stream
//! running (the usual reason to revoke is a leaked token). The store announces each
//! revocation ([`Notice::Revoked`], NOTIFY on PostgreSQL), the [`watcher`](crate::watcher)
//! passes it here, and every stream holding that credential is told to end. When notices may
//! have been lost (`Resync`, or the watcher lagged), [`Revocations::recheck`] asks the store
//! whether each credential in use still exists.
//!
//! Revoked ids are remembered for the life of the process (ids are random and never reused;
//! revocations are rare), so that a stream whose token was checked just before its
//! revocation, and which registers just after the notice was handled, still ends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use switchboard_store::Store;
use tokio_util::sync::CancellationToken;

/// The credentials that open streams hold, and those revoked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Revocations {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per credential id in use: the token its streams wait on (cancelled once revoked), and
    /// how many streams hold it.
    held: HashMap<String, (CancellationToken, usize)>,
    revoked: HashSet<String>,
}

/// A stream's hold on its credential: `revoked` resolves once the credential is revoked.
#[derive(Debug)]
pub(crate) struct Held {
    owner: Revocations,
    id: String,
    token: CancellationToken,
}

impl Held {
    /// Resolves when the credential is revoked; never, while it is not.
    pub(crate) async fn revoked(&mut self) {
        self.token.cancelled().await;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut inner = self.owner.lock();
        if let Some((_, holders)) = inner.held.get_mut(&self.id) {
            *holders = holders.saturating_sub(1);
            if *holders == 0 {
                inner.held.remove(&self.id);
            }
        }
    }
}

impl Revocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a stream authenticated with credential `id`.
    pub(crate) fn hold(&self, id: &str) -> Held {
        let mut inner = self.lock();
        let already = inner.revoked.contains(id);
        let (token, holders) = inner
            .held
            .entry(id.to_owned())
            .or_insert_with(|| (CancellationToken::new(), 0));
        *holders += 1;
        if already {
            token.cancel();
        }
        Held {
            owner: self.clone(),
            id: id.to_owned(),
            token: token.clone(),
        }
    }

    /// Ends the streams holding credential `id`, now and if any registers later.
    pub(crate) fn revoke(&self, id: &str) {
        let mut inner = self.lock();
        inner.revoked.insert(id.to_owned());
        if let Some((token, holders)) = inner.held.get(id) {
            tracing::info!(credential = %id, streams = holders,
                "proxy token revoked; ending its streams");
            token.cancel();
        }
    }

    /// Asks the store whether each credential in use still exists, and revokes those that
    /// do not. A store error leaves a credential alone (it is checked again next time).
    pub(crate) async fn recheck(&self, store: &Store) {
        let ids: Vec<String> = self.lock().held.keys().cloned().collect();
        for id in ids {
            match store.credential_exists(&id).await {
                Ok(true) => {}
                Ok(false) => self.revoke(&id),
                Err(e) => tracing::warn!(credential = %id, error = %e,
                    "cannot check whether a proxy token was revoked; will check again"),
            }
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn ended(h: &mut Held) -> bool {
        tokio::time::timeout(Duration::from_millis(50), h.revoked())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn revoking_ends_every_holder_and_later_ones() {
        let r = Revocations::default();
        let mut a = r.hold("t1");
        let mut b = r.hold("t1");
        let mut other = r.hold("t2");
        assert!(!ended(&mut a).await);
        r.revoke("t1");
        assert!(ended(&mut a).await);
        assert!(ended(&mut b).await);
        assert!(!ended(&mut other).await);
        // Registered after the revocation was handled: ends at once.
        let mut late = r.hold("t1");
        assert!(ended(&mut late).await);
    }

    #[tokio::test]
    async fn holds_are_forgotten_when_dropped() {
        let r = Revocations::default();
        let a = r.hold("t1");
        let b = r.hold("t1");
        assert_eq!(r.held(), 1);
        drop(a);
        assert_eq!(r.held(), 1);
        drop(b);
        assert_eq!(r.held(), 0);
    }
}
