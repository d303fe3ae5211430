//! Rollbacks: a resource, or a whole mesh, written back to what it was at an earlier
//! revision ([`crate::history`] says what that was). Each is an ordinary write (the single
//! write's path, or one batch for a mesh), so it is checked like any other and is itself a
//! new revision.
//!
//! History keeps specs, not labels: a rollback writes a spec back and leaves the labels the
//! resource has now (one that the rollback creates again has none, so `apply --prune` no
//! longer treats it as its own until `apply` writes it again).

use super::WriteOptions;
use super::many::{BatchError, BatchOptions, BatchOutcome, BatchWrite};
use crate::{ResourceKey, Store, StoreError, StoredResource};
use switchboard_model::{Kind, Spec};
use switchboard_pki::SealedCa;

/// How often a mesh rollback plans again when the tenant moved while it planned.
const PLAN_ATTEMPTS: usize = 5;

/// What a resource rollback wrote.
#[derive(Debug, Clone)]
pub struct Rollback {
    /// As written; as it was, when the rollback deleted it.
    pub resource: StoredResource,
    /// The resource did not exist at the revision, so the rollback deleted it.
    pub deleted: bool,
}

/// A spec kept in history, parsed (one this version cannot read is corrupt).
fn parse(kind: Kind, name: &str, json: serde_json::Value) -> Result<Spec, StoreError> {
    Spec::parse(kind, json)
        .map_err(|e| StoreError::Corrupt(format!("{kind} {name:?} in history: {e}")))
}

impl Store {
    /// Writes the resource back to its spec at `to_revision`, or deletes it if it did not
    /// exist then. A mesh written back without a CA gets `ca` (sealed), as
    /// [`Store::put_mesh_with_ca`] does.
    pub async fn rollback(
        &self,
        key: &ResourceKey,
        to_revision: i64,
        opts: &WriteOptions,
        ca: Option<&SealedCa>,
    ) -> Result<Rollback, StoreError> {
        match self.resource_at(key, to_revision).await? {
            Some(json) => {
                let spec = parse(key.kind, &key.name, json)?;
                let labels = match self.get(key).await {
                    Ok(now) => now.labels,
                    Err(StoreError::NotFound { .. }) => Default::default(),
                    Err(e) => return Err(e),
                };
                let opts = &WriteOptions {
                    labels,
                    ..opts.clone()
                };
                let resource = match (key.kind, ca) {
                    (Kind::Mesh, Some(ca)) => {
                        self.put_mesh_with_ca(&key.tenant, &key.name, &spec, opts, ca)
                            .await?
                    }
                    _ => {
                        self.put_spec(&key.tenant, &key.mesh, &key.name, &spec, opts)
                            .await?
                    }
                };
                Ok(Rollback {
                    resource,
                    deleted: false,
                })
            }
            None => match self.delete(key, opts).await {
                Ok(resource) => Ok(Rollback {
                    resource,
                    deleted: true,
                }),
                Err(StoreError::NotFound { what, .. }) if what == key.kind.singular() => {
                    Err(StoreError::AbsentAt {
                        kind: key.kind,
                        name: key.name.clone(),
                        revision: to_revision,
                    })
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Writes the whole mesh back to what it was at `to_revision`, in one transaction at one
    /// new revision: what was created since is deleted, what changed is written back, what
    /// was deleted is created again (in the order of what refers to what, as
    /// [`Store::write_many`] runs it). Nothing is written when the mesh is as it was then
    /// (the outcome has no revision). A mesh written back without a CA gets `ca`.
    pub async fn rollback_mesh(
        &self,
        tenant: &str,
        mesh: &str,
        to_revision: i64,
        opts: &BatchOptions,
        ca: Option<&SealedCa>,
    ) -> Result<BatchOutcome, BatchError> {
        for _ in 0..PLAN_ATTEMPTS {
            let at = self
                .mesh_at(tenant, mesh, to_revision)
                .await
                .map_err(BatchError::whole)?;
            let existed = at
                .resources
                .iter()
                .any(|(key, _, then)| key.kind == Kind::Mesh && then.is_some());
            if !existed {
                return Err(BatchError::whole(StoreError::AbsentAt {
                    kind: Kind::Mesh,
                    name: mesh.into(),
                    revision: to_revision,
                }));
            }
            let mut labels = self
                .labels_in(tenant, mesh)
                .await
                .map_err(BatchError::whole)?;
            let mut writes = Vec::new();
            for (key, now, then) in at.resources {
                match (now, then) {
                    (now, Some(then)) if now.as_ref() != Some(&then) => {
                        let spec = parse(key.kind, &key.name, then).map_err(BatchError::whole)?;
                        let labels = labels
                            .remove(&(key.kind, key.name.clone()))
                            .unwrap_or_default();
                        writes.push(BatchWrite::Put {
                            mesh: key.mesh,
                            name: key.name,
                            spec: Box::new(spec),
                            labels,
                            ca: (key.kind == Kind::Mesh)
                                .then(|| ca.cloned().map(Box::new))
                                .flatten(),
                        });
                    }
                    (Some(_), None) => {
                        writes.push(BatchWrite::delete(&key.mesh, key.kind, &key.name))
                    }
                    _ => {}
                }
            }
            let planned = BatchOptions {
                if_revision: Some(at.read_at),
                ..opts.clone()
            };
            match self.write_many(tenant, writes, &planned).await {
                Err(BatchError {
                    at: None,
                    error: StoreError::RevisionMoved,
                }) => continue,
                done => return done,
            }
        }
        Err(BatchError::whole(StoreError::RevisionMoved))
    }
}
