//! Per-proxy status for the REST API, across replicas.
//!
//! Each replica writes its own streams' status to the store (only what changed, every
//! [`SYNC_INTERVAL`], with a heartbeat), so any replica's API can list every proxy of a mesh.
//! What a node is being sent is taken from the local registry when the node's stream is here
//! (exactly what was sent), and otherwise recomputed from the mesh's current snapshot and the
//! node's recorded role and subscriptions (the translator is pure, so both agree).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_store::{
    AckedRecord, CertificateRecord, NackRecord, PROXY_CHUNK, ProxyRoleRecord, ProxyRow,
    ProxyStatusRecord, SentRecord, Store, TypeState, TypeStatusRecord,
};
use switchboard_translator::{NodeRole, SidecarParams, XdsResource, translate};
use switchboard_xds_proto::{ResourceType, any_to_json};

use crate::node::node_role;
use crate::protocol::Resources;
use crate::sds::CertificateInfo;
use crate::snapshot::{MeshSnapshot, mesh_config};
use crate::status::{ClientState, ProxyRegistry, ProxyStatus, TypeStatus};
use crate::view::NodeView;
use crate::{SnapshotCache, XdsServer};

/// How often changed statuses are written.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// How often a replica refreshes its rows' heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] switchboard_store::StoreError),
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn role_record(role: &NodeRole) -> ProxyRoleRecord {
    match role {
        NodeRole::Proxyless => ProxyRoleRecord::Proxyless,
        NodeRole::Sidecar(p) => ProxyRoleRecord::Sidecar {
            service: p.service.clone(),
            inbound_port: p.inbound_port,
            app_port: p.app_port,
            outbound_port: Some(p.outbound_port),
        },
        NodeRole::Gateway { name } => ProxyRoleRecord::Gateway {
            gateway: name.clone(),
        },
    }
}

pub(crate) fn role_from_record(r: &ProxyRoleRecord) -> NodeRole {
    match r {
        ProxyRoleRecord::Sidecar {
            service,
            inbound_port,
            app_port,
            outbound_port,
        } => NodeRole::Sidecar(SidecarParams {
            service: service.clone(),
            inbound_port: *inbound_port,
            app_port: *app_port,
            outbound_port: outbound_port.unwrap_or(switchboard_translator::names::OUTBOUND_PORT),
        }),
        ProxyRoleRecord::Gateway { gateway } => NodeRole::Gateway {
            name: gateway.clone(),
        },
        ProxyRoleRecord::Proxyless => NodeRole::Proxyless,
    }
}

fn type_state(s: ClientState) -> TypeState {
    match s {
        ClientState::Requested => TypeState::Requested,
        ClientState::Pending => TypeState::Pending,
        ClientState::Acked => TypeState::Acked,
        ClientState::Nacked => TypeState::Nacked,
    }
}

fn type_record(t: ResourceType, s: &TypeStatus) -> TypeStatusRecord {
    TypeStatusRecord {
        type_name: t.short_name().to_owned(),
        type_url: t.type_url().to_owned(),
        state: type_state(s.state()),
        wildcard: s.wildcard,
        names: s.names.clone(),
        sent: s.sent.as_ref().map(|x| SentRecord {
            version: x.version.clone(),
            nonce: x.nonce.clone(),
            revision: x.revision,
            time: ms(x.time),
        }),
        acked: s.acked.as_ref().map(|x| AckedRecord {
            version: x.version.clone(),
            revision: x.revision,
            time: ms(x.time),
        }),
        nack: s.nack.as_ref().map(|x| NackRecord {
            version: x.version.clone(),
            revision: x.revision,
            error: x.message.clone(),
            resources: x.names.clone(),
            time: ms(x.time),
        }),
    }
}

/// A certificate's public facts as stored and shown (`notAfter` in RFC 3339).
fn certificate_record(c: &CertificateInfo) -> CertificateRecord {
    let not_after = time::OffsetDateTime::from(c.not_after)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    CertificateRecord {
        serial: c.serial.clone(),
        spiffe_id: c.spiffe_id.clone(),
        not_after,
    }
}

/// The status of one stream as stored and shown.
pub fn status_record(s: &ProxyStatus) -> ProxyStatusRecord {
    let role = node_role(&s.node).unwrap_or(NodeRole::Proxyless);
    let agent = format!("{} {}", s.node.user_agent_name, match &s.node.user_agent_version_type {
        Some(switchboard_xds_proto::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        _ => String::new(),
    });
    ProxyStatusRecord {
        role: s.role.clone(),
        role_spec: role_record(&role),
        service: s.service.to_owned(),
        authenticated: s.authenticated,
        user_agent: agent.trim().to_owned(),
        types: s.types.iter().map(|(t, st)| type_record(*t, st)).collect(),
        certificate: s.certificate.as_ref().map(certificate_record),
        acked_revision: s.acked_revision,
    }
}

fn row(replica: &str, s: &ProxyStatus) -> ProxyRow {
    ProxyRow {
        tenant: s.node_id.tenant.clone(),
        mesh: s.node_id.mesh.clone(),
        node: s.node_id.name.clone(),
        replica: replica.to_owned(),
        stream_id: i64::try_from(s.stream_id).unwrap_or(i64::MAX),
        connected_since: ms(s.connected_since),
        heartbeat: ms(SystemTime::now()),
        status: status_record(s),
    }
}

/// The task that writes status changes to the store until dropped. A failed write is retried
/// at the next tick; the registry keeps the truth meanwhile.
///
/// The rows are built and written [`PROXY_CHUNK`] at a time: when a whole fleet ACKs a
/// change, building every row first would hold a copy of every stream's status at once (tens
/// of MiB at 10,000 streams, raising the peak that the allocator then keeps).
pub async fn status_sync(store: Store, registry: ProxyRegistry, replica: String) {
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heartbeat = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let (updated, ended) = registry.take_changes();
        if let Err((unwritten, e)) =
            write_changes(&store, &registry, &replica, &updated, &ended).await
        {
            tracing::warn!(error = %e, "cannot record proxy status; will retry");
            registry.retry_changes(unwritten.iter().copied(), ended);
            continue;
        }
        if last_heartbeat.elapsed() >= HEARTBEAT_INTERVAL {
            last_heartbeat = tokio::time::Instant::now();
            if let Err(e) = store.heartbeat_proxies(&replica).await {
                tracing::warn!(error = %e, "cannot refresh proxy status heartbeat");
            }
        }
    }
}

/// Writes the rows of the `updated` streams a chunk at a time, then marks the `ended` ones.
/// On an error, the ids not written yet.
async fn write_changes<'a>(
    store: &Store,
    registry: &ProxyRegistry,
    replica: &str,
    updated: &'a [u64],
    ended: &[u64],
) -> Result<(), (&'a [u64], switchboard_store::StoreError)> {
    for (i, chunk) in updated.chunks(PROXY_CHUNK).enumerate() {
        let rows = registry.map(chunk, |s| row(replica, s));
        if let Err(e) = store.put_proxies(&rows).await {
            return Err((&updated[i * PROXY_CHUNK..], e));
        }
    }
    let ended_ids: Vec<i64> = ended
        .iter()
        .filter_map(|id| i64::try_from(*id).ok())
        .collect();
    if !ended_ids.is_empty() {
        store
            .end_proxies(replica, &ended_ids)
            .await
            .map_err(|e| (&updated[updated.len()..], e))?;
    }
    Ok(())
}

/// The JSON of a list of resources.
/// Proto3 JSON of `resources`, secrets without their private key (a recomputed view may
/// hold a gateway's uploaded certificate).
fn render(resources: &[Arc<XdsResource>]) -> Vec<Value> {
    resources
        .iter()
        .map(crate::sds::secrets::redact)
        .map(|r| {
            any_to_json(&r.any())
                .unwrap_or_else(|e| json!({"name": r.name, "error": e.to_string()}))
        })
        .collect()
}

async fn current_snapshot(
    cache: &SnapshotCache,
    store: &Store,
    trust_domain: &str,
    tenant: &str,
    mesh: &str,
) -> Result<Arc<MeshSnapshot>, ReportError> {
    if let Some(s) = cache.current(tenant, mesh) {
        return Ok(s);
    }
    let stored = store.mesh_snapshot(tenant, mesh).await?;
    let (config, _) = mesh_config(&stored, trust_domain);
    let resources = translate(&config);
    Ok(Arc::new(MeshSnapshot::new(&config, resources, None)))
}

impl XdsServer {
    /// What a node is being sent, per type, as proto3 JSON; `None` when the node has no live
    /// stream on any replica.
    pub async fn node_config(
        &self,
        tenant: &str,
        mesh: &str,
        node: &str,
    ) -> Result<Option<Value>, ReportError> {
        let local = self.registry().resources(tenant, mesh, node);
        let per_type: BTreeMap<ResourceType, Vec<Arc<XdsResource>>> = if !local.is_empty() {
            local
        } else {
            let rows = self.store().list_proxies(tenant, mesh, Some(node)).await?;
            let Some(latest) = rows.iter().max_by_key(|r| r.connected_since) else {
                return Ok(None);
            };
            let snapshot = current_snapshot(
                self.cache(),
                self.store(),
                &self.config.trust_domain,
                tenant,
                mesh,
            )
            .await?;
            // Recomputed, a view holds no `default` (its key is only in the stream's replica);
            // an authenticated node's shows `ROOTCA`.
            let mut view = NodeView::new(snapshot, role_from_record(&latest.status.role_spec));
            if latest.status.authenticated {
                view = view.with_secrets();
            }
            let mut out = BTreeMap::new();
            for t in &latest.status.types {
                let Some(rt) = ResourceType::from_short_name(&t.type_name) else {
                    continue;
                };
                let resources: Vec<Arc<XdsResource>> = if t.wildcard {
                    view.wildcard(rt).cloned().collect()
                } else {
                    t.names
                        .iter()
                        .filter_map(|n| view.get(rt, n).cloned())
                        .collect()
                };
                out.insert(rt, resources);
            }
            out
        };
        Ok(Some(json!({
            "node": node,
            "types": per_type.iter().map(|(t, rs)| json!({"type": t.short_name(), "typeUrl": t.type_url(), "resources": render(rs)})).collect::<Vec<_>>(),
        })))
    }
}
