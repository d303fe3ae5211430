//! Mesh certificate authorities: the sealed CA rows, the rotation steps and the trust bundle.
//!
//! A mesh has one `active` CA (it signs) and, during a rotation, one `retiring` CA (still
//! trusted until the rotation completes). The store only ever holds sealed keys: callers seal
//! with `switchboard_pki` before writing and unseal after reading. Every write here is a
//! tenant write like a resource's (the revision moves, the change log records the mesh as
//! changed, the notice goes out), so xDS streams rebuild and see the new trust bundle.

use crate::resources::WriteTx;
use crate::{ChangeOp, Store, StoreError, Timer, now_ms};
use base64::Engine;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use switchboard_model::{Kind, TrustBundle};
use switchboard_pki::{Origin, SealedCa, SealedCaRef};

/// Where a CA stands in its mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaState {
    /// Signs new workload certificates.
    Active,
    /// Replaced by a rotation; still trusted until the rotation completes.
    Retiring,
}

impl CaState {
    fn as_str(self) -> &'static str {
        match self {
            CaState::Active => "active",
            CaState::Retiring => "retiring",
        }
    }
    fn parse(s: &str) -> Option<CaState> {
        match s {
            "active" => Some(CaState::Active),
            "retiring" => Some(CaState::Retiring),
            _ => None,
        }
    }
}

/// A CA row: public parts and the sealed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCa {
    pub tenant: String,
    pub mesh: String,
    pub state: CaState,
    pub ca: SealedCa,
    pub create_time: i64,
    /// While retiring: when the rotation may complete without `force`.
    pub overlap_until: Option<i64>,
}

impl StoredCa {
    /// The parts [`switchboard_pki::MeshCa::unseal`] takes.
    pub fn sealed(&self) -> SealedCaRef<'_> {
        SealedCaRef {
            tenant: &self.tenant,
            mesh: &self.mesh,
            id: &self.ca.id,
            origin: self.ca.origin,
            chain_pem: &self.ca.chain_pem,
            sealed_key: &self.ca.sealed_key,
            kek_id: &self.ca.kek_id,
        }
    }
}

const CA_COLS: &str = "tenant, mesh, id, state, origin, chain_pem, root_pem, sealed_key, kek_id, create_time, overlap_until";

fn row_to_ca(r: &AnyRow) -> Result<StoredCa, StoreError> {
    let state: String = r.try_get("state")?;
    let origin: String = r.try_get("origin")?;
    let sealed: String = r.try_get("sealed_key")?;
    Ok(StoredCa {
        tenant: r.try_get("tenant")?,
        mesh: r.try_get("mesh")?,
        state: CaState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("CA state {state:?}")))?,
        ca: SealedCa {
            id: r.try_get("id")?,
            origin: Origin::parse(&origin)
                .ok_or_else(|| StoreError::Corrupt(format!("CA origin {origin:?}")))?,
            chain_pem: r.try_get("chain_pem")?,
            root_pem: r.try_get("root_pem")?,
            sealed_key: base64::engine::general_purpose::STANDARD
                .decode(sealed)
                .map_err(|_| StoreError::Corrupt("a CA's sealed key is not base64".into()))?,
            kek_id: r.try_get("kek_id")?,
        },
        create_time: r.try_get("create_time")?,
        overlap_until: r.try_get("overlap_until")?,
    })
}

/// The trust bundle of a mesh's CA rows: the active CA signs; every row's root is trusted.
fn bundle(cas: &[StoredCa]) -> TrustBundle {
    let mut b = TrustBundle::default();
    for ca in cas {
        if ca.state == CaState::Active {
            b.signer_id = ca.ca.id.clone();
        }
        b.roots_pem.push(ca.ca.root_pem.clone());
    }
    b
}

/// The mesh's CAs, active first.
pub(crate) async fn cas_in(
    tx: &mut Transaction<'static, Any>,
    tenant: &str,
    mesh: &str,
) -> Result<Vec<StoredCa>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {CA_COLS} FROM mesh_cas WHERE tenant = $1 AND mesh = $2 ORDER BY state, id"
    ))
    .bind(tenant)
    .bind(mesh)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(row_to_ca).collect()
}

pub(crate) async fn trust_in(
    tx: &mut Transaction<'static, Any>,
    tenant: &str,
    mesh: &str,
) -> Result<TrustBundle, StoreError> {
    Ok(bundle(&cas_in(tx, tenant, mesh).await?))
}

/// Inserts `ca` in `state` (the caller has checked that the state is free).
pub(crate) async fn insert_ca(
    tx: &mut Transaction<'static, Any>,
    tenant: &str,
    mesh: &str,
    state: CaState,
    ca: &SealedCa,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO mesh_cas ({CA_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL)"
    ))
    .bind(tenant)
    .bind(mesh)
    .bind(&ca.id)
    .bind(state.as_str())
    .bind(ca.origin.as_str())
    .bind(&ca.chain_pem)
    .bind(&ca.root_pem)
    .bind(base64::engine::general_purpose::STANDARD.encode(&ca.sealed_key))
    .bind(&ca.kek_id)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

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
        self.finish_write(w, tenant, &[("", Kind::Mesh, mesh, ChangeOp::Put)], false)
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
