//! Per-stream xDS status rows. Each replica writes its own streams' rows (keyed by replica and
//! stream id) and refreshes a heartbeat; rows whose heartbeat is older than
//! [`PROXY_STALE_MS`] belong to a replica that died and are neither shown nor kept.

use crate::{Store, StoreError, now_ms};
use serde::{Deserialize, Serialize};
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
            let statuses = chunk
                .iter()
                .map(|r| serde_json::to_string(&r.status))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Corrupt(format!("cannot encode a proxy status: {e}")))?;
            let mut q = sqlx::query(&sql);
            for (r, status) in chunk.iter().zip(statuses) {
                q = q
                    .bind(&r.tenant)
                    .bind(&r.mesh)
                    .bind(&r.node)
                    .bind(&r.replica)
                    .bind(r.stream_id)
                    .bind(r.connected_since)
                    .bind(r.heartbeat)
                    .bind(status);
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
