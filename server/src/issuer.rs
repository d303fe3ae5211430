//! The mesh CA behind the xDS server's certificate port: CAs are read sealed from the store,
//! opened with the key-encryption key, kept open in memory by CA id, and issue workload
//! certificates. A mesh created before CAs existed gets one here, the first time one of its
//! proxies asks (idempotent across replicas: the store keeps the first CA written).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use switchboard_model::TrustBundle;
use switchboard_model::spec::SealedKey;
use switchboard_pki::{Kek, MeshCa, open_certificate_key};
use switchboard_store::Store;
use switchboard_xds_server::{IssueError, IssuedCertificate, WorkloadIssuer};
use time::OffsetDateTime;
use zeroize::Zeroizing;

pub struct StoreIssuer {
    store: Store,
    kek: Arc<Kek>,
    /// Opened CAs by CA id: unsealing is done once per CA, not per certificate.
    open: Mutex<HashMap<String, Arc<MeshCa>>>,
}

impl std::fmt::Debug for StoreIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreIssuer").finish_non_exhaustive()
    }
}

impl StoreIssuer {
    pub fn new(store: Store, kek: Arc<Kek>) -> Self {
        Self {
            store,
            kek,
            open: Mutex::new(HashMap::new()),
        }
    }

    async fn signer(&self, tenant: &str, mesh: &str) -> Result<Arc<MeshCa>, IssueError> {
        let unavailable = |e: switchboard_store::StoreError| IssueError::Unavailable(e.to_string());
        let stored = match self
            .store
            .signing_ca(tenant, mesh)
            .await
            .map_err(unavailable)?
        {
            Some(stored) => stored,
            None => {
                let fresh = MeshCa::generate(tenant, mesh, OffsetDateTime::now_utc())
                    .and_then(|ca| ca.seal(tenant, mesh, &self.kek))
                    .map_err(|e| IssueError::Failed(e.to_string()))?;
                self.store
                    .create_ca_if_missing(tenant, mesh, &fresh)
                    .await
                    .map_err(unavailable)?
            }
        };
        let cached = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&stored.ca.id)
            .cloned();
        if let Some(ca) = cached {
            return Ok(ca);
        }
        let ca = Arc::new(
            MeshCa::unseal(stored.sealed(), &self.kek)
                .map_err(|e| IssueError::Failed(e.to_string()))?,
        );
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(stored.ca.id.clone(), ca.clone());
        Ok(ca)
    }
}

impl WorkloadIssuer for StoreIssuer {
    fn issue<'a>(
        &'a self,
        tenant: &'a str,
        mesh: &'a str,
        spiffe_id: &'a str,
        lifetime: Duration,
    ) -> BoxFuture<'a, Result<IssuedCertificate, IssueError>> {
        async move {
            let ca = self.signer(tenant, mesh).await?;
            let issued = ca
                .issue(spiffe_id, lifetime, OffsetDateTime::now_utc())
                .map_err(|e| IssueError::Failed(e.to_string()))?;
            Ok(IssuedCertificate {
                chain_pem: issued.chain_pem,
                private_key_pem: issued.private_key_pem,
                serial: issued.serial,
                not_after: issued.not_after.into(),
                signer_id: ca.id().to_owned(),
            })
        }
        .boxed()
    }

    fn trust_bundle<'a>(
        &'a self,
        tenant: &'a str,
        mesh: &'a str,
    ) -> BoxFuture<'a, Result<TrustBundle, IssueError>> {
        async move {
            self.store
                .trust_bundle(tenant, mesh)
                .await
                .map_err(|e| IssueError::Unavailable(e.to_string()))
        }
        .boxed()
    }

    /// Uploaded certificates' keys are sealed with the same KEK as the CA keys.
    fn open_certificate_key(
        &self,
        tenant: &str,
        mesh: &str,
        name: &str,
        sealed: &SealedKey,
    ) -> Result<Zeroizing<String>, IssueError> {
        open_certificate_key(
            &self.kek,
            tenant,
            mesh,
            name,
            &sealed.kek_id,
            &sealed.sealed,
        )
        .map_err(|e| IssueError::Failed(format!("certificate {name:?}: {e}")))
    }
}
