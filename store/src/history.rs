//! Resource history and the audit log: every spec a write stored, with the credential that
//! wrote it, kept for a retention period (`history` table, migration 0010).
//!
//! The write path records its rows in the statement that records the change log
//! ([`Store::record_changes`]); this module reads them (a resource's revisions, a tenant's
//! audit log, a resource or a mesh as it was at a revision) and prunes them.

use crate::{ResourceKey, Store, StoreError, now_ms};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::collections::BTreeMap;
use std::time::Duration;
use switchboard_model::Kind;

/// Who made a write: an API key of the tenant, or the platform admin ([`Actor::admin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The credential's id (`admin` for the platform admin).
    pub id: String,
    pub description: String,
}

impl Actor {
    pub fn admin() -> Actor {
        Actor {
            id: "admin".into(),
            description: "platform admin".into(),
        }
    }
}

/// What a history row's write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryOp {
    Create,
    Update,
    Delete,
}

impl HistoryOp {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryOp::Create => "create",
            HistoryOp::Update => "update",
            HistoryOp::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Result<HistoryOp, StoreError> {
        match s {
            "create" => Ok(HistoryOp::Create),
            "update" => Ok(HistoryOp::Update),
            "delete" => Ok(HistoryOp::Delete),
            other => Err(StoreError::Corrupt(format!("history op {other:?}"))),
        }
    }
}

/// What a committed write keeps in history besides its change-log row.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub op: HistoryOp,
    /// The spec's JSON text as stored (None for a delete).
    pub spec: Option<String>,
    pub actor: Option<Actor>,
}

/// A history row: `(revision, mesh, kind, name, what it recorded)`.
pub(crate) type HistoryRow<'a> = (i64, &'a str, Kind, &'a str, &'a Recorded);

/// One revision of a resource, or one action of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub revision: i64,
    /// Unix ms.
    pub time: i64,
    pub mesh: String,
    /// A resource kind's plural (`services`), or `api-key` / `proxy-token` for credentials.
    pub kind: String,
    pub name: String,
    pub op: HistoryOp,
    /// The spec as stored (None for a delete and for credentials).
    pub spec: Option<serde_json::Value>,
    /// None for a write no credential made (the control plane's own).
    pub actor: Option<Actor>,
}

/// A page of history or audit entries, newest first, with the cursor of the next.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub items: Vec<HistoryEntry>,
    pub next: Option<String>,
}

/// What [`Store::audit`] returns.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries at or after this time (Unix ms).
    pub since: Option<i64>,
    pub mesh: Option<String>,
    /// Only entries of this credential id.
    pub credential: Option<String>,
    /// The cursor of the previous page.
    pub after: Option<String>,
    pub limit: u32,
}

/// A mesh at a revision, next to the mesh now: the input of a mesh rollback.
#[derive(Debug, Clone)]
pub struct MeshAt {
    /// The tenant revision the plan was read at.
    pub read_at: i64,
    /// Every resource of the mesh then or now, by kind and name: its key, its spec
    /// now and its spec at the revision (None: absent).
    pub resources: Vec<(
        ResourceKey,
        Option<serde_json::Value>,
        Option<serde_json::Value>,
    )>,
}

const COLS: &str =
    "revision, time, mesh, kind, name, op, spec, credential_id, credential_description";

/// The history rows of one key, oldest first: `(revision, op, spec)`.
type KeyRows = Vec<(i64, HistoryOp, Option<serde_json::Value>)>;

/// A resource as stored now: `(spec, revision)`.
type Now = (serde_json::Value, i64);

fn row_to_entry(row: &AnyRow) -> Result<HistoryEntry, StoreError> {
    let op: String = row.try_get("op")?;
    let spec: Option<String> = row.try_get("spec")?;
    let id: String = row.try_get("credential_id")?;
    Ok(HistoryEntry {
        revision: row.try_get("revision")?,
        time: row.try_get("time")?,
        mesh: row.try_get("mesh")?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        op: HistoryOp::parse(&op)?,
        spec: spec
            .map(|s| {
                serde_json::from_str(&s)
                    .map_err(|e| StoreError::Corrupt(format!("spec in history: {e}")))
            })
            .transpose()?,
        actor: (!id.is_empty())
            .then(|| {
                Ok::<_, StoreError>(Actor {
                    id,
                    description: row.try_get("credential_description")?,
                })
            })
            .transpose()?,
    })
}

/// A page cursor: the revision, time and key of the last entry shown.
fn cursor(e: &HistoryEntry) -> String {
    serde_json::json!([e.time, e.revision, e.mesh, e.kind, e.name, e.op.as_str()]).to_string()
}

type Cursor = (i64, i64, String, String, String, String);

fn parse_cursor(s: &str) -> Result<Cursor, StoreError> {
    serde_json::from_str(s).map_err(|_| StoreError::BadCursor)
}

/// The state of one key at revision `n` from its history rows (oldest first) and its row
/// now (`(spec, revision)`): None when it did not exist. Fails when the history does not
/// say (written before history was kept, or its rows pruned).
pub(crate) fn state_at(
    n: i64,
    rows: &[(i64, HistoryOp, Option<serde_json::Value>)],
    now: Option<(&serde_json::Value, i64)>,
) -> Result<Option<serde_json::Value>, ()> {
    if let Some((_, op, spec)) = rows.iter().rev().find(|(r, _, _)| *r <= n) {
        return match op {
            HistoryOp::Delete => Ok(None),
            _ => spec.clone().map(Some).ok_or(()),
        };
    }
    match (rows.first(), now) {
        (Some((_, HistoryOp::Create, _)), _) => Ok(None),
        (Some(_), _) => Err(()),
        (None, Some((spec, revision))) if revision <= n => Ok(Some(spec.clone())),
        (None, Some(_)) => Err(()),
        (None, None) => Ok(None),
    }
}

impl Store {
    /// The revisions of one resource, newest first (`after`: the previous page's cursor).
    pub async fn resource_history(
        &self,
        key: &ResourceKey,
        after: Option<&str>,
        limit: u32,
    ) -> Result<HistoryPage, StoreError> {
        let before = match after {
            Some(c) => parse_cursor(c)?.1,
            None => i64::MAX,
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM history WHERE tenant = $1 AND mesh = $2 AND kind = $3 \
             AND name = $4 AND revision < $5 ORDER BY revision DESC, time DESC LIMIT $6"
        ))
        .bind(&key.tenant)
        .bind(&key.mesh)
        .bind(key.kind.plural())
        .bind(&key.name)
        .bind(before)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        page(&rows, limit)
    }

    /// The tenant's audit log, newest first: every write with its credential, and the
    /// credentials created and revoked.
    pub async fn audit(&self, tenant: &str, q: &AuditQuery) -> Result<HistoryPage, StoreError> {
        let mut sql = format!("SELECT {COLS} FROM history WHERE tenant = $1 AND time >= $2");
        let mut n = 2;
        if q.mesh.is_some() {
            n += 1;
            sql.push_str(&format!(
                " AND (mesh = ${n} OR (mesh = '' AND kind = 'meshes' AND name = ${n}))"
            ));
        }
        if q.credential.is_some() {
            n += 1;
            sql.push_str(&format!(" AND credential_id = ${n}"));
        }
        let after = q.after.as_deref().map(parse_cursor).transpose()?;
        if after.is_some() {
            // Newest first: an earlier time, or the same time and an earlier revision, or
            // both the same and a later key.
            let p: Vec<String> = (1..=6).map(|i| format!("${}", n + i)).collect();
            sql.push_str(&format!(
                " AND (time < {t} OR (time = {t} AND revision < {r}) OR (time = {t} AND \
                 revision = {r} AND (mesh > {m} OR (mesh = {m} AND (kind > {k} OR (kind = {k} \
                 AND (name > {nm} OR (name = {nm} AND op > {o}))))))))",
                t = p[0],
                r = p[1],
                m = p[2],
                k = p[3],
                nm = p[4],
                o = p[5]
            ));
            n += 6;
        }
        sql.push_str(&format!(
            " ORDER BY time DESC, revision DESC, mesh, kind, name, op LIMIT ${}",
            n + 1
        ));
        let mut query = sqlx::query(&sql)
            .bind(tenant)
            .bind(q.since.unwrap_or(i64::MIN));
        if let Some(m) = &q.mesh {
            query = query.bind(m);
        }
        if let Some(c) = &q.credential {
            query = query.bind(c);
        }
        if let Some((t, r, m, k, nm, o)) = after {
            query = query.bind(t).bind(r).bind(m).bind(k).bind(nm).bind(o);
        }
        let rows = query
            .bind(i64::from(q.limit) + 1)
            .fetch_all(self.pool())
            .await?;
        page(&rows, q.limit)
    }

    /// Records a tenant-level action in the audit log (`kind` e.g. `api-key`, `name` the
    /// credential's id), at the tenant's current revision.
    pub async fn record_audit(
        &self,
        tenant: &str,
        kind: &str,
        name: &str,
        op: HistoryOp,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO history (tenant, revision, mesh, kind, name, op, spec, time, \
             credential_id, credential_description) \
             SELECT name, revision, '', $2, $3, $4, NULL, $5, $6, $7 FROM tenants WHERE name = $1",
        )
        .bind(tenant)
        .bind(kind)
        .bind(name)
        .bind(op.as_str())
        .bind(now_ms())
        .bind(&actor.id)
        .bind(&actor.description)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The tenant's revision now and the revision from which its history is complete,
    /// checking that `n` is between them.
    async fn history_bounds(
        &self,
        conn: &mut sqlx::AnyConnection,
        tenant: &str,
        n: i64,
    ) -> Result<i64, StoreError> {
        let row =
            sqlx::query("SELECT revision, history_pruned_through FROM tenants WHERE name = $1")
                .bind(tenant)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "tenant",
                    name: tenant.into(),
                })?;
        let (current, pruned_through): (i64, i64) = (
            row.try_get("revision")?,
            row.try_get("history_pruned_through")?,
        );
        if n < 0 || n > current {
            return Err(StoreError::RevisionOutside {
                revision: n,
                current,
            });
        }
        if n < pruned_through {
            return Err(StoreError::HistoryPruned {
                revision: n,
                pruned_through,
            });
        }
        Ok(current)
    }

    /// The resource's spec at revision `n` (None: it did not exist then).
    pub async fn resource_at(
        &self,
        key: &ResourceKey,
        n: i64,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        self.history_bounds(&mut conn, &key.tenant, n).await?;
        let rows = sqlx::query(
            "SELECT revision, op, spec FROM history WHERE tenant = $1 AND mesh = $2 \
             AND kind = $3 AND name = $4 ORDER BY revision, time",
        )
        .bind(&key.tenant)
        .bind(&key.mesh)
        .bind(key.kind.plural())
        .bind(&key.name)
        .fetch_all(&mut *conn)
        .await?;
        let mut history = KeyRows::new();
        for row in &rows {
            history.push(key_row(row)?);
        }
        let now = sqlx::query(
            "SELECT spec, revision FROM resources WHERE tenant = $1 AND mesh = $2 \
             AND kind = $3 AND name = $4",
        )
        .bind(&key.tenant)
        .bind(&key.mesh)
        .bind(key.kind.plural())
        .bind(&key.name)
        .fetch_optional(&mut *conn)
        .await?;
        let now = now
            .map(|r| {
                Ok::<_, StoreError>((json_column(&r, "spec")?, r.try_get::<i64, _>("revision")?))
            })
            .transpose()?;
        state_at(n, &history, now.as_ref().map(|(s, r)| (s, *r))).map_err(|()| {
            StoreError::HistoryIncomplete {
                kind: key.kind,
                name: key.name.clone(),
                revision: n,
            }
        })
    }

    /// The mesh `mesh` at revision `n` beside the mesh now, read at one tenant revision.
    pub async fn mesh_at(&self, tenant: &str, mesh: &str, n: i64) -> Result<MeshAt, StoreError> {
        let mut conn = self.pool().acquire().await?;
        loop {
            let read_at = self.history_bounds(&mut conn, tenant, n).await?;
            let scope = "tenant = $1 AND (mesh = $2 OR (mesh = '' AND kind = $3 AND name = $2))";
            let now_rows = sqlx::query(&format!(
                "SELECT kind, name, spec, revision FROM resources WHERE {scope}"
            ))
            .bind(tenant)
            .bind(mesh)
            .bind(Kind::Mesh.plural())
            .fetch_all(&mut *conn)
            .await?;
            let history_rows = sqlx::query(&format!(
                "SELECT kind, name, revision, op, spec FROM history WHERE {scope} \
                 ORDER BY revision, time"
            ))
            .bind(tenant)
            .bind(mesh)
            .bind(Kind::Mesh.plural())
            .fetch_all(&mut *conn)
            .await?;
            // A write committed (or history pruned) between the reads: read again.
            if self.history_bounds(&mut conn, tenant, n).await? != read_at {
                continue;
            }
            // By kind and name: `write_many` orders the writes by what refers to what.
            let mut keys: BTreeMap<(&str, Kind, String), (KeyRows, Option<Now>)> = BTreeMap::new();
            let key_of = |row: &AnyRow| -> Result<(&'static str, Kind, String), StoreError> {
                let kind: String = row.try_get("kind")?;
                let kind = Kind::from_plural(&kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("kind {kind:?}")))?;
                Ok((kind.plural(), kind, row.try_get("name")?))
            };
            for row in &history_rows {
                keys.entry(key_of(row)?).or_default().0.push(key_row(row)?);
            }
            for row in &now_rows {
                let spec = json_column(row, "spec")?;
                keys.entry(key_of(row)?).or_default().1 = Some((spec, row.try_get("revision")?));
            }
            let mut resources = Vec::with_capacity(keys.len());
            for ((_, kind, name), (rows, now)) in keys {
                let then =
                    state_at(n, &rows, now.as_ref().map(|(s, r)| (s, *r))).map_err(|()| {
                        StoreError::HistoryIncomplete {
                            kind,
                            name: name.clone(),
                            revision: n,
                        }
                    })?;
                let key = ResourceKey::new(tenant, mesh, kind, &name);
                resources.push((key, now.map(|(s, _)| s), then));
            }
            return Ok(MeshAt { read_at, resources });
        }
    }

    /// Starts pruning history older than `retention`, now and then every tenth of it
    /// (between 10 s and 10 min), like [`Store::spawn_change_pruning`].
    pub fn spawn_history_pruning(&self, retention: Duration) -> tokio::task::JoinHandle<()> {
        self.spawn_pruning(
            retention,
            "the resource history",
            |store, before| async move { store.prune_history(before).await },
        )
    }

    /// Removes history written before `before_ms` (Unix ms), except each resource's row in
    /// effect then (its spec at the horizon, which a rollback to a later revision needs),
    /// and records per tenant the revision from which history is complete. Returns how many
    /// rows were removed.
    pub async fn prune_history(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.prune_by_tenant(
            "history",
            "history_pruned_through",
            before_ms,
            |tenant, through| {
                // Audit rows (credentials) go by time; a resource's rows up to `through` go
                // when a later one up to `through` replaces them, or when they delete it.
                sqlx::query(
                    "DELETE FROM history WHERE tenant = $1 AND ( \
                 (mesh = '' AND kind <> $3 AND time < $4) OR \
                 ((mesh <> '' OR kind = $3) AND revision <= $2 AND (op = 'delete' OR EXISTS ( \
                 SELECT 1 FROM history AS later WHERE later.tenant = history.tenant \
                 AND later.mesh = history.mesh AND later.kind = history.kind \
                 AND later.name = history.name AND later.revision > history.revision \
                 AND later.revision <= $2))))",
                )
                .bind(tenant)
                .bind(through)
                .bind(Kind::Mesh.plural())
                .bind(before_ms)
            },
        )
        .await
    }
}

/// A JSON text column.
fn json_column(row: &AnyRow, column: &str) -> Result<serde_json::Value, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn key_row(row: &AnyRow) -> Result<(i64, HistoryOp, Option<serde_json::Value>), StoreError> {
    let op: String = row.try_get("op")?;
    let spec: Option<String> = row.try_get("spec")?;
    Ok((
        row.try_get("revision")?,
        HistoryOp::parse(&op)?,
        spec.map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| StoreError::Corrupt(format!("spec in history: {e}")))
        })
        .transpose()?,
    ))
}

fn page(rows: &[AnyRow], limit: u32) -> Result<HistoryPage, StoreError> {
    let mut items = rows
        .iter()
        .map(row_to_entry)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(cursor)
    } else {
        None
    };
    Ok(HistoryPage { items, next })
}

/// The history rows of a write at `revision`, ten columns each, as `VALUES` rows numbered
/// from `$first`, with their binds: `(sql, texts and ints in order)`.
pub(crate) fn values(
    rows: &[HistoryRow<'_>],
    tenant: &str,
    now: i64,
    first: usize,
) -> (String, Vec<Bind>) {
    let mut binds = Vec::with_capacity(rows.len() * 9);
    let mut sql = Vec::with_capacity(rows.len());
    for (revision, mesh, kind, name, rec) in rows {
        let mut cols = Vec::with_capacity(10);
        // None binds nothing: SQL NULL.
        let mut push = |b: Option<Bind>| match b {
            Some(b) => {
                binds.push(b);
                cols.push(format!("${}", first + binds.len() - 1));
            }
            None => cols.push("NULL".to_owned()),
        };
        let (id, description) = rec
            .actor
            .as_ref()
            .map_or(("", ""), |a| (a.id.as_str(), a.description.as_str()));
        for b in [
            Some(Bind::Text(tenant.to_owned())),
            Some(Bind::Int(*revision)),
            Some(Bind::Text((*mesh).to_owned())),
            Some(Bind::Text(kind.plural().to_owned())),
            Some(Bind::Text((*name).to_owned())),
            Some(Bind::Text(rec.op.as_str().to_owned())),
            rec.spec.clone().map(Bind::Text),
            Some(Bind::Int(now)),
            Some(Bind::Text(id.to_owned())),
            Some(Bind::Text(description.to_owned())),
        ] {
            push(b);
        }
        sql.push(format!("({})", cols.join(", ")));
    }
    (sql.join(", "), binds)
}

/// A bind parameter of [`values`].
pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

pub(crate) const INSERT: &str = "INSERT INTO history (tenant, revision, mesh, kind, name, op, \
                                 spec, time, credential_id, credential_description)";

/// History rows per statement when they do not ride on the change log's (10 parameters
/// each: SQLite allows 32,766 in a statement, PostgreSQL 65,535 with the change log's).
pub(crate) const PER_STATEMENT: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_state_at_a_revision_is_the_last_row_up_to_it() {
        let rows = vec![
            (3, HistoryOp::Create, Some(json!({"a": 1}))),
            (5, HistoryOp::Update, Some(json!({"a": 2}))),
            (7, HistoryOp::Delete, None),
        ];
        assert_eq!(state_at(4, &rows, None), Ok(Some(json!({"a": 1}))));
        assert_eq!(state_at(6, &rows, None), Ok(Some(json!({"a": 2}))));
        assert_eq!(state_at(7, &rows, None), Ok(None));
        // Before its creation: absent.
        assert_eq!(state_at(2, &rows, None), Ok(None));
        // Only an update after n, nothing before: written before history was kept.
        let later = vec![(5, HistoryOp::Update, Some(json!({})))];
        assert_eq!(state_at(4, &later, None), Err(()));
        // No history: the row now, if it is from n or before.
        let now = json!({"b": 1});
        assert_eq!(state_at(4, &[], Some((&now, 3))), Ok(Some(now.clone())));
        assert_eq!(state_at(4, &[], Some((&now, 5))), Err(()));
        assert_eq!(state_at(4, &[], None), Ok(None));
    }

    #[test]
    fn a_delete_row_binds_no_spec() {
        let rec = Recorded {
            op: HistoryOp::Delete,
            spec: None,
            actor: None,
        };
        let (sql, binds) = values(&[(4, "m", Kind::Service, "s", &rec)], "t", 9, 3);
        assert_eq!(sql, "($3, $4, $5, $6, $7, $8, NULL, $9, $10, $11)");
        assert_eq!(binds.len(), 9);
    }
}
