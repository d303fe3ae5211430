//! Several puts and deletes of one tenant in one transaction, at one revision: what an
//! import (and a multi-resource apply) needs, all or nothing.
//!
//! A batch runs alone under the tenant's lock ([`Store::begin_write`]), not in a group
//! commit: in a group, a write whose checks fail fails alone while the others commit, and a
//! batch must instead leave nothing behind when any of its writes fails. Each write is the
//! single-write path's own ([`PutWrite`], [`DeleteWrite`]), so a batch checks exactly what a
//! REST write checks (references, claims, quotas, rules between specs).

use super::Precondition;
use super::write::{DeleteWrite, PutEffect, PutWrite};
use crate::history::{HistoryOp, HistoryRow, Recorded};
use crate::{ChangeOp, ResourceKey, Store, StoreError, StoredResource, Timer};
use std::collections::HashMap;
use switchboard_model::{Kind, Labels, Spec};
use switchboard_pki::SealedCa;

/// The order in which a batch's puts run, so that what a spec refers to is written before
/// it: the mesh, then services and certificates (which refer to nothing), endpoints, routes
/// and policies (which refer to services), gateways (which refer to routes, services and
/// certificates). Deletes run after the puts, in the reverse order.
const PUT_ORDER: [Kind; 7] = [
    Kind::Mesh,
    Kind::Service,
    Kind::Certificate,
    Kind::Endpoint,
    Kind::Route,
    Kind::AuthorizationPolicy,
    Kind::Gateway,
];

/// Where `kind` comes in [`PUT_ORDER`]: a resource refers only to kinds that come before
/// its own. Exports list documents in this order, so a file reads top-down.
pub fn dependency_rank(kind: Kind) -> usize {
    rank(kind)
}

fn rank(kind: Kind) -> usize {
    PUT_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(PUT_ORDER.len())
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum BatchWrite {
    /// Create or replace `name` in `mesh` (ignored for a mesh). A mesh's `ca` (sealed) is
    /// written when the mesh has no CA yet, as [`Store::put_mesh_with_ca`] does.
    Put {
        mesh: String,
        name: String,
        spec: Box<Spec>,
        /// The labels it gets, in place of those it had.
        labels: Labels,
        ca: Option<Box<SealedCa>>,
    },
    /// Delete `name` (a mesh with everything in it), which must exist.
    Delete {
        mesh: String,
        kind: Kind,
        name: String,
    },
}

impl BatchWrite {
    pub fn put(mesh: &str, name: &str, spec: Spec) -> Self {
        BatchWrite::Put {
            mesh: mesh.into(),
            name: name.into(),
            spec: Box::new(spec),
            labels: Labels::new(),
            ca: None,
        }
    }

    /// This write with `labels` (for a put; a delete has none).
    pub fn labeled(mut self, with: Labels) -> Self {
        if let BatchWrite::Put { labels, .. } = &mut self {
            *labels = with;
        }
        self
    }

    pub fn delete(mesh: &str, kind: Kind, name: &str) -> Self {
        BatchWrite::Delete {
            mesh: mesh.into(),
            kind,
            name: name.into(),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            BatchWrite::Put { spec, .. } => spec.kind(),
            BatchWrite::Delete { kind, .. } => *kind,
        }
    }

    fn key(&self, tenant: &str) -> ResourceKey {
        match self {
            BatchWrite::Put { mesh, name, .. } | BatchWrite::Delete { mesh, name, .. } => {
                ResourceKey::new(tenant, mesh, self.kind(), name)
            }
        }
    }

    /// Where the write runs: puts first, by [`PUT_ORDER`], then deletes in reverse.
    fn order(&self) -> usize {
        match self {
            BatchWrite::Put { .. } => rank(self.kind()),
            BatchWrite::Delete { .. } => 2 * PUT_ORDER.len() - rank(self.kind()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct BatchOptions {
    /// Check everything, then roll back.
    pub dry_run: bool,
    /// Who writes, for the history (None: the control plane itself).
    pub actor: Option<crate::Actor>,
    /// Write only if the tenant is still at this revision ([`StoreError::RevisionMoved`]
    /// otherwise): for a batch planned from what was read at it (a mesh rollback).
    pub if_revision: Option<i64>,
}

/// What one write of a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEffect {
    Created,
    Updated,
    /// Stored with that very spec already: nothing written.
    Unchanged,
    Deleted,
}

impl BatchEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchEffect::Created => "created",
            BatchEffect::Updated => "updated",
            BatchEffect::Unchanged => "unchanged",
            BatchEffect::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BatchItem {
    pub effect: BatchEffect,
    /// As written (as it was, for a delete; as stored, when unchanged).
    pub resource: StoredResource,
}

#[derive(Debug, Clone)]
pub struct BatchOutcome {
    /// The tenant revision the batch committed at; None when nothing changed (nothing was
    /// committed, no revision taken) or for a dry run.
    pub revision: Option<i64>,
    /// One per write, in the order given.
    pub items: Vec<BatchItem>,
}

/// The write of a batch that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteAt {
    /// Its index in the batch as given.
    pub index: usize,
    pub kind: Kind,
    pub mesh: String,
    pub name: String,
}

/// Why a batch wrote nothing: `at` names the write at fault, unless the failure was the
/// batch's own (no such tenant, the database).
#[derive(Debug, thiserror::Error)]
#[error("{}{error}", describe(.at))]
pub struct BatchError {
    pub at: Option<WriteAt>,
    #[source]
    pub error: StoreError,
}

fn describe(at: &Option<WriteAt>) -> String {
    match at {
        Some(a) => format!("write {} ({} {:?}): ", a.index, a.kind, a.name),
        None => String::new(),
    }
}

impl BatchError {
    pub(crate) fn whole(error: StoreError) -> Self {
        BatchError { at: None, error }
    }
}

impl Store {
    /// Runs `writes` for `tenant` in one transaction at one new revision (one change-log row
    /// per resource, one notice), or not at all: the first write that fails rolls everything
    /// back, and the error names it. Puts whose spec is already stored write nothing; when
    /// nothing changes, nothing is committed and no revision is taken. Puts run before
    /// deletes, in the order of what refers to what ([`PUT_ORDER`]); the same resource may be
    /// written only once.
    pub async fn write_many(
        &self,
        tenant: &str,
        writes: Vec<BatchWrite>,
        opts: &BatchOptions,
    ) -> Result<BatchOutcome, BatchError> {
        let _t = Timer::start("write_many");
        let keys: Vec<ResourceKey> = writes.iter().map(|w| w.key(tenant)).collect();
        let at = |i: usize| WriteAt {
            index: i,
            kind: keys[i].kind,
            mesh: keys[i].mesh.clone(),
            name: keys[i].name.clone(),
        };
        let mut seen: HashMap<&ResourceKey, usize> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            if let Some(first) = seen.insert(key, i) {
                return Err(BatchError {
                    at: Some(at(i)),
                    error: StoreError::Incompatible {
                        field: "name".into(),
                        message: format!(
                            "{} {:?} is written twice in this batch (also write {first})",
                            key.kind, key.name
                        ),
                    },
                });
            }
        }
        let mut order: Vec<usize> = (0..writes.len()).collect();
        order.sort_by_key(|&i| writes[i].order());
        if writes.is_empty() {
            return Ok(BatchOutcome {
                revision: None,
                items: vec![],
            });
        }
        let resources_per_mesh = self.quota_defaults().resources_per_mesh;
        let mut slots: Vec<Option<BatchWrite>> = writes.into_iter().map(Some).collect();
        let mut items: Vec<Option<BatchItem>> = vec![None; slots.len()];
        let mut changed: Vec<usize> = vec![];
        let mut w = self.begin_write(tenant).await.map_err(BatchError::whole)?;
        if opts.if_revision.is_some_and(|r| r + 1 != w.revision) {
            let _ = self.finish_write(w, tenant, &[], &[], true).await;
            return Err(BatchError::whole(StoreError::RevisionMoved));
        }
        for i in order {
            let Some(write) = slots[i].take() else {
                continue;
            };
            let key = keys[i].clone();
            let ran = match write {
                BatchWrite::Put {
                    spec, labels, ca, ..
                } => {
                    let spec = *spec;
                    let json = spec.to_json();
                    let labels_text = match serde_json::to_string(&labels) {
                        Ok(text) => text,
                        Err(e) => {
                            let _ = self.finish_write(w, tenant, &[], &[], true).await;
                            return Err(BatchError {
                                at: Some(at(i)),
                                error: StoreError::Corrupt(format!("labels: {e}")),
                            });
                        }
                    };
                    let put = PutWrite {
                        key,
                        spec_text: json.to_string(),
                        spec: json,
                        labels,
                        labels_text,
                        refs: spec.references(),
                        claims: spec.claims(),
                        parsed: spec,
                        precondition: Precondition::None,
                        ca: ca.map(|c| *c),
                        resources_per_mesh,
                        backend: self.backend(),
                        actor: opts.actor.clone(),
                    };
                    put.run_if_changed(&mut w.tx, w.revision)
                        .await
                        .map(|(resource, effect)| {
                            let effect = match effect {
                                PutEffect::Created => BatchEffect::Created,
                                PutEffect::Updated => BatchEffect::Updated,
                                PutEffect::Unchanged => BatchEffect::Unchanged,
                            };
                            BatchItem { effect, resource }
                        })
                }
                BatchWrite::Delete { .. } => {
                    let delete = DeleteWrite {
                        key,
                        precondition: Precondition::None,
                        backend: self.backend(),
                        actor: opts.actor.clone(),
                    };
                    delete
                        .run(&mut w.tx, w.revision)
                        .await
                        .map(|(resource, _)| BatchItem {
                            effect: BatchEffect::Deleted,
                            resource,
                        })
                }
            };
            match ran {
                Ok(item) => {
                    if item.effect != BatchEffect::Unchanged {
                        changed.push(i);
                    }
                    items[i] = Some(item);
                }
                Err(e) => {
                    // Rolled back: nothing of the batch stays, not even the revision.
                    let _ = self.finish_write(w, tenant, &[], &[], true).await;
                    return Err(BatchError {
                        at: Some(at(i)),
                        error: e.into_inner(),
                    });
                }
            }
        }
        let commit = !opts.dry_run && !changed.is_empty();
        let revision = w.revision;
        let rows: Vec<(&str, Kind, &str, ChangeOp)> = changed
            .iter()
            .map(|&i| {
                let op = match items[i].as_ref().map(|it| it.effect) {
                    Some(BatchEffect::Deleted) => ChangeOp::Delete,
                    _ => ChangeOp::Put,
                };
                (
                    keys[i].mesh.as_str(),
                    keys[i].kind,
                    keys[i].name.as_str(),
                    op,
                )
            })
            .collect();
        // What history keeps: the spec each write stored, or its delete.
        let recorded: Vec<(usize, Recorded)> = changed
            .iter()
            .filter_map(|&i| {
                let item = items[i].as_ref()?;
                let (op, spec) = match item.effect {
                    BatchEffect::Created => {
                        (HistoryOp::Create, Some(item.resource.spec.to_string()))
                    }
                    BatchEffect::Updated => {
                        (HistoryOp::Update, Some(item.resource.spec.to_string()))
                    }
                    BatchEffect::Deleted => (HistoryOp::Delete, None),
                    BatchEffect::Unchanged => return None,
                };
                let actor = opts.actor.clone();
                Some((i, Recorded { op, spec, actor }))
            })
            .collect();
        let history: Vec<HistoryRow<'_>> = recorded
            .iter()
            .map(|(i, rec)| {
                let key = &keys[*i];
                (
                    revision,
                    key.mesh.as_str(),
                    key.kind,
                    key.name.as_str(),
                    rec,
                )
            })
            .collect();
        self.finish_write(w, tenant, &rows, &history, !commit)
            .await
            .map_err(BatchError::whole)?;
        let items = items
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                BatchError::whole(StoreError::Corrupt(
                    "a write of the batch did not run".into(),
                ))
            })?;
        Ok(BatchOutcome {
            revision: commit.then_some(revision),
            items,
        })
    }
}
