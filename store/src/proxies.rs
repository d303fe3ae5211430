//! Per-stream xDS status rows. Each replica writes its own streams' rows (keyed by replica and
//! stream id) and refreshes a heartbeat; rows whose heartbeat is older than
//! [`PROXY_STALE_MS`] belong to a replica that died and are neither shown nor kept.

use crate::{Store, StoreError, now_ms};
use sqlx::Row;

/// A row older than this (no heartbeat) is from a replica that is gone.
pub const PROXY_STALE_MS: i64 = 60_000;

/// Rows written per statement by [`Store::put_proxies`].
pub const PROXY_CHUNK: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyRow {
    pub tenant: String,
    pub mesh: String,
    pub node: String,
    pub replica: String,
    pub stream_id: i64,
    pub connected_since: i64,
    pub heartbeat: i64,
    /// What the xDS server reports about the stream (JSON).
    pub status: serde_json::Value,
}

const COLS: &str = "tenant, mesh, node, replica, stream_id, connected_since, heartbeat, status";

impl Store {
    /// Writes (inserts or replaces) the rows of one replica's streams, in chunks of
    /// [`PROXY_CHUNK`] rows per transaction so that configuration writes are never queued
    /// behind a whole fleet's status (SQLite has one writer at a time).
    pub async fn put_proxies(&self, rows: &[ProxyRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(PROXY_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p: Vec<String> = (1..=8).map(|k| format!("${}", i * 8 + k)).collect();
                    format!("({})", p.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO proxies ({COLS}) VALUES {} \
                 ON CONFLICT (replica, stream_id) DO UPDATE SET heartbeat = excluded.heartbeat, status = excluded.status",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(&r.tenant)
                    .bind(&r.mesh)
                    .bind(&r.node)
                    .bind(&r.replica)
                    .bind(r.stream_id)
                    .bind(r.connected_since)
                    .bind(r.heartbeat)
                    .bind(r.status.to_string());
            }
            let _turn = self.write_turn().await;
            q.execute(self.pool()).await?;
        }
        Ok(())
    }

    /// Removes the rows of streams that ended.
    pub async fn delete_proxies(
        &self,
        replica: &str,
        stream_ids: &[i64],
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool().begin().await?;
        for id in stream_ids {
            sqlx::query("DELETE FROM proxies WHERE replica = $1 AND stream_id = $2")
                .bind(replica)
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Refreshes the heartbeat of every row of a replica, and drops rows of dead replicas.
    pub async fn heartbeat_proxies(&self, replica: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let _turn = self.write_turn().await;
        sqlx::query("UPDATE proxies SET heartbeat = $1 WHERE replica = $2")
            .bind(now)
            .bind(replica)
            .execute(self.pool())
            .await?;
        sqlx::query("DELETE FROM proxies WHERE heartbeat < $1")
            .bind(now - PROXY_STALE_MS)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Removes every row of a replica (at start-up and clean shutdown).
    pub async fn clear_replica_proxies(&self, replica: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM proxies WHERE replica = $1")
            .bind(replica)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// `(tenant, mesh, node)` of every node with a live stream on any replica.
    pub async fn live_nodes(
        &self,
    ) -> Result<std::collections::HashSet<(String, String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT tenant, mesh, node FROM proxies WHERE heartbeat >= $1")
                .bind(now_ms() - PROXY_STALE_MS)
                .fetch_all(self.pool())
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("tenant")?, r.try_get("mesh")?, r.try_get("node")?)))
            .collect()
    }

    /// The live streams of a mesh, or of one node of it, ordered by node and connection time.
    pub async fn list_proxies(
        &self,
        tenant: &str,
        mesh: &str,
        node: Option<&str>,
    ) -> Result<Vec<ProxyRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM proxies WHERE tenant = $1 AND mesh = $2 AND ($3 = '' OR node = $3) AND heartbeat >= $4 \
             ORDER BY node, connected_since, replica, stream_id"
        ))
        .bind(tenant)
        .bind(mesh)
        .bind(node.unwrap_or(""))
        .bind(now_ms() - PROXY_STALE_MS)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok(ProxyRow {
                    tenant: r.try_get("tenant")?,
                    mesh: r.try_get("mesh")?,
                    node: r.try_get("node")?,
                    replica: r.try_get("replica")?,
                    stream_id: r.try_get("stream_id")?,
                    connected_since: r.try_get("connected_since")?,
                    heartbeat: r.try_get("heartbeat")?,
                    status: serde_json::from_str(&status)
                        .map_err(|e| StoreError::Corrupt(format!("proxy status: {e}")))?,
                })
            })
            .collect()
    }
}
