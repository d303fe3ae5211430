//! Mesh and in-mesh resources: the transactional write path and reads.

mod dump;
mod many;
mod rollback;
mod state;
mod write;

pub use dump::TenantDump;
pub use many::{
    BatchEffect, BatchError, BatchItem, BatchOptions, BatchOutcome, BatchWrite, WriteAt,
    dependency_rank,
};
pub use rollback::Rollback;

use crate::group::JobError;
use crate::types::etag;
use crate::{
    Backend, ChangeOp, MeshSnapshot, ResourceKey, Store, StoreError, StoredResource, Timer, now_ms,
};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use switchboard_model::{Claim, Kind, Reference, Spec};

/// Optimistic concurrency for a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Precondition {
    /// Create or replace.
    #[default]
    None,
    /// The resource must exist with this etag (`If-Match`).
    IfMatch(String),
    /// The resource must not exist yet (POST to a collection).
    Create,
}

#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub precondition: Precondition,
    /// Check everything, then roll back.
    pub dry_run: bool,
    /// For a put: the labels the resource gets, in place of those it had.
    pub labels: switchboard_model::Labels,
    /// Who writes, for the history (None: the control plane itself).
    pub actor: Option<crate::Actor>,
}

/// One page of a listing, ordered by name.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The last name of this page when there may be more.
    pub next_after: Option<String>,
}

impl<T> Page<T> {
    /// A page from `items` as fetched with `LIMIT limit + 1`: at most `limit` of them, with the
    /// `name` of the last when there were more.
    pub(crate) fn of(mut items: Vec<T>, limit: u32, name: impl Fn(&T) -> &str) -> Page<T> {
        let next_after = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|t| name(t).to_owned())
        } else {
            None
        };
        Page { items, next_after }
    }
}

/// The JSON in a row's `spec` column; `what` names it, only when it does not parse (so that
/// reading a mesh's rows formats nothing).
pub(crate) fn spec_column(
    row: &AnyRow,
    what: impl FnOnce() -> String,
) -> Result<serde_json::Value, StoreError> {
    let spec: String = row.try_get("spec")?;
    serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt(format!("{}: {e}", what())))
}

/// Labels as stored: a JSON object of strings.
pub(crate) fn labels_text(text: &str) -> Result<switchboard_model::Labels, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("labels: {e}")))
}

/// An open write transaction with its new revision (and, on SQLite, the turn to write).
pub(crate) struct WriteTx {
    pub tx: Transaction<'static, Any>,
    pub revision: i64,
    pub turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// Binds a resource key as `$1..$4` (tenant, mesh, kind, name): every keyed query starts so.
trait BindKey<'q> {
    fn bind_key(self, key: &'q ResourceKey) -> Self;
}

impl<'q> BindKey<'q> for AnyQuery<'q> {
    fn bind_key(self, key: &'q ResourceKey) -> Self {
        self.bind(&key.tenant)
            .bind(&key.mesh)
            .bind(key.kind.plural())
            .bind(&key.name)
    }
}

const COLS: &str = "tenant, mesh, kind, name, spec, revision, create_time, update_time, labels";

pub(crate) fn row_to_resource(row: &AnyRow) -> Result<StoredResource, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(StoredResource {
        key: ResourceKey {
            tenant: row.try_get("tenant")?,
            mesh: row.try_get("mesh")?,
            kind: Kind::from_plural(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown kind {kind:?}")))?,
            name: row.try_get("name")?,
        },
        spec: spec_column(row, || format!("spec of {kind}"))?,
        labels: labels_text(&row.try_get::<String, _>("labels")?)?,
        revision: row.try_get("revision")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

impl Store {
    /// Starts a write: begins the transaction and bumps the tenant revision, which also makes
    /// every other writer of the tenant wait until this one commits.
    pub(crate) async fn begin_write(&self, tenant: &str) -> Result<WriteTx, StoreError> {
        let turn = self.write_turn().await;
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "UPDATE tenants SET revision = revision + 1, update_time = $1 WHERE name = $2 RETURNING revision",
        )
        .bind(now_ms())
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some(r) => Ok(WriteTx {
                tx,
                revision: r.try_get("revision")?,
                turn,
            }),
            None => Err(StoreError::NotFound {
                what: "tenant",
                name: tenant.into(),
            }),
        }
    }

    /// Records the change and commits (or rolls back for a dry run), then announces it: the
    /// single-write path (CA and tenant writes, dry runs); resource writes commit in groups
    /// ([`crate::group`]).
    pub(crate) async fn finish_write(
        &self,
        w: WriteTx,
        tenant: &str,
        changes: &[(&str, Kind, &str, ChangeOp)],
        history: &[crate::history::HistoryRow<'_>],
        dry_run: bool,
    ) -> Result<(), StoreError> {
        let WriteTx {
            mut tx,
            revision,
            turn,
        } = w;
        if dry_run {
            tx.rollback().await?;
            return Ok(());
        }
        let notice = crate::Notice::Committed {
            tenant: tenant.into(),
            revision,
        };
        let rows: Vec<_> = changes
            .iter()
            .map(|(mesh, kind, name, op)| (revision, *mesh, *kind, *name, *op))
            .collect();
        let logged: Vec<crate::group::ChangeRow> = changes
            .iter()
            .map(|(mesh, kind, name, op)| {
                ((*mesh).to_owned(), *kind, (*name).to_owned(), *op, None)
            })
            .collect();
        let (span, _, meshes) =
            crate::group::commit_span(&tracing::Span::current(), tenant, revision, &logged, 1);
        self.record_changes(&mut tx, tenant, &rows, history, &notice, None)
            .await?;
        tx.commit().await?;
        drop(turn);
        self.record_commit_trace(&span, tenant, revision, meshes);
        drop(span);
        if self.backend() == Backend::Sqlite {
            let _ = self.notices().send(notice);
        }
        Ok(())
    }

    /// Records committed writes in the change log and, on PostgreSQL, sends `notice` in the
    /// same statement (`pg_notify` in a CTE: one round trip less under the lock), and sets
    /// the tenant's revision to `set_revision` when given (a group's last revision; in that
    /// statement too on PostgreSQL). Rows are `(revision, mesh, kind, name, op)`. The log's
    /// `time` is taken here, in the last statement before the commit: it is the commit time
    /// by this replica's wall clock (Unix ms), from which the xDS server measures
    /// convergence. The `history` rows (each a subset of `rows` with the spec written and
    /// who wrote it) go in the same statement on PostgreSQL when they are few (a group's),
    /// in statements of their own otherwise.
    pub(crate) async fn record_changes(
        &self,
        tx: &mut Transaction<'static, Any>,
        tenant: &str,
        rows: &[(i64, &str, Kind, &str, ChangeOp)],
        history: &[crate::history::HistoryRow<'_>],
        notice: &crate::Notice,
        set_revision: Option<i64>,
    ) -> Result<(), StoreError> {
        let payload = match self.backend() {
            Backend::Postgres => crate::changes::encode_notice(notice),
            Backend::Sqlite => None,
        };
        let now = now_ms();
        // Folded into the change log's insert on PostgreSQL when few; alone otherwise.
        let fold_history = payload.is_some() && !rows.is_empty() && history.len() <= 64;
        if !fold_history {
            for chunk in history.chunks(crate::history::PER_STATEMENT) {
                let (values, binds) = crate::history::values(chunk, tenant, now, 1);
                let sql = format!("{} VALUES {values}", crate::history::INSERT);
                bind_history(sqlx::query(&sql), binds)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        // Folded into the insert below on PostgreSQL; alone otherwise.
        let fold_revision = payload.is_some() && !rows.is_empty();
        if let (Some(revision), false) = (set_revision, fold_revision) {
            sqlx::query("UPDATE tenants SET revision = $1 WHERE name = $2")
                .bind(revision)
                .bind(tenant)
                .execute(&mut **tx)
                .await?;
        }
        if rows.is_empty() {
            if payload.is_some() {
                crate::changes::notify_in(tx, notice).await?;
            }
            return Ok(());
        }
        let revision = set_revision.filter(|_| fold_revision);
        let first = match (&payload, revision) {
            (None, _) => 1,
            (Some(_), None) => 3,
            (Some(_), Some(_)) => 5,
        };
        let values = state::placeholders(rows.len(), 7, first);
        let (hist, hist_binds) = match fold_history && !history.is_empty() {
            true => {
                let (values, binds) =
                    crate::history::values(history, tenant, now, first + rows.len() * 7);
                let hist = format!("hist AS ({} VALUES {values}), ", crate::history::INSERT);
                (hist, binds)
            }
            false => (String::new(), Vec::new()),
        };
        let insert = "INSERT INTO changes (tenant, revision, mesh, kind, name, op, time)";
        let sql = match (&payload, revision) {
            (None, _) => format!("{insert} VALUES {values}"),
            (Some(_), None) => format!(
                "WITH {hist}notice AS (SELECT pg_notify($1, $2)) {insert} \
                 SELECT v.* FROM (VALUES {values}) AS v CROSS JOIN notice"
            ),
            (Some(_), Some(_)) => format!(
                "WITH {hist}revision AS (UPDATE tenants SET revision = $3 WHERE name = $4), \
                 notice AS (SELECT pg_notify($1, $2)) {insert} \
                 SELECT v.* FROM (VALUES {values}) AS v CROSS JOIN notice"
            ),
        };
        let mut query = sqlx::query(&sql);
        if let Some(payload) = payload {
            query = query.bind(crate::NOTIFY_CHANNEL).bind(payload);
        }
        if let Some(revision) = revision {
            query = query.bind(revision).bind(tenant);
        }
        for (revision, mesh, kind, name, op) in rows {
            query = query
                .bind(tenant)
                .bind(*revision)
                .bind(*mesh)
                .bind(kind.plural())
                .bind(*name)
                .bind(op.as_str())
                .bind(now);
        }
        bind_history(query, hist_binds).execute(&mut **tx).await?;
        Ok(())
    }

    /// Creates or replaces the resource `name` of the spec's kind, in `mesh` (ignored for a
    /// mesh). The references and claims recorded with it are the spec's own, so no caller can
    /// record others: `refs` must exist in the mesh and `claims` must not be held by another
    /// resource, both checked inside the transaction.
    pub async fn put_spec(
        &self,
        tenant: &str,
        mesh: &str,
        name: &str,
        spec: &Spec,
        opts: &WriteOptions,
    ) -> Result<StoredResource, StoreError> {
        let key = ResourceKey::new(tenant, mesh, spec.kind(), name);
        self.put(&key, spec, &spec.references(), &spec.claims(), opts, None)
            .await
    }

    /// [`Store::put_spec`] for a mesh, giving it `ca` (sealed) as its CA in the same
    /// transaction when it has none yet (a new mesh, or one created before CAs existed).
    pub async fn put_mesh_with_ca(
        &self,
        tenant: &str,
        name: &str,
        spec: &Spec,
        opts: &WriteOptions,
        ca: &switchboard_pki::SealedCa,
    ) -> Result<StoredResource, StoreError> {
        if spec.kind() != Kind::Mesh {
            return Err(StoreError::Config(format!(
                "put_mesh_with_ca takes a mesh spec, not a {}",
                spec.kind()
            )));
        }
        let key = ResourceKey::mesh(tenant, name);
        self.put(
            &key,
            spec,
            &spec.references(),
            &spec.claims(),
            opts,
            Some(ca),
        )
        .await
    }

    /// The write behind [`Store::put_spec`]: private, so that references and claims always
    /// come from the spec they belong to.
    async fn put(
        &self,
        key: &ResourceKey,
        parsed: &Spec,
        refs: &[Reference],
        claims: &[Claim],
        opts: &WriteOptions,
        ca: Option<&switchboard_pki::SealedCa>,
    ) -> Result<StoredResource, StoreError> {
        let _t = Timer::start("put");
        // Everything that needs no database is done before the tenant's lock is taken.
        let spec = parsed.to_json();
        let labels_text = serde_json::to_string(&opts.labels)
            .map_err(|e| StoreError::Corrupt(format!("labels: {e}")))?;
        let write = write::PutWrite {
            key: key.clone(),
            parsed: parsed.clone(),
            spec_text: spec.to_string(),
            spec,
            labels: opts.labels.clone(),
            labels_text,
            refs: refs.to_vec(),
            claims: claims.to_vec(),
            precondition: opts.precondition.clone(),
            ca: ca.cloned(),
            resources_per_mesh: self.quota_defaults().resources_per_mesh,
            backend: self.backend(),
            actor: opts.actor.clone(),
        };
        if opts.dry_run {
            // A dry run writes, then rolls back: alone, outside the groups.
            let mut w = self.begin_write(&key.tenant).await?;
            let (stored, _) = write
                .run(&mut w.tx, w.revision)
                .await
                .map_err(JobError::into_inner)?;
            self.finish_write(w, &key.tenant, &[], &[], true).await?;
            return Ok(stored);
        }
        self.write_in_group(&key.tenant, move |tx, revision| {
            Box::pin(async move {
                let (stored, change) = write.run(tx, revision).await?;
                Ok::<_, JobError>((stored, vec![change]))
            })
        })
        .await
    }

    /// Deletes a resource that nothing refers to. Deleting a mesh deletes everything in it.
    pub async fn delete(
        &self,
        key: &ResourceKey,
        opts: &WriteOptions,
    ) -> Result<StoredResource, StoreError> {
        let _t = Timer::start("delete");
        let write = write::DeleteWrite {
            key: key.clone(),
            precondition: opts.precondition.clone(),
            backend: self.backend(),
            actor: opts.actor.clone(),
        };
        if opts.dry_run {
            let mut w = self.begin_write(&key.tenant).await?;
            let (existing, _) = write
                .run(&mut w.tx, w.revision)
                .await
                .map_err(JobError::into_inner)?;
            self.finish_write(w, &key.tenant, &[], &[], true).await?;
            return Ok(existing);
        }
        self.write_in_group(&key.tenant, move |tx, revision| {
            Box::pin(async move {
                let (existing, change) = write.run(tx, revision).await?;
                Ok::<_, JobError>((existing, vec![change]))
            })
        })
        .await
    }

    pub async fn get(&self, key: &ResourceKey) -> Result<StoredResource, StoreError> {
        let _t = Timer::start("get");
        let mut conn = self.pool().acquire().await?;
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM resources WHERE tenant = $1 AND mesh = $2 AND kind = $3 AND name = $4"
        ))
        .bind_key(key)
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some(r) => row_to_resource(&r),
            None => Err(StoreError::NotFound {
                what: key.kind.singular(),
                name: key.name.clone(),
            }),
        }
    }

    /// The resources of `mesh` (not the mesh itself) labelled `label` = `value`, by kind and
    /// name: what `apply --prune` may delete.
    pub async fn labeled(
        &self,
        tenant: &str,
        mesh: &str,
        label: &str,
        value: &str,
    ) -> Result<Vec<ResourceKey>, StoreError> {
        let _t = Timer::start("labeled");
        let mut conn = self.pool().acquire().await?;
        // Labels are rare: only labelled rows are read, and matched here.
        let rows = sqlx::query(
            "SELECT kind, name, labels FROM resources \
             WHERE tenant = $1 AND mesh = $2 AND labels <> '{}' ORDER BY kind, name",
        )
        .bind(tenant)
        .bind(mesh)
        .fetch_all(&mut *conn)
        .await?;
        let mut keys = vec![];
        for row in rows {
            let labels = labels_text(&row.try_get::<String, _>("labels")?)?;
            if mesh.is_empty() || labels.get(label).map(String::as_str) != Some(value) {
                continue;
            }
            let kind: String = row.try_get("kind")?;
            let kind = Kind::from_plural(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown kind {kind:?}")))?;
            keys.push(ResourceKey::new(
                tenant,
                mesh,
                kind,
                &row.try_get::<String, _>("name")?,
            ));
        }
        Ok(keys)
    }

    /// The labels of the mesh `mesh` and of the resources in it, for those that have some.
    pub(crate) async fn labels_in(
        &self,
        tenant: &str,
        mesh: &str,
    ) -> Result<std::collections::HashMap<(Kind, String), switchboard_model::Labels>, StoreError>
    {
        let mut conn = self.pool().acquire().await?;
        let rows = sqlx::query(
            "SELECT kind, name, labels FROM resources WHERE tenant = $1 \
             AND (mesh = $2 OR (mesh = '' AND kind = $3 AND name = $2)) AND labels <> '{}'",
        )
        .bind(tenant)
        .bind(mesh)
        .bind(Kind::Mesh.plural())
        .fetch_all(&mut *conn)
        .await?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let kind = Kind::from_plural(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown kind {kind:?}")))?;
            out.insert(
                (kind, row.try_get::<String, _>("name")?),
                labels_text(&row.try_get::<String, _>("labels")?)?,
            );
        }
        Ok(out)
    }

    /// Every resource of `kind` whose name starts with `prefix`, in every tenant and mesh
    /// (for replica-wide housekeeping, such as sweeping sidecar endpoints).
    pub async fn list_everywhere(
        &self,
        kind: Kind,
        prefix: &str,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let _t = Timer::start("list_everywhere");
        let pattern = format!(
            "{}%",
            prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM resources WHERE kind = $1 AND name LIKE $2 ESCAPE '\\' \
             ORDER BY tenant, mesh, name"
        ))
        .bind(kind.plural())
        .bind(pattern)
        .fetch_all(self.pool())
        .await?;
        // SQLite's LIKE ignores ASCII case: keep only exact prefixes.
        let all = rows.iter().map(row_to_resource);
        all.filter(|r| r.as_ref().map_or(true, |r| r.key.name.starts_with(prefix)))
            .collect()
    }

    pub async fn list(
        &self,
        tenant: &str,
        mesh: &str,
        kind: Kind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<StoredResource>, StoreError> {
        let _t = Timer::start("list");
        let mesh = if kind == Kind::Mesh { "" } else { mesh };
        let sql = format!(
            "SELECT {COLS} FROM resources WHERE tenant = $1 AND mesh = $2 AND kind = $3 AND name > $4 ORDER BY name LIMIT $5"
        );
        let query = sqlx::query(&sql)
            .bind(tenant)
            .bind(mesh)
            .bind(kind.plural());
        self.fetch_page(query, after, limit, row_to_resource, |r| &r.key.name)
            .await
    }

    /// One page of at most `limit` items, ordered by name: runs `query` with its last two
    /// parameters bound to the name to list after and to one row more than `limit`.
    pub(crate) async fn fetch_page<'q, T>(
        &self,
        query: AnyQuery<'q>,
        after: Option<&'q str>,
        limit: u32,
        row_to: fn(&AnyRow) -> Result<T, StoreError>,
        name: impl Fn(&T) -> &str,
    ) -> Result<Page<T>, StoreError> {
        let rows = query
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit) + 1)
            .fetch_all(self.pool())
            .await?;
        let items = rows.iter().map(row_to).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::of(items, limit, name))
    }

    /// Everything in one mesh at one revision, for the translator.
    pub async fn mesh_snapshot(
        &self,
        tenant: &str,
        mesh: &str,
    ) -> Result<MeshSnapshot, StoreError> {
        let _t = Timer::start("mesh_snapshot");
        self.count_mesh_read();
        let mut tx = self.pool().begin().await?;
        if self.backend() == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let rev = sqlx::query("SELECT revision FROM tenants WHERE name = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "tenant",
                name: tenant.into(),
            })?;
        let revision: i64 = rev.try_get("revision")?;
        let mesh_res = fetch(&mut tx, &ResourceKey::mesh(tenant, mesh))
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "mesh",
                name: mesh.into(),
            })?;
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM resources WHERE tenant = $1 AND mesh = $2 ORDER BY kind, name"
        ))
        .bind(tenant)
        .bind(mesh)
        .fetch_all(&mut *tx)
        .await?;
        let trust = crate::ca_rows::trust_in(&mut tx, tenant, mesh).await?;
        tx.commit().await?;
        Ok(MeshSnapshot {
            tenant: tenant.into(),
            mesh: mesh_res,
            revision,
            resources: rows.iter().map(row_to_resource).collect::<Result<_, _>>()?,
            trust,
        })
    }
}

/// Binds [`crate::history::values`]' parameters after those already bound.
fn bind_history(mut query: AnyQuery<'_>, binds: Vec<crate::history::Bind>) -> AnyQuery<'_> {
    for b in binds {
        query = match b {
            crate::history::Bind::Text(v) => query.bind(v),
            crate::history::Bind::Int(v) => query.bind(v),
        };
    }
    query
}

fn check_precondition(
    p: &Precondition,
    existing: Option<&StoredResource>,
    key: &ResourceKey,
) -> Result<(), StoreError> {
    match (p, existing) {
        (Precondition::None, _) => Ok(()),
        (Precondition::Create, Some(_)) => Err(StoreError::AlreadyExists {
            what: key.kind.singular(),
            name: key.name.clone(),
        }),
        (Precondition::Create, None) => Ok(()),
        (Precondition::IfMatch(tag), Some(e)) if tag == "*" || *tag == etag(e.revision) => Ok(()),
        (Precondition::IfMatch(_), e) => Err(StoreError::PreconditionFailed {
            current: e.map(|e| e.etag()),
        }),
    }
}

async fn fetch(
    tx: &mut Transaction<'static, Any>,
    key: &ResourceKey,
) -> Result<Option<StoredResource>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLS} FROM resources WHERE tenant = $1 AND mesh = $2 AND kind = $3 AND name = $4"
    ))
    .bind_key(key)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(row_to_resource).transpose()
}

/// A stored spec, parsed (a spec this version cannot read is corrupt).
fn parse_stored(r: &StoredResource) -> Result<Spec, StoreError> {
    Spec::parse(r.key.kind, r.spec.clone())
        .map_err(|e| StoreError::Corrupt(format!("{} {:?}: {e}", r.key.kind, r.key.name)))
}

/// [`parse_stored`] from the `spec` column's text.
fn parse_stored_text(kind: Kind, name: &str, spec: &str) -> Result<Spec, StoreError> {
    let json = serde_json::from_str(spec)
        .map_err(|e| StoreError::Corrupt(format!("spec of {kind} {name:?}: {e}")))?;
    Spec::parse(kind, json).map_err(|e| StoreError::Corrupt(format!("{kind} {name:?}: {e}")))
}

/// Checks `spec`, about to replace `key`, against the resources whose references to it come
/// with a rule ([`Spec::constrained_by`]): a service referred to by a policy that narrows by
/// path cannot become a TCP service.
async fn check_referrers(
    tx: &mut Transaction<'static, Any>,
    key: &ResourceKey,
    spec: &Spec,
) -> Result<(), StoreError> {
    for kind in Spec::constrained_by(key.kind) {
        let rows = sqlx::query(
            "SELECT DISTINCT from_name FROM refs WHERE tenant = $1 AND mesh = $2 AND to_kind = $3 \
             AND to_name = $4 AND from_kind = $5 ORDER BY from_name",
        )
        .bind_key(key)
        .bind(kind.plural())
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            let name: String = row.try_get("from_name")?;
            let referrer_key = ResourceKey::new(&key.tenant, &key.mesh, *kind, &name);
            let Some(referrer) = fetch(tx, &referrer_key).await? else {
                continue;
            };
            if let Some(e) = spec.check_referrer(&key.name, &name, &parse_stored(&referrer)?) {
                return Err(StoreError::Incompatible {
                    field: e.field,
                    message: e.message,
                });
            }
        }
    }
    Ok(())
}
