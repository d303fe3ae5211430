//! Per-stream xDS status rows. Each replica writes its own streams' rows (keyed by replica and
//! stream id) and refreshes a heartbeat; rows whose heartbeat is older than
//! [`PROXY_STALE_MS`] belong to a replica that died and are not shown as connected. A stream
//! that ends is marked `disconnected_at` rather than deleted, and every row goes once its
//! heartbeat is [`PROXY_GONE_MS`] old, so the rollout view can say which proxies left and
//! since when.

use crate::{Store, StoreError, now_ms};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// A row older than this (no heartbeat) is from a replica that is gone.
pub const PROXY_STALE_MS: i64 = 60_000;

/// How long the row of a stream that ended (or of a replica that died) is kept, for the
/// rollout view's "disconnected since".
pub const PROXY_GONE_MS: i64 = 600_000;

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
    /// What the xDS server reports about the stream.
    pub status: ProxyStatusRecord,
}

/// The status of one stream as the xDS server writes it and the REST API shows it (the
/// `status` column holds its JSON). Every field has a default so that rows written by an
/// older version, with fields missing, still read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyStatusRecord {
    /// "proxyless", "sidecar of {service}", "gateway {name}".
    pub role: String,
    pub role_spec: ProxyRoleRecord,
    /// "ADS", or the single-type service ("CDS", ...).
    pub service: String,
    /// Whether the stream presented a proxy token.
    pub authenticated: bool,
    pub user_agent: String,
    pub types: Vec<TypeStatusRecord>,
    /// The workload certificate (SDS `default`) last sent to the proxy; public facts only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateRecord>,
    /// The mesh revision the stream has everything for: every response owed for the
    /// snapshot of that revision was sent and ACKed (a type left unchanged by later
    /// revisions keeps its older `acked.revision`, so this is the one figure to compare).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked_revision: Option<i64>,
}

/// A workload certificate as status shows it. Never the key: keys are not stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CertificateRecord {
    /// Hex serial number.
    pub serial: String,
    pub spiffe_id: String,
    /// RFC 3339.
    pub not_after: String,
}

/// The node's role, as needed to recompute what it is sent on another replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ProxyRoleRecord {
    #[serde(rename_all = "camelCase")]
    Sidecar {
        #[serde(default)]
        service: String,
        #[serde(default)]
        inbound_port: u32,
        #[serde(default)]
        app_port: u32,
        /// Missing in rows of versions before it was recorded: the reader picks the default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outbound_port: Option<u32>,
    },
    Gateway {
        #[serde(default)]
        gateway: String,
    },
    /// Also what an unknown kind reads as, as before the record was typed.
    #[default]
    #[serde(other)]
    Proxyless,
}

/// Where one resource type of a stream stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TypeStatusRecord {
    /// The short name ("CDS", "LDS", ...).
    #[serde(rename = "type")]
    pub type_name: String,
    pub type_url: String,
    pub state: TypeState,
    pub wildcard: bool,
    pub names: Vec<String>,
    pub sent: Option<SentRecord>,
    pub acked: Option<AckedRecord>,
    pub nack: Option<NackRecord>,
}

/// Mirrors the xDS server's client state; written upper case as the API shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TypeState {
    #[default]
    Requested,
    Pending,
    Acked,
    Nacked,
}

/// The latest response sent (times in Unix ms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SentRecord {
    pub version: String,
    pub nonce: String,
    pub revision: i64,
    pub time: i64,
}

/// The latest ACK.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AckedRecord {
    pub version: String,
    pub revision: i64,
    pub time: i64,
}

/// The latest NACK: the client's error and the resources of the rejected response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NackRecord {
    pub version: String,
    pub revision: i64,
    pub error: String,
    pub resources: Vec<String>,
    pub time: i64,
}

const COLS: &str = "tenant, mesh, node, replica, stream_id, connected_since, heartbeat, status";

/// One stream of a mesh as the rollout view needs it: live or gone, what it has ACKed, and
/// (only for a stream behind the revision asked about) its status, to say why.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub node: String,
    pub replica: String,
    pub stream_id: i64,
    pub connected_since: i64,
    /// When the stream ended; `None` while its replica holds it (or until its replica's
    /// heartbeat goes stale, see [`RolloutRow::gone_since`]).
    pub disconnected_at: Option<i64>,
    pub heartbeat: i64,
    pub acked_revision: i64,
    /// Only for streams with `acked_revision` below the revision asked about.
    pub status: Option<ProxyStatusRecord>,
}

impl RolloutRow {
    /// When the stream stopped being served (Unix ms), `None` while it is: its end, or the
    /// last heartbeat of a replica that died.
    pub fn gone_since(&self, now_ms: i64) -> Option<i64> {
        match self.disconnected_at {
            Some(at) => Some(at),
            None if self.heartbeat < now_ms - PROXY_STALE_MS => Some(self.heartbeat),
            None => None,
        }
    }
}

impl Store {
    /// Writes (inserts or replaces) the rows of one replica's streams, in chunks of
    /// [`PROXY_CHUNK`] rows per transaction so that configuration writes are never queued
    /// behind a whole fleet's status (SQLite has one writer at a time).
    pub async fn put_proxies(&self, rows: &[ProxyRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(PROXY_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p: Vec<String> = (1..=9).map(|k| format!("${}", i * 9 + k)).collect();
                    format!("({})", p.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO proxies ({COLS}, acked_revision) VALUES {} \
                 ON CONFLICT (replica, stream_id) DO UPDATE SET heartbeat = excluded.heartbeat, \
                 status = excluded.status, acked_revision = excluded.acked_revision",
                values.join(", ")
            );
            let statuses = chunk
                .iter()
                .map(|r| serde_json::to_string(&r.status))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Corrupt(format!("cannot encode a proxy status: {e}")))?;
            // Not kept prepared: its text differs with the number of rows (1 to
            // PROXY_CHUNK), and a cached statement per row count on every connection stayed
            // in the process after a fleet's status had been written (10 s after 25,000
            // streams closed: 1.21x the RSS of one stream on SQLite, 1.13x without the cache).
            let mut q = sqlx::query(&sql).persistent(false);
            for (r, status) in chunk.iter().zip(statuses) {
                q = q
                    .bind(&r.tenant)
                    .bind(&r.mesh)
                    .bind(&r.node)
                    .bind(&r.replica)
                    .bind(r.stream_id)
                    .bind(r.connected_since)
                    .bind(r.heartbeat)
                    .bind(status)
                    .bind(r.status.acked_revision.unwrap_or(0));
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

    /// Marks the rows of streams that ended as disconnected (now); they are shown no more as
    /// connected, and go with [`Store::heartbeat_proxies`]' sweep after [`PROXY_GONE_MS`].
    pub async fn end_proxies(&self, replica: &str, stream_ids: &[i64]) -> Result<(), StoreError> {
        let now = now_ms();
        let _turn = self.write_turn().await;
        let mut tx = self.pool().begin().await?;
        for id in stream_ids {
            sqlx::query(
                "UPDATE proxies SET disconnected_at = $1 \
                 WHERE replica = $2 AND stream_id = $3 AND disconnected_at IS NULL",
            )
            .bind(now)
            .bind(replica)
            .bind(*id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Refreshes the heartbeat of a replica's live rows, and drops rows whose heartbeat is
    /// [`PROXY_GONE_MS`] old (streams that ended, replicas that died).
    pub async fn heartbeat_proxies(&self, replica: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let _turn = self.write_turn().await;
        sqlx::query(
            "UPDATE proxies SET heartbeat = $1 WHERE replica = $2 AND disconnected_at IS NULL",
        )
        .bind(now)
        .bind(replica)
        .execute(self.pool())
        .await?;
        sqlx::query("DELETE FROM proxies WHERE heartbeat < $1")
            .bind(now - PROXY_GONE_MS)
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
        let rows = sqlx::query(
            "SELECT DISTINCT tenant, mesh, node FROM proxies \
             WHERE disconnected_at IS NULL AND heartbeat >= $1",
        )
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
            "SELECT {COLS} FROM proxies WHERE tenant = $1 AND mesh = $2 AND ($3 = '' OR node = $3) \
             AND disconnected_at IS NULL AND heartbeat >= $4 \
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

impl Store {
    /// Every stream of a mesh still on record (live, ended or of a dead replica, within
    /// [`PROXY_GONE_MS`]), ordered by node; the status is read only for streams whose
    /// `acked_revision` is below `revision`, so a mesh of thousands of proxies that are all
    /// current costs a few columns per stream.
    pub async fn rollout_rows(
        &self,
        tenant: &str,
        mesh: &str,
        revision: i64,
    ) -> Result<Vec<RolloutRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT node, replica, stream_id, connected_since, disconnected_at, heartbeat, \
             acked_revision, CASE WHEN acked_revision < $3 THEN status ELSE '' END AS behind \
             FROM proxies WHERE tenant = $1 AND mesh = $2 \
             ORDER BY node, connected_since, replica, stream_id",
        )
        .bind(tenant)
        .bind(mesh)
        .bind(revision)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let behind: String = r.try_get("behind")?;
                let status = if behind.is_empty() {
                    None
                } else {
                    Some(
                        serde_json::from_str(&behind)
                            .map_err(|e| StoreError::Corrupt(format!("proxy status: {e}")))?,
                    )
                };
                Ok(RolloutRow {
                    node: r.try_get("node")?,
                    replica: r.try_get("replica")?,
                    stream_id: r.try_get("stream_id")?,
                    connected_since: r.try_get("connected_since")?,
                    disconnected_at: r.try_get("disconnected_at")?,
                    heartbeat: r.try_get("heartbeat")?,
                    acked_revision: r.try_get("acked_revision")?,
                    status,
                })
            })
            .collect()
    }

    /// The latest revision at or before `revision` that changed `mesh` (its spec, its CA or
    /// anything in it), or 0: the revision a proxy of the mesh must have ACKed to have
    /// everything `revision` means for it, since revisions count the tenant's writes and
    /// most do not touch a given mesh. From the change log and, for what it no longer holds,
    /// the revisions of the mesh's current resources (a delete older than the log's
    /// retention is not seen).
    pub async fn mesh_revision_at(
        &self,
        tenant: &str,
        mesh: &str,
        revision: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT MAX(r) AS r FROM ( \
               SELECT MAX(revision) AS r FROM changes WHERE tenant = $1 AND revision <= $3 \
                 AND (mesh = $2 OR (mesh = '' AND kind = $4 AND name = $2)) \
               UNION ALL \
               SELECT MAX(revision) AS r FROM resources WHERE tenant = $1 AND revision <= $3 \
                 AND (mesh = $2 OR (mesh = '' AND kind = $4 AND name = $2)) \
             ) AS t",
        )
        .bind(tenant)
        .bind(mesh)
        .bind(revision)
        .bind(switchboard_model::Kind::Mesh.plural())
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get::<Option<i64>, _>("r")?.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A row as the untyped writer wrote it reads back whole, and writes back the same JSON.
    #[test]
    fn reads_and_writes_the_stored_shape() {
        let stored = json!({
            "role": "sidecar of pay",
            "roleSpec": {"kind": "sidecar", "service": "pay", "inboundPort": 15006, "appPort": 8080, "outboundPort": 15001},
            "service": "ADS",
            "authenticated": true,
            "userAgent": "envoy 1.30",
            "types": [{
                "type": "CDS",
                "typeUrl": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "state": "NACKED",
                "wildcard": true,
                "names": [],
                "sent": {"version": "v2", "nonce": "n2", "revision": 7, "time": 1000},
                "acked": {"version": "v1", "revision": 6, "time": 900},
                "nack": {"version": "v2", "revision": 7, "error": "bad", "resources": ["pay"], "time": 1001},
            }, {
                "type": "EDS",
                "typeUrl": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "state": "REQUESTED",
                "wildcard": false,
                "names": ["pay"],
                "sent": null,
                "acked": null,
                "nack": null,
            }],
        });
        let record: ProxyStatusRecord = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(
            record.role_spec,
            ProxyRoleRecord::Sidecar {
                service: "pay".into(),
                inbound_port: 15006,
                app_port: 8080,
                outbound_port: Some(15001),
            }
        );
        assert_eq!(record.types[0].state, TypeState::Nacked);
        assert_eq!(record.types[1].names, ["pay"]);
        assert_eq!(serde_json::to_value(&record).unwrap(), stored);
    }

    /// Fields an older version did not write read as their defaults.
    #[test]
    fn missing_fields_read_as_defaults() {
        let record: ProxyStatusRecord = serde_json::from_value(json!({
            "role": "sidecar of pay",
            "roleSpec": {"kind": "sidecar", "service": "pay", "inboundPort": 15006},
            "types": [{"type": "LDS", "wildcard": true}],
        }))
        .unwrap();
        assert_eq!(
            record.role_spec,
            ProxyRoleRecord::Sidecar {
                service: "pay".into(),
                inbound_port: 15006,
                app_port: 0,
                outbound_port: None,
            }
        );
        assert!(!record.authenticated);
        assert_eq!(record.types[0].type_name, "LDS");
        assert!(record.types[0].sent.is_none());
        let empty: ProxyStatusRecord = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty, ProxyStatusRecord::default());
        for role in [
            json!({"kind": "proxyless"}),
            json!({"kind": "something-new"}),
        ] {
            let r: ProxyRoleRecord = serde_json::from_value(role).unwrap();
            assert_eq!(r, ProxyRoleRecord::Proxyless);
        }
        let gw: ProxyRoleRecord = serde_json::from_value(json!({"kind": "gateway"})).unwrap();
        assert_eq!(
            gw,
            ProxyRoleRecord::Gateway {
                gateway: String::new()
            }
        );
    }
}
