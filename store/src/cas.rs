//! Mesh certificate authorities: the sealed CA rows, the rotation steps and the trust bundle.
//!
//! A mesh has one `active` CA (it signs) and, during a rotation, one `retiring` CA (still
//! trusted until the rotation completes). The store only ever holds sealed keys: callers seal
//! with `switchboard_pki` before writing and unseal after reading. Every write here is a
//! tenant write like a resource's (the revision moves, the change log records the mesh as
//! changed, the notice goes out), so xDS streams rebuild and see the new trust bundle.

use crate::ca_rows::{CA_COLS, bundle, cas_in, insert_ca, row_to_ca};
use crate::resources::WriteTx;
use crate::{CaState, ChangeOp, Store, StoreError, StoredCa, Timer, now_ms};
use sqlx::Row;
use switchboard_model::{Kind, TrustBundle};
use switchboard_pki::SealedCa;

fn conflict(message: impl Into<String>) -> StoreError {
    StoreError::CaConflict(message.into())
}

impl Store {
    /// Begins a CA write on an existing mesh and reads its CAs.
    async fn begin_ca_write(
        &self,
        tenant: &str,
        mesh: &str,
    ) -> Result<(WriteTx, Vec<StoredCa>), StoreError> {
        let mut w = self.begin_write(tenant).await?;
        let found = sqlx::query(
            "SELECT name FROM resources WHERE tenant = $1 AND mesh = '' AND kind = $2 AND name = $3",
        )
        .bind(tenant)
        .bind(Kind::Mesh.plural())
        .bind(mesh)
        .fetch_optional(&mut *w.tx)
        .await?;
        if found.is_none() {
            return Err(StoreError::NotFound {
                what: "mesh",
                name: mesh.into(),
            });
        }
        let cas = cas_in(&mut w.tx, tenant, mesh).await?;
        Ok((w, cas))
    }

    /// Commits a CA write: the mesh is logged as changed, so its snapshot is rebuilt.
    async fn finish_ca_write(
        &self,
        w: WriteTx,
        tenant: &str,
        mesh: &str,
    ) -> Result<(), StoreError> {
        self.finish_write(
            w,
            tenant,
            &[("", Kind::Mesh, mesh, ChangeOp::Put)],
            &[],
            false,
        )
        .await
    }

    /// The mesh's CAs, active first (none for a mesh created before CAs existed).
    pub async fn list_cas(&self, tenant: &str, mesh: &str) -> Result<Vec<StoredCa>, StoreError> {
        let _t = Timer::start("list_cas");
        let mut tx = self.pool().begin().await?;
        let cas = cas_in(&mut tx, tenant, mesh).await?;
        tx.commit().await?;
        Ok(cas)
    }

    /// The CA that signs the mesh's workload certificates, sealed (`None` until the mesh has
    /// one: create it with [`Store::create_ca_if_missing`]).
    pub async fn signing_ca(
        &self,
        tenant: &str,
        mesh: &str,
    ) -> Result<Option<StoredCa>, StoreError> {
        let cas = self.list_cas(tenant, mesh).await?;
        Ok(cas.into_iter().find(|c| c.state == CaState::Active))
    }

    /// The roots the mesh's workloads trust and which CA signs.
    pub async fn trust_bundle(&self, tenant: &str, mesh: &str) -> Result<TrustBundle, StoreError> {
        Ok(bundle(&self.list_cas(tenant, mesh).await?))
    }

    /// Gives the mesh `ca` as its active CA unless it already has one, and returns the active
    /// CA either way. Idempotent and safe to race: writers of a tenant are serialized, and a
    /// mesh with a CA is left as it is (nothing is written, the revision does not move).
    pub async fn create_ca_if_missing(
        &self,
        tenant: &str,
        mesh: &str,
        ca: &SealedCa,
    ) -> Result<StoredCa, StoreError> {
        let _t = Timer::start("create_ca");
        let (mut w, cas) = self.begin_ca_write(tenant, mesh).await?;
        if let Some(active) = cas.into_iter().find(|c| c.state == CaState::Active) {
            w.tx.rollback().await?;
            return Ok(active);
        }
        insert_ca(&mut w.tx, tenant, mesh, CaState::Active, ca).await?;
        self.finish_ca_write(w, tenant, mesh).await?;
        self.active(tenant, mesh).await
    }

    async fn active(&self, tenant: &str, mesh: &str) -> Result<StoredCa, StoreError> {
        self.signing_ca(tenant, mesh)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("mesh {mesh:?} lost its CA")))
    }

    /// Replaces the mesh's active CA with `ca` (an uploaded one); refused during a rotation.
    /// Uploading the mesh's current CA again changes nothing.
    pub async fn replace_ca(
        &self,
        tenant: &str,
        mesh: &str,
        ca: &SealedCa,
    ) -> Result<StoredCa, StoreError> {
        let _t = Timer::start("replace_ca");
        let (mut w, cas) = self.begin_ca_write(tenant, mesh).await?;
        if cas.iter().any(|c| c.state == CaState::Retiring) {
            return Err(conflict(
                "a CA rotation is in progress: complete or abort it (…/ca/rotation) before \
                 replacing the CA",
            ));
        }
        if let Some(same) = cas.into_iter().find(|c| c.ca.id == ca.id) {
            // The same certificate again: nothing to change.
            w.tx.rollback().await?;
            return Ok(same);
        }
        sqlx::query("DELETE FROM mesh_cas WHERE tenant = $1 AND mesh = $2")
            .bind(tenant)
            .bind(mesh)
            .execute(&mut *w.tx)
            .await?;
        insert_ca(&mut w.tx, tenant, mesh, CaState::Active, ca).await?;
        self.finish_ca_write(w, tenant, mesh).await?;
        self.active(tenant, mesh).await
    }

    /// Starts a rotation to `ca`: it becomes the active (signing) CA, the previous one is
    /// kept as retiring, trusted until the rotation completes, not before `overlap_until`
    /// (Unix ms) unless forced.
    pub async fn start_ca_rotation(
        &self,
        tenant: &str,
        mesh: &str,
        ca: &SealedCa,
        overlap_until: i64,
    ) -> Result<StoredCa, StoreError> {
        let _t = Timer::start("start_ca_rotation");
        let (mut w, cas) = self.begin_ca_write(tenant, mesh).await?;
        if cas.iter().any(|c| c.state == CaState::Retiring) {
            return Err(conflict(
                "a CA rotation is already in progress: complete or abort it first",
            ));
        }
        let Some(old) = cas.iter().find(|c| c.state == CaState::Active) else {
            return Err(conflict("the mesh has no CA to rotate from"));
        };
        if old.ca.id == ca.id {
            return Err(conflict("the new CA is the current one"));
        }
        sqlx::query(
            "UPDATE mesh_cas SET state = $4, overlap_until = $5 WHERE tenant = $1 AND mesh = $2 AND id = $3",
        )
        .bind(tenant)
        .bind(mesh)
        .bind(&old.ca.id)
        .bind(CaState::Retiring.as_str())
        .bind(overlap_until)
        .execute(&mut *w.tx)
        .await?;
        insert_ca(&mut w.tx, tenant, mesh, CaState::Active, ca).await?;
        self.finish_ca_write(w, tenant, mesh).await?;
        self.active(tenant, mesh).await
    }

    /// Completes a rotation: the retiring CA is no longer trusted. Refused before its
    /// `overlap_until` unless `force` (certificates it signed may still be in use).
    pub async fn complete_ca_rotation(
        &self,
        tenant: &str,
        mesh: &str,
        force: bool,
    ) -> Result<StoredCa, StoreError> {
        let _t = Timer::start("complete_ca_rotation");
        let (mut w, cas) = self.begin_ca_write(tenant, mesh).await?;
        let Some(old) = cas.into_iter().find(|c| c.state == CaState::Retiring) else {
            return Err(conflict("no CA rotation is in progress"));
        };
        if let Some(until) = old.overlap_until
            && now_ms() < until
            && !force
        {
            return Err(StoreError::CaOverlap { until });
        }
        sqlx::query("DELETE FROM mesh_cas WHERE tenant = $1 AND mesh = $2 AND id = $3")
            .bind(tenant)
            .bind(mesh)
            .bind(&old.ca.id)
            .execute(&mut *w.tx)
            .await?;
        self.finish_ca_write(w, tenant, mesh).await?;
        Ok(old)
    }

    /// Aborts a rotation: the new CA is dropped and the retiring one signs again.
    pub async fn abort_ca_rotation(
        &self,
        tenant: &str,
        mesh: &str,
    ) -> Result<StoredCa, StoreError> {
        let _t = Timer::start("abort_ca_rotation");
        let (mut w, cas) = self.begin_ca_write(tenant, mesh).await?;
        if !cas.iter().any(|c| c.state == CaState::Retiring) {
            return Err(conflict("no CA rotation is in progress"));
        }
        sqlx::query("DELETE FROM mesh_cas WHERE tenant = $1 AND mesh = $2 AND state = $3")
            .bind(tenant)
            .bind(mesh)
            .bind(CaState::Active.as_str())
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "UPDATE mesh_cas SET state = $3, overlap_until = NULL WHERE tenant = $1 AND mesh = $2 AND state = $4",
        )
        .bind(tenant)
        .bind(mesh)
        .bind(CaState::Active.as_str())
        .bind(CaState::Retiring.as_str())
        .execute(&mut *w.tx)
        .await?;
        self.finish_ca_write(w, tenant, mesh).await?;
        self.active(tenant, mesh).await
    }

    /// The key ids of every stored CA's sealed key, and one CA to test-open: what `serve`
    /// checks its configured key-encryption key against before starting.
    pub async fn ca_key_check(&self) -> Result<(Vec<String>, Option<StoredCa>), StoreError> {
        let ids = sqlx::query("SELECT DISTINCT kek_id FROM mesh_cas ORDER BY kek_id")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| r.try_get("kek_id"))
            .collect::<Result<Vec<String>, _>>()?;
        let one = sqlx::query(&format!(
            "SELECT {CA_COLS} FROM mesh_cas ORDER BY tenant, mesh, id LIMIT 1"
        ))
        .fetch_optional(self.pool())
        .await?;
        Ok((ids, one.as_ref().map(row_to_ca).transpose()?))
    }
}
