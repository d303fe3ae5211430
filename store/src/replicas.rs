//! Replica heartbeats and what a replica needs to tell how far behind the store it is: the
//! reads behind the replica and change-log-lag metrics. Each replica refreshes its own row in
//! `replicas`; a row whose heartbeat stopped belongs to a replica that died (a stopping
//! replica deletes its row) and is forgotten after [`REPLICA_FORGET_MS`].

use crate::{Store, StoreError};
use sqlx::Row;

/// A replica silent for this long is no longer listed.
pub const REPLICA_FORGET_MS: i64 = 600_000;

/// One replica's row, as [`Store::replica_heartbeat`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub id: String,
    /// Unix ms of its start and of its last heartbeat (by its own clock).
    pub started: i64,
    pub heartbeat: i64,
}

impl Store {
    /// Records `replica`'s heartbeat at `now` (Unix ms), forgets replicas silent for
    /// [`REPLICA_FORGET_MS`], and lists every replica still listed, this one included.
    pub async fn replica_heartbeat(
        &self,
        replica: &str,
        now: i64,
    ) -> Result<Vec<ReplicaRow>, StoreError> {
        let _t = crate::Timer::start("replica_heartbeat");
        let turn = self.write_turn().await;
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO replicas (id, started, heartbeat) VALUES ($1, $2, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat",
        )
        .bind(replica)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM replicas WHERE heartbeat < $1")
            .bind(now - REPLICA_FORGET_MS)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query("SELECT id, started, heartbeat FROM replicas ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        drop(turn);
        rows.iter()
            .map(|r| {
                Ok(ReplicaRow {
                    id: r.try_get("id")?,
                    started: r.try_get("started")?,
                    heartbeat: r.try_get("heartbeat")?,
                })
            })
            .collect()
    }

    /// Deletes `replica`'s row: it is stopping, and must not be taken for a dead replica.
    pub async fn remove_replica(&self, replica: &str) -> Result<(), StoreError> {
        let _t = crate::Timer::start("remove_replica");
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(replica)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The current revision of each of `tenants` that exists (the newest commit the store
    /// has for it), in one read.
    pub async fn tenant_revisions(
        &self,
        tenants: &[String],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let _t = crate::Timer::start("tenant_revisions");
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(tenants.len());
        // Bounded batches keep the statement's parameters well under either backend's limit.
        for batch in tenants.chunks(500) {
            let params: Vec<String> = (1..=batch.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT name, revision FROM tenants WHERE name IN ({})",
                params.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for t in batch {
                query = query.bind(t);
            }
            for r in query.fetch_all(self.pool()).await? {
                out.push((r.try_get("name")?, r.try_get("revision")?));
            }
        }
        Ok(out)
    }

    /// When (Unix ms, the committing replica's clock) the tenant's first revision after
    /// `revision` was committed: the oldest commit a replica current through `revision` has
    /// not applied. `None` when the change log holds nothing after it (nothing committed, or
    /// pruned: then the tenant's last write time, a lower bound of the wait, is the answer).
    pub async fn first_commit_after(
        &self,
        tenant: &str,
        revision: i64,
    ) -> Result<Option<i64>, StoreError> {
        let _t = crate::Timer::start("first_commit_after");
        let row = sqlx::query(
            "SELECT MIN(time) AS first FROM changes WHERE tenant = $1 AND revision > $2",
        )
        .bind(tenant)
        .bind(revision)
        .fetch_one(self.pool())
        .await?;
        if let Some(first) = row.try_get::<Option<i64>, _>("first")? {
            return Ok(Some(first));
        }
        let row = sqlx::query("SELECT update_time FROM tenants WHERE name = $1 AND revision > $2")
            .bind(tenant)
            .bind(revision)
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("update_time")?),
            None => None,
        })
    }
}
