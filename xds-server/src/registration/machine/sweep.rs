//! The sweep: deleting self-registered endpoints that no replica looks after.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use switchboard_store::{ResourceKey, StoreError, StoredResource};
use tokio::time::Instant;

use super::{Job, Machine, Triple};
use crate::node::NodeId;

/// How often a replica sweeps for registered endpoints that no replica looks after:
/// half the grace period, within 100 ms and 1 min.
pub(super) fn sweep_every(grace: Duration) -> Duration {
    (grace / 2).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// How long a node must be seen without a stream before its endpoint is swept: the grace
/// period, but never less than four status syncs, since a new stream's `proxies` row
/// appears up to one sync interval after the stream (and its endpoint) does.
pub(super) fn sweep_after(grace: Duration, status_sync: Duration) -> Duration {
    grace.max(status_sync * 4)
}

impl Machine {
    /// Picks the self-registered endpoints that no replica looks after: the node has no live
    /// stream on any replica, this replica is not running its grace period, and it has stayed
    /// so, at the same etag, for [`sweep_after`]. This is how an endpoint whose replica
    /// stopped during its grace period still goes. Every replica sweeps; `If-Match` makes the
    /// first delete win and the others find it gone.
    pub(super) fn sweep(
        &mut self,
        result: Result<(Vec<StoredResource>, HashSet<Triple>), StoreError>,
        now: Instant,
    ) {
        let (endpoints, live) = match result {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sweep for orphaned sidecar endpoints; retrying (hint: is the database reachable?)");
                return;
            }
        };
        let mut absent = HashMap::new();
        let mut deletes = Vec::new();
        for endpoint in endpoints {
            let Some(node) = endpoint.spec.get("node").and_then(|n| n.as_str()) else {
                continue;
            };
            let k = &endpoint.key;
            let node_id = NodeId {
                tenant: k.tenant.clone(),
                mesh: k.mesh.clone(),
                name: node.to_owned(),
            };
            if self.nodes.contains_key(&node_id)
                || live.contains(&(node_id.tenant, node_id.mesh, node_id.name))
            {
                continue;
            }
            let etag = endpoint.etag();
            let id = (k.tenant.clone(), k.mesh.clone(), k.name.clone());
            let since = match self.absent.remove(&id) {
                Some((since, seen)) if seen == etag => since,
                _ => now,
            };
            if now.saturating_duration_since(since) < self.sweep_after {
                absent.insert(id, (since, etag));
                continue;
            }
            deletes.push(Job::SweepDelete {
                key: endpoint.key.clone(),
                node: node.to_owned(),
                etag,
                since,
            });
        }
        self.absent = absent;
        for job in deletes.into_iter().rev() {
            self.agenda.push_front(job);
        }
    }

    pub(super) fn swept(
        &mut self,
        key: ResourceKey,
        node: &str,
        etag: String,
        since: Instant,
        result: Result<(), StoreError>,
    ) {
        match result {
            Ok(()) => {
                tracing::info!(
                    tenant = %key.tenant, mesh = %key.mesh, endpoint = %key.name, %node,
                    "deleted an orphaned sidecar endpoint: no replica has had a stream of \
                     its node for the grace period"
                );
            }
            Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(endpoint = %key.name, error = %e, "cannot delete an orphaned sidecar endpoint; retrying");
                self.absent
                    .insert((key.tenant, key.mesh, key.name), (since, etag));
            }
        }
    }
}
