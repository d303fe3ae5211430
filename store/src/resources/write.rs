//! The work of a resource write under the tenant's lock: its checks (reads only), then its
//! writes. The split is what lets a write share a transaction with others
//! ([`crate::group`]): a write whose checks fail has written nothing, so it fails alone.

use super::{BindKey, COLS, check_precondition, check_referrers, fetch, parse_stored_text, state};
use crate::batch::Batch;
use crate::group::{ChangeRow, JobError, Tx};
use crate::history::{HistoryOp, Recorded};
use crate::{Actor, Backend, ChangeOp, Referrer, ResourceKey, StoreError, StoredResource, now_ms};
use sqlx::Row;
use switchboard_model::{Claim, Kind, Reference, Spec};

/// What a put did (see [`PutWrite::run_if_changed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PutEffect {
    Created,
    Updated,
    Unchanged,
}

/// A create or replace, with everything it needs owned (it may run on the group's task).
pub(super) struct PutWrite {
    pub key: ResourceKey,
    pub parsed: Spec,
    pub spec: serde_json::Value,
    /// The spec's JSON text, serialised before the lock is taken.
    pub spec_text: String,
    /// The labels it gets, and their JSON text.
    pub labels: switchboard_model::Labels,
    pub labels_text: String,
    pub refs: Vec<Reference>,
    pub claims: Vec<Claim>,
    pub precondition: super::Precondition,
    /// For a mesh: its CA, written when it has none yet.
    pub ca: Option<switchboard_pki::SealedCa>,
    /// The server's default `resourcesPerMesh` quota, for a tenant that has none of its own.
    pub resources_per_mesh: u64,
    pub backend: Backend,
    /// Who writes, for the history.
    pub actor: Option<Actor>,
}

impl PutWrite {
    /// Checks, then writes at `revision`.
    pub async fn run(
        self,
        tx: &mut Tx,
        revision: i64,
    ) -> Result<(StoredResource, ChangeRow), JobError> {
        let (found, needs_ca) = self.check(tx).await.map_err(JobError::check)?;
        let stored = self
            .write(tx, revision, &found, needs_ca)
            .await
            .map_err(JobError::Fatal)?;
        let op = match found.existing {
            Some(_) => HistoryOp::Update,
            None => HistoryOp::Create,
        };
        let change = (
            self.key.mesh.clone(),
            self.key.kind,
            self.key.name.clone(),
            ChangeOp::Put,
            Some(Box::new(Recorded {
                op,
                spec: Some(self.spec_text),
                actor: self.actor,
            })),
        );
        Ok((stored, change))
    }

    /// [`run`](Self::run), except that a resource stored with this very spec (and, for a
    /// mesh, already holding a CA) is left alone: [`PutEffect::Unchanged`] with the stored
    /// resource, and nothing written. What a batch ([`super::many`]) needs, so that applying
    /// the same file twice writes nothing.
    pub async fn run_if_changed(
        self,
        tx: &mut Tx,
        revision: i64,
    ) -> Result<(StoredResource, PutEffect), JobError> {
        let (found, needs_ca) = self.check(tx).await.map_err(JobError::check)?;
        let effect = match &found.existing {
            Some(existing)
                if existing.spec == self.spec && existing.labels == self.labels && !needs_ca =>
            {
                return Ok((existing.clone(), PutEffect::Unchanged));
            }
            Some(_) => PutEffect::Updated,
            None => PutEffect::Created,
        };
        let stored = self
            .write(tx, revision, &found, needs_ca)
            .await
            .map_err(JobError::Fatal)?;
        Ok((stored, effect))
    }

    /// Reads and checks, writing nothing. Returns what it read and whether the mesh needs
    /// its CA written.
    async fn check(&self, tx: &mut Tx) -> Result<(state::Found, bool), StoreError> {
        let key = &self.key;
        // One round trip reads what the checks below need; they run under the lock, so they
        // are race-free.
        let found = state::read(tx, key, &self.refs, &self.claims).await?;
        if key.kind != Kind::Mesh && !found.mesh_exists {
            return Err(StoreError::NotFound {
                what: "mesh",
                name: key.mesh.clone(),
            });
        }
        check_precondition(&self.precondition, found.existing.as_ref(), key)?;
        // Read under the lock (and after earlier writes of the same group), so the quota
        // holds against concurrent creators on every replica.
        if found.existing.is_none() && key.kind != Kind::Mesh {
            crate::quotas::check_mesh_size(
                &key.tenant,
                &key.mesh,
                found.mesh_size,
                found.quota,
                self.resources_per_mesh,
            )?;
        }
        for r in &self.refs {
            let Some(target) = found.target(r) else {
                return Err(StoreError::DanglingReference {
                    field: r.field.clone(),
                    kind: r.kind,
                    name: r.name.clone(),
                });
            };
            if Spec::constrained_by(r.kind).contains(&key.kind) {
                let target = parse_stored_text(r.kind, &r.name, target)?;
                if let Some(e) = self.parsed.check_target(r, &target) {
                    return Err(StoreError::Incompatible {
                        field: e.field,
                        message: e.message,
                    });
                }
            }
        }
        if found.existing.is_some() {
            check_referrers(tx, key, &self.parsed).await?;
        }
        for c in &self.claims {
            if let Some((ok, on)) = found.owner(c)
                && (ok != key.kind.plural() || *on != key.name)
            {
                return Err(StoreError::Claimed {
                    field: c.field.clone(),
                    what: c.what,
                    value: c.value.clone(),
                    owner: on.clone(),
                });
            }
        }
        let needs_ca = match &self.ca {
            Some(_) => crate::ca_rows::cas_in(tx, &key.tenant, &key.name)
                .await?
                .is_empty(),
            None => false,
        };
        Ok((found, needs_ca))
    }

    /// Writes the resource, its references and claims, its mesh's size (one statement on
    /// PostgreSQL, [`crate::batch`]), and a new mesh's CA.
    async fn write(
        &self,
        tx: &mut Tx,
        revision: i64,
        found: &state::Found,
        needs_ca: bool,
    ) -> Result<StoredResource, StoreError> {
        let key = &self.key;
        let now = now_ms();
        let mut batch = Batch::new(self.backend);
        let create_time = match &found.existing {
            Some(old) => {
                batch
                    .push(tx, |p| {
                        format!(
                            "UPDATE resources SET spec = {}, labels = {}, revision = {}, \
                             update_time = {} \
                             WHERE tenant = {} AND mesh = {} AND kind = {} AND name = {}",
                            p.text(&self.spec_text),
                            p.text(&self.labels_text),
                            p.int(revision),
                            p.int(now),
                            p.text(&key.tenant),
                            p.text(&key.mesh),
                            p.text(key.kind.plural()),
                            p.text(&key.name),
                        )
                    })
                    .await?;
                old.create_time
            }
            None => {
                batch
                    .push(tx, |p| {
                        let values = [
                            p.text(&key.tenant),
                            p.text(&key.mesh),
                            p.text(key.kind.plural()),
                            p.text(&key.name),
                            p.text(&self.spec_text),
                            p.int(revision),
                            p.int(now),
                            p.int(now),
                            p.text(&self.labels_text),
                        ];
                        format!(
                            "INSERT INTO resources ({COLS}) VALUES ({})",
                            values.join(", ")
                        )
                    })
                    .await?;
                if key.kind != Kind::Mesh {
                    crate::quotas::resize_mesh(&mut batch, tx, &key.tenant, &key.mesh, true)
                        .await?;
                }
                now
            }
        };
        state::replace_edges(&mut batch, tx, key, &self.refs, &self.claims, &found.held).await?;
        batch.send(tx).await?;
        if let (Some(ca), true) = (&self.ca, needs_ca) {
            crate::ca_rows::insert_ca(tx, &key.tenant, &key.name, crate::CaState::Active, ca)
                .await?;
        }
        Ok(StoredResource {
            key: key.clone(),
            spec: self.spec.clone(),
            labels: self.labels.clone(),
            revision,
            create_time,
            update_time: now,
        })
    }
}

/// A delete.
pub(super) struct DeleteWrite {
    pub key: ResourceKey,
    pub precondition: super::Precondition,
    pub backend: Backend,
    /// Who deletes, for the history.
    pub actor: Option<Actor>,
}

impl DeleteWrite {
    /// Checks, then deletes at `revision`. Returns the resource as it was.
    pub async fn run(
        self,
        tx: &mut Tx,
        revision: i64,
    ) -> Result<(StoredResource, ChangeRow), JobError> {
        let existing = self.check(tx).await.map_err(JobError::check)?;
        self.write(tx, revision).await.map_err(JobError::Fatal)?;
        let change = (
            self.key.mesh.clone(),
            self.key.kind,
            self.key.name.clone(),
            ChangeOp::Delete,
            Some(Box::new(Recorded {
                op: HistoryOp::Delete,
                spec: None,
                actor: self.actor,
            })),
        );
        Ok((existing, change))
    }

    /// The resource, if it may be deleted: it exists, matches the precondition and, unless
    /// it is a mesh, nothing refers to it.
    async fn check(&self, tx: &mut Tx) -> Result<StoredResource, StoreError> {
        let key = &self.key;
        let existing = fetch(tx, key).await?;
        check_precondition(&self.precondition, existing.as_ref(), key)?;
        let Some(existing) = existing else {
            return Err(StoreError::NotFound {
                what: key.kind.singular(),
                name: key.name.clone(),
            });
        };
        if key.kind == Kind::Mesh {
            return Ok(existing);
        }
        let rows = sqlx::query(
            "SELECT from_kind, from_name, field FROM refs WHERE tenant = $1 AND mesh = $2 AND to_kind = $3 AND to_name = $4 ORDER BY from_kind, from_name, field",
        )
        .bind_key(key)
        .fetch_all(&mut **tx)
        .await?;
        if rows.is_empty() {
            return Ok(existing);
        }
        let mut by = vec![];
        for r in rows {
            let k: String = r.try_get("from_kind")?;
            by.push(Referrer {
                kind: Kind::from_plural(&k)
                    .ok_or_else(|| StoreError::Corrupt(format!("kind {k:?}")))?,
                name: r.try_get("from_name")?,
                field: r.try_get("field")?,
            });
        }
        Err(StoreError::Referenced {
            kind: key.kind,
            name: key.name.clone(),
            by,
        })
    }

    /// Deletes the resource with its edges; a mesh with everything in it. One statement on
    /// PostgreSQL ([`crate::batch`]).
    async fn write(&self, tx: &mut Tx, revision: i64) -> Result<(), StoreError> {
        let key = &self.key;
        let mut batch = Batch::new(self.backend);
        if key.kind == Kind::Mesh {
            // The history says that everything in the mesh went with it (read before the
            // deletes below: in one statement on PostgreSQL, all see the same snapshot).
            let (id, description) = self
                .actor
                .as_ref()
                .map_or(("", ""), |a| (a.id.as_str(), a.description.as_str()));
            batch
                .push(tx, |p| {
                    format!(
                        "{} SELECT tenant, {}, mesh, kind, name, 'delete', NULL, {}, {}, {} \
                         FROM resources WHERE tenant = {} AND mesh = {}",
                        crate::history::INSERT,
                        p.int(revision),
                        p.int(now_ms()),
                        p.text(id),
                        p.text(description),
                        p.text(&key.tenant),
                        p.text(&key.name)
                    )
                })
                .await?;
            for table in ["resources", "refs", "claims", "mesh_cas", "mesh_sizes"] {
                batch
                    .push(tx, |p| {
                        format!(
                            "DELETE FROM {table} WHERE tenant = {} AND mesh = {}",
                            p.text(&key.tenant),
                            p.text(&key.name)
                        )
                    })
                    .await?;
            }
        } else {
            state::drop_edges(&mut batch, tx, key).await?;
            crate::quotas::resize_mesh(&mut batch, tx, &key.tenant, &key.mesh, false).await?;
        }
        batch
            .push(tx, |p| {
                format!(
                    "DELETE FROM resources WHERE tenant = {} AND mesh = {} AND kind = {} \
                     AND name = {}",
                    p.text(&key.tenant),
                    p.text(&key.mesh),
                    p.text(key.kind.plural()),
                    p.text(&key.name)
                )
            })
            .await?;
        batch.send(tx).await
    }
}
