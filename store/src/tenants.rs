//! Tenants: the unit of ownership and of revisions.

use crate::resources::{Page, spec_column};
use crate::{Store, StoreError, Tenant, Timer, now_ms};
use sqlx::Row;
use sqlx::any::AnyRow;

fn row_to_tenant(r: &AnyRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        name: r.try_get("name")?,
        spec: spec_column(r, || "tenant spec".to_owned())?,
        revision: r.try_get("revision")?,
        create_time: r.try_get("create_time")?,
        update_time: r.try_get("update_time")?,
    })
}

impl Store {
    pub async fn create_tenant(
        &self,
        name: &str,
        spec: &serde_json::Value,
        dry_run: bool,
    ) -> Result<Tenant, StoreError> {
        let _t = Timer::start("create_tenant");
        let _turn = self.write_turn().await;
        let mut tx = self.pool().begin().await?;
        let now = now_ms();
        // ON CONFLICT keeps concurrent creators from failing with a raw constraint error.
        let inserted = sqlx::query(
            "INSERT INTO tenants (name, spec, revision, create_time, update_time) VALUES ($1, $2, 1, $3, $3) \
             ON CONFLICT (name) DO NOTHING RETURNING name",
        )
        .bind(name)
        .bind(spec.to_string())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            return Err(StoreError::AlreadyExists {
                what: "tenant",
                name: name.into(),
            });
        }
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(Tenant {
            name: name.into(),
            spec: spec.clone(),
            revision: 1,
            create_time: now,
            update_time: now,
        })
    }

    pub async fn get_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        let row = sqlx::query(
            "SELECT name, spec, revision, create_time, update_time FROM tenants WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(r) => row_to_tenant(&r),
            None => Err(StoreError::NotFound {
                what: "tenant",
                name: name.into(),
            }),
        }
    }

    pub async fn list_tenants(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Tenant>, StoreError> {
        let query = sqlx::query(
            "SELECT name, spec, revision, create_time, update_time FROM tenants WHERE name > $1 ORDER BY name LIMIT $2",
        );
        self.fetch_page(query, after, limit, row_to_tenant, |t| &t.name)
            .await
    }

    /// Deletes a tenant with everything it owns, credentials included.
    pub async fn delete_tenant(&self, name: &str, dry_run: bool) -> Result<(), StoreError> {
        let _t = Timer::start("delete_tenant");
        let crate::resources::WriteTx {
            mut tx,
            revision,
            turn,
        } = self.begin_write(name).await?;
        for table in [
            "resources",
            "refs",
            "claims",
            "changes",
            "history",
            "credentials",
            "mesh_cas",
            "tenant_quotas",
            "mesh_sizes",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant = $1"))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM tenants WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.finish_write(
            crate::resources::WriteTx { tx, revision, turn },
            name,
            &[],
            &[],
            dry_run,
        )
        .await
    }

    /// The tenant's current revision.
    pub async fn revision(&self, tenant: &str) -> Result<i64, StoreError> {
        Ok(self.get_tenant(tenant).await?.revision)
    }
}
