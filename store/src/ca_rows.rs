//! Mesh CA rows: their types and the reads and writes inside a transaction that both the
//! CA operations (`cas`) and the mesh write path (`resources`) use.

use crate::{StoreError, now_ms};
use base64::Engine;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use switchboard_model::TrustBundle;
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
    pub(crate) fn as_str(self) -> &'static str {
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

pub(crate) const CA_COLS: &str = "tenant, mesh, id, state, origin, chain_pem, root_pem, sealed_key, kek_id, create_time, overlap_until";

pub(crate) fn row_to_ca(r: &AnyRow) -> Result<StoredCa, StoreError> {
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
pub(crate) fn bundle(cas: &[StoredCa]) -> TrustBundle {
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
