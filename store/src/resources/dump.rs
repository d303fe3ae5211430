//! A tenant's whole configuration read at one revision: what an export writes out.

use super::{COLS, row_to_resource};
use crate::ca_rows::{CA_COLS, row_to_ca};
use crate::{Backend, Store, StoreError, StoredCa, StoredResource, Timer};
use sqlx::Row;

/// Every mesh and resource of a tenant, and its meshes' CAs (keys sealed), as of `revision`.
#[derive(Debug, Clone)]
pub struct TenantDump {
    pub revision: i64,
    /// Meshes first, then each mesh's resources, in the order of what refers to what
    /// ([`crate::dependency_rank`]) and by name.
    pub resources: Vec<StoredResource>,
    /// Every CA of every mesh, active first within a mesh.
    pub cas: Vec<StoredCa>,
}

impl Store {
    /// Reads the tenant in one transaction (repeatable read on PostgreSQL; SQLite's read
    /// transaction sees one snapshot), so the dump is one revision of it.
    pub async fn tenant_dump(&self, tenant: &str) -> Result<TenantDump, StoreError> {
        let _t = Timer::start("tenant_dump");
        let mut tx = self.pool().begin().await?;
        if self.backend() == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let revision: i64 = sqlx::query("SELECT revision FROM tenants WHERE name = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "tenant",
                name: tenant.into(),
            })?
            .try_get("revision")?;
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM resources WHERE tenant = $1 ORDER BY mesh, kind, name"
        ))
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        let cas = sqlx::query(&format!(
            "SELECT {CA_COLS} FROM mesh_cas WHERE tenant = $1 ORDER BY mesh, state, id"
        ))
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut resources = rows
            .iter()
            .map(row_to_resource)
            .collect::<Result<Vec<_>, _>>()?;
        resources.sort_by(|a, b| {
            let at = |r: &StoredResource| (r.key.mesh.clone(), crate::dependency_rank(r.key.kind));
            at(a).cmp(&at(b)).then_with(|| a.key.name.cmp(&b.key.name))
        });
        Ok(TenantDump {
            revision,
            resources,
            cas: cas.iter().map(row_to_ca).collect::<Result<_, _>>()?,
        })
    }
}
