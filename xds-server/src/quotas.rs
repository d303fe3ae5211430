//! The tenant's `streams` quota: concurrent xDS streams of a tenant on this replica.
//!
//! Checked once per stream, right after authentication (so a client must hold a credential of
//! the tenant, or name an open mesh, to spend the tenant's quota), against the quota read
//! through the store's short cache: a change applies to streams opened after it. A stream
//! holds its place for its whole life ([`StreamSlot`]). If the quota cannot be read (the store
//! is down), the server's default applies: a store outage does not refuse streams that
//! could otherwise be served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use switchboard_store::Store;
use tonic::Status;

/// Open streams per tenant on this replica.
#[derive(Debug, Default)]
pub(crate) struct TenantStreams {
    open: Mutex<HashMap<String, u64>>,
}

/// One stream's place in its tenant's quota, given back when dropped.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    streams: Arc<TenantStreams>,
    tenant: String,
}

impl TenantStreams {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a stream of `tenant`, or refuses it with `RESOURCE_EXHAUSTED`.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        store: &Store,
        tenant: &str,
    ) -> Result<StreamSlot, Status> {
        let limit = match store.quotas(tenant).await {
            Ok(q) => q.streams,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the tenant's quotas; the default applies");
                store.quota_defaults().streams
            }
        };
        self.take(tenant, limit)
    }

    fn take(self: &Arc<Self>, tenant: &str, limit: u64) -> Result<StreamSlot, Status> {
        let mut open = self.open();
        let n = open.entry(tenant.to_owned()).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                open.remove(tenant);
            }
            crate::metrics::stream_quota_refused(tenant);
            return Err(Status::resource_exhausted(format!(
                "tenant {tenant:?} has reached its quota of {limit} concurrent xDS streams \
                 (quota streams); close streams or ask the platform admin to raise it"
            )));
        }
        *n += 1;
        Ok(StreamSlot {
            streams: Arc::clone(self),
            tenant: tenant.to_owned(),
        })
    }

    /// Open streams of `tenant` on this replica.
    #[cfg(test)]
    fn count(&self, tenant: &str) -> u64 {
        self.open().get(tenant).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open();
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_and_given_back() {
        let s = Arc::new(TenantStreams::default());
        let a = s.take("acme", 2).unwrap();
        let b = s.take("acme", 2).unwrap();
        let refused = s.take("acme", 2).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            refused.message(),
            "tenant \"acme\" has reached its quota of 2 concurrent xDS streams (quota streams); \
             close streams or ask the platform admin to raise it"
        );
        // Other tenants count apart.
        let _g = s.take("globex", 1).unwrap();
        drop(a);
        assert_eq!(s.count("acme"), 1);
        let _c = s.take("acme", 2).unwrap();
        drop(b);
        assert_eq!(s.count("acme"), 1);
        // A quota of 0 admits nothing and leaves no entry behind.
        assert!(s.take("zero", 0).is_err());
        assert!(!s.open().contains_key("zero"));
    }
}
