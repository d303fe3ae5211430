//! A node's store work: writing its endpoint, and deleting it after the grace period.

use std::time::Duration;

use switchboard_model::Kind;
use switchboard_store::{PROXY_STALE_MS, ResourceKey, StoreError};
use tokio::time::Instant;

use super::{Action, Machine, Next, STORE_RETRY, UpsertError, Upserted};
use crate::node::NodeId;
use crate::registration::RETRY;

impl Machine {
    /// The call that registers `node`: first its tenant's revision, if its change log is
    /// not followed yet, then the write.
    pub(super) fn register(&mut self, node: &NodeId) -> Option<Action> {
        let Some(desired) = self.nodes.get(node).and_then(|e| e.desired()) else {
            self.set_next(node, Next::Idle);
            return None;
        };
        if !self.tenants.contains_key(&node.tenant) {
            return Some(Action::ReadRevision {
                tenant: node.tenant.clone(),
            });
        }
        Some(Action::Upsert {
            node: node.clone(),
            key: ResourceKey::new(&node.tenant, &node.mesh, Kind::Endpoint, &desired.name),
            spec: Box::new(desired.spec.clone()),
        })
    }

    pub(super) fn upserted(
        &mut self,
        node: &NodeId,
        result: Result<Upserted, UpsertError>,
        now: Instant,
    ) {
        let Some(entry) = self.nodes.get(node) else {
            return;
        };
        let was_missing = matches!(
            entry.next,
            Next::Register {
                missing_service: true,
                ..
            }
        );
        let (name, service) = match entry.desired() {
            Some(d) => (d.name.clone(), d.service().to_owned()),
            None => (entry.name.clone(), String::new()),
        };
        match result {
            Ok(Upserted::Unchanged(etag)) => {
                tracing::debug!(%node, endpoint = %name, "the sidecar's endpoint is up to date");
                self.registered(node, etag, now);
            }
            Ok(Upserted::Written(etag)) => {
                tracing::info!(%node, endpoint = %name, service, "registered the sidecar as an endpoint of its service");
                self.registered(node, etag, now);
            }
            Err(UpsertError::Store(StoreError::DanglingReference { .. })) => {
                if was_missing {
                    tracing::debug!(%node, service, "the sidecar's service still does not exist");
                } else {
                    tracing::warn!(
                        %node, service, mesh = %node.mesh,
                        "cannot register the sidecar as an endpoint: its service does not exist \
                         in the mesh; create the service (retrying when it appears, and every {}s)",
                        RETRY.as_secs()
                    );
                }
                self.set_next(
                    node,
                    Next::Register {
                        at: now + RETRY,
                        missing_service: true,
                    },
                );
            }
            Err(UpsertError::Store(StoreError::NotFound { what, .. })) => {
                // The mesh or tenant is gone; the node's streams are ending.
                tracing::debug!(%node, what, "not registering the sidecar: its mesh is gone");
                self.set_next(node, Next::Idle);
            }
            Err(UpsertError::Store(e)) => self.store_failed(node, &e, now),
            Err(e @ UpsertError::Contended) => {
                tracing::info!(%node, endpoint = %name, error = %e, "retrying the sidecar's registration");
                self.set_next(
                    node,
                    Next::Register {
                        at: now + STORE_RETRY,
                        missing_service: false,
                    },
                );
            }
        }
    }

    fn registered(&mut self, node: &NodeId, etag: String, now: Instant) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.etag = Some(etag);
            // A stream that ended while the write was out is handled here.
            entry.next = if entry.streams.is_empty() {
                Next::Deregister {
                    at: now + self.grace,
                    rechecked: false,
                }
            } else {
                Next::Idle
            };
        }
    }

    pub(super) fn store_failed(&mut self, node: &NodeId, e: &StoreError, now: Instant) {
        tracing::warn!(%node, error = %e, "cannot update the sidecar's endpoint; retrying (hint: is the database reachable?)");
        let at = now + STORE_RETRY;
        let next = match self.nodes.get(node).map(|e| e.next) {
            Some(Next::Deregister { rechecked, .. }) => Next::Deregister { at, rechecked },
            _ => Next::Register {
                at,
                missing_service: false,
            },
        };
        self.set_next(node, next);
    }

    /// The call that deregisters `node` once its grace period is over: first, whether it is
    /// connected to another replica.
    pub(super) fn deregister(&mut self, node: &NodeId) -> Option<Action> {
        let entry = self.nodes.get(node)?;
        if !entry.streams.is_empty() {
            self.set_next(node, Next::Idle);
            return None;
        }
        if entry.etag.is_none() {
            self.forget(node);
            return None;
        }
        Some(Action::ListReplicas { node: node.clone() })
    }

    pub(super) fn replicas(
        &mut self,
        node: &NodeId,
        result: Result<Vec<String>, StoreError>,
        now: Instant,
    ) -> Option<Action> {
        let entry = self.nodes.get(node)?;
        let Next::Deregister { rechecked, .. } = entry.next else {
            return None;
        };
        let etag = entry.etag.clone()?;
        let name = entry.name.clone();
        // Connected to another replica? Its rows are current to within a heartbeat.
        match result {
            Ok(replicas) if replicas.iter().any(|r| *r != self.replica) => {
                if rechecked {
                    tracing::info!(%node, endpoint = %name, "the sidecar is connected to another replica, which keeps its endpoint");
                    self.forget(node);
                } else {
                    // A replica that died leaves rows for a while: look again once they
                    // would have expired.
                    tracing::debug!(%node, "the sidecar is connected to another replica; checking again later");
                    self.set_next(
                        node,
                        Next::Deregister {
                            at: now + Duration::from_millis(PROXY_STALE_MS.unsigned_abs()),
                            rechecked: true,
                        },
                    );
                }
                None
            }
            Ok(_) => Some(Action::Delete {
                key: ResourceKey::new(&node.tenant, &node.mesh, Kind::Endpoint, &name),
                etag,
            }),
            Err(e) => {
                self.store_failed(node, &e, now);
                None
            }
        }
    }

    pub(super) fn deleted(&mut self, node: &NodeId, result: Result<(), StoreError>, now: Instant) {
        let Some(entry) = self.nodes.get(node) else {
            return;
        };
        let name = entry.name.clone();
        match result {
            Ok(()) => {
                tracing::info!(%node, endpoint = %name, grace = ?self.grace, "deregistered the sidecar: its stream has been gone for the grace period");
                self.forget(node);
            }
            Err(StoreError::PreconditionFailed {
                current: Some(current),
            }) => {
                tracing::info!(
                    %node, endpoint = %name, etag = %current,
                    "not deregistering the sidecar: its endpoint was replaced since it was \
                     registered (by a user or another replica), so it is theirs now"
                );
                self.forget(node);
            }
            Err(StoreError::PreconditionFailed { current: None } | StoreError::NotFound { .. }) => {
                tracing::debug!(%node, endpoint = %name, "the sidecar's endpoint is already gone");
                self.forget(node);
            }
            Err(e) => self.store_failed(node, &e, now),
        }
    }
}
