//! What a resource write checks, read in one statement, and the reference and claim rows it
//! replaces, written with multi-row statements.
//!
//! The write path runs under the tenant's revision lock (or, on SQLite, the writer's turn):
//! every statement it sends after taking the lock is a round trip the tenant's other writers
//! wait for, so throughput is about one over the number of those round trips. A write reads
//! its mesh, its current row, the resources it refers to, the owners of the values it claims
//! and the edges it holds now in one `UNION ALL` query, and rewrites its edges only when they
//! changed.

use super::BindKey;
use crate::batch::{Batch, Params};
use crate::{ResourceKey, StoreError, StoredResource};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use std::collections::{BTreeSet, HashMap};
use switchboard_model::{Claim, Kind, Reference};

/// Targets or claims read per statement, for specs with very many references: each is one
/// `UNION ALL` arm, and SQLite allows 500 arms in a statement (5 more are always there).
const PER_READ: usize = 200;

/// Rows inserted, or deleted by name, per statement, for the same reason (7 parameters per
/// row).
const PER_INSERT: usize = 500;

/// The references and claims a resource holds, as stored.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Edges {
    /// `(field, to_kind, to_name)`.
    refs: BTreeSet<(String, String, String)>,
    /// `(what, value)`.
    claims: BTreeSet<(String, String)>,
}

impl Edges {
    fn of(refs: &[Reference], claims: &[Claim]) -> Edges {
        Edges {
            refs: refs
                .iter()
                .map(|r| (r.field.clone(), r.kind.plural().to_owned(), r.name.clone()))
                .collect(),
            claims: claims
                .iter()
                .map(|c| (c.what.to_owned(), c.value.clone()))
                .collect(),
        }
    }
}

/// What the database says about a write, read under the lock.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// The resource's mesh exists (always false when writing a mesh: nothing is read).
    pub mesh_exists: bool,
    /// The resource as stored now.
    pub existing: Option<StoredResource>,
    /// The referenced resources that exist: `(kind, name)` to their spec's JSON text.
    targets: HashMap<(String, String), String>,
    /// Who holds each claimed value: `(what, value)` to `(owner_kind, owner_name)`.
    owners: HashMap<(String, String), (String, String)>,
    /// The edges the resource holds now.
    pub held: Edges,
    /// How many resources the mesh holds (`mesh_sizes`; 0 when writing a mesh).
    pub mesh_size: u64,
    /// The tenant's own `resourcesPerMesh` quota, if the platform admin set one.
    pub quota: Option<u64>,
}

impl Found {
    /// The stored spec of the resource `r` refers to, if it exists.
    pub fn target(&self, r: &Reference) -> Option<&str> {
        self.targets
            .get(&(r.kind.plural().to_owned(), r.name.clone()))
            .map(String::as_str)
    }

    /// Who holds the claimed value now, as `(kind, name)`.
    pub fn owner(&self, c: &Claim) -> Option<&(String, String)> {
        self.owners.get(&(c.what.to_owned(), c.value.clone()))
    }
}

/// Reads everything the write of `key` with `refs` and `claims` checks. Call it under the
/// lock: the answer is only current while the lock is held.
pub(super) async fn read(
    tx: &mut Transaction<'static, Any>,
    key: &ResourceKey,
    refs: &[Reference],
    claims: &[Claim],
) -> Result<Found, StoreError> {
    let mut targets: Vec<(&str, &str)> = refs
        .iter()
        .map(|r| (r.kind.plural(), r.name.as_str()))
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let mut claimed: Vec<(&str, &str)> =
        claims.iter().map(|c| (c.what, c.value.as_str())).collect();
    claimed.sort_unstable();
    claimed.dedup();
    let mut target_chunks = targets.chunks(PER_READ);
    let mut claim_chunks = claimed.chunks(PER_READ);
    let mut found = Found::default();
    let mut first = true;
    loop {
        let t = target_chunks.next().unwrap_or(&[]);
        let c = claim_chunks.next().unwrap_or(&[]);
        if !first && t.is_empty() && c.is_empty() {
            return Ok(found);
        }
        first = false;
        // Every statement reads the resource's own rows again (rarely more than one runs),
        // so that each binds all four key parameters.
        let (sql, params) = statement(key, t, c);
        let mut query = sqlx::query(&sql).bind_key(key);
        for p in params {
            query = query.bind(p);
        }
        for row in query.fetch_all(&mut **tx).await? {
            take(&mut found, key, &row)?;
        }
    }
}

/// The `UNION ALL` query: the resource, its mesh and the edges it holds, then the given
/// targets and claimed values. `$1..$4` are the key; the extra parameters, all text, are
/// returned in order.
fn statement(
    key: &ResourceKey,
    targets: &[(&str, &str)],
    claimed: &[(&str, &str)],
) -> (String, Vec<String>) {
    const RESOURCE: &str =
        "kind, name, spec, labels AS extra, revision, create_time, update_time FROM resources";
    let mut parts = Vec::new();
    let mut params: Vec<String> = Vec::new();
    // The next parameter after the key's four.
    let param = |params: &mut Vec<String>, value: &str| {
        params.push(value.to_owned());
        format!("${}", params.len() + 4)
    };
    parts.push(format!(
        "SELECT 'self' AS part, {RESOURCE} \
         WHERE tenant = $1 AND mesh = $2 AND kind = $3 AND name = $4"
    ));
    if key.kind != Kind::Mesh {
        let meshes = param(&mut params, Kind::Mesh.plural());
        parts.push(format!(
            "SELECT 'mesh', {RESOURCE} \
             WHERE tenant = $1 AND mesh = '' AND kind = {meshes} AND name = $2"
        ));
        // The quota check's inputs: the mesh's size and the tenant's quota (-1: not set).
        parts.push(
            "SELECT 'size', '', '', '', '', \
             COALESCE((SELECT resources FROM mesh_sizes WHERE tenant = $1 AND mesh = $2), 0), \
             COALESCE((SELECT resources_per_mesh FROM tenant_quotas WHERE tenant = $1), -1), 0"
                .to_owned(),
        );
    }
    parts.push(
        "SELECT 'ref', to_kind, to_name, field, '', 0, 0, 0 FROM refs \
         WHERE tenant = $1 AND mesh = $2 AND from_kind = $3 AND from_name = $4"
            .to_owned(),
    );
    parts.push(
        "SELECT 'held', what, value, '', '', 0, 0, 0 FROM claims \
         WHERE tenant = $1 AND mesh = $2 AND owner_kind = $3 AND owner_name = $4"
            .to_owned(),
    );
    // One primary-key lookup per target and per claimed value: an `OR` of them made
    // PostgreSQL's generic plan scan the mesh (2 ms a write at a few thousand resources).
    for (kind, name) in targets {
        let (k, n) = (param(&mut params, kind), param(&mut params, name));
        parts.push(format!(
            "SELECT 'target', {RESOURCE} \
             WHERE tenant = $1 AND mesh = $2 AND kind = {k} AND name = {n}"
        ));
    }
    for (what, value) in claimed {
        let (w, v) = (param(&mut params, what), param(&mut params, value));
        parts.push(format!(
            "SELECT 'claim', owner_kind, owner_name, value, what, 0, 0, 0 FROM claims \
             WHERE tenant = $1 AND mesh = $2 AND what = {w} AND value = {v}"
        ));
    }
    (parts.join(" UNION ALL "), params)
}

/// Files one row of the `UNION ALL` query into `found`.
fn take(found: &mut Found, key: &ResourceKey, row: &AnyRow) -> Result<(), StoreError> {
    let part: String = row.try_get("part")?;
    let kind: String = row.try_get("kind")?;
    let name: String = row.try_get("name")?;
    match part.as_str() {
        "self" => {
            found.existing = Some(StoredResource {
                key: key.clone(),
                spec: super::spec_column(row, || format!("spec of {kind} {name:?}"))?,
                labels: super::labels_text(&row.try_get::<String, _>("extra")?)?,
                revision: row.try_get("revision")?,
                create_time: row.try_get("create_time")?,
                update_time: row.try_get("update_time")?,
            });
        }
        "mesh" => found.mesh_exists = true,
        "size" => {
            let (size, quota): (i64, i64) = (row.try_get("revision")?, row.try_get("create_time")?);
            found.mesh_size = u64::try_from(size)
                .map_err(|_| StoreError::Corrupt(format!("mesh size {size}")))?;
            found.quota = u64::try_from(quota).ok();
        }
        "ref" => {
            let field: String = row.try_get("spec")?;
            found.held.refs.insert((field, kind, name));
        }
        "held" => {
            found.held.claims.insert((kind, name));
        }
        "target" => {
            let spec: String = row.try_get("spec")?;
            found.targets.insert((kind, name), spec);
        }
        "claim" => {
            let (value, what): (String, String) = (row.try_get("spec")?, row.try_get("extra")?);
            found.owners.insert((what, value), (kind, name));
        }
        other => {
            return Err(StoreError::Corrupt(format!(
                "unexpected part {other:?} in a write's read"
            )));
        }
    }
    Ok(())
}

/// Adds to `batch` the deletes of every reference and claim `key` holds.
pub(super) async fn drop_edges(
    batch: &mut Batch,
    tx: &mut Transaction<'static, Any>,
    key: &ResourceKey,
) -> Result<(), StoreError> {
    for (table, owner) in [("refs", "from"), ("claims", "owner")] {
        batch
            .push(tx, |p| {
                format!(
                    "DELETE FROM {table} WHERE tenant = {} AND mesh = {} AND {owner}_kind = {} \
                     AND {owner}_name = {}",
                    p.text(&key.tenant),
                    p.text(&key.mesh),
                    p.text(key.kind.plural()),
                    p.text(&key.name)
                )
            })
            .await?;
    }
    Ok(())
}

/// Adds to `batch` the writes that make `key`, holding `held` now, hold exactly `refs` and
/// `claims`. Only the differences are written (rows no longer held deleted, new ones
/// inserted, a field now pointing elsewhere updated in place), so no row is both deleted and
/// inserted and the writes can share a statement.
pub(super) async fn replace_edges(
    batch: &mut Batch,
    tx: &mut Transaction<'static, Any>,
    key: &ResourceKey,
    refs: &[Reference],
    claims: &[Claim],
    held: &Edges,
) -> Result<(), StoreError> {
    let wanted = Edges::of(refs, claims);
    // A reference is keyed by its field: one whose field is still wanted is overwritten by
    // the insert below, so only fields no longer wanted are deleted.
    let fields: BTreeSet<&str> = wanted.refs.iter().map(|(f, _, _)| f.as_str()).collect();
    let gone: Vec<&str> = held
        .refs
        .iter()
        .map(|(f, _, _)| f.as_str())
        .filter(|f| !fields.contains(f))
        .collect();
    for chunk in gone.chunks(PER_READ) {
        batch
            .push(tx, |p| {
                let key_sql = key_params(p, key);
                let fields: Vec<String> = chunk.iter().map(|f| p.text(*f)).collect();
                format!(
                    "DELETE FROM refs WHERE {key_sql} AND field IN ({})",
                    fields.join(", ")
                )
            })
            .await?;
    }
    let gone: Vec<&(String, String)> = held.claims.difference(&wanted.claims).collect();
    for chunk in gone.chunks(PER_READ) {
        batch
            .push(tx, |p| {
                let (tenant, mesh) = (p.text(&key.tenant), p.text(&key.mesh));
                let any: Vec<String> = chunk
                    .iter()
                    .map(|(what, value)| {
                        format!("(what = {} AND value = {})", p.text(what), p.text(value))
                    })
                    .collect();
                format!(
                    "DELETE FROM claims WHERE tenant = {tenant} AND mesh = {mesh} AND ({})",
                    any.join(" OR ")
                )
            })
            .await?;
    }
    add_edges(
        batch,
        tx,
        key,
        wanted.refs.difference(&held.refs),
        wanted.claims.difference(&held.claims),
    )
    .await
}

/// `tenant = $a AND mesh = $b AND from_kind = $c AND from_name = $d` for `key`.
fn key_params(p: &mut Params<'_>, key: &ResourceKey) -> String {
    format!(
        "tenant = {} AND mesh = {} AND from_kind = {} AND from_name = {}",
        p.text(&key.tenant),
        p.text(&key.mesh),
        p.text(key.kind.plural()),
        p.text(&key.name)
    )
}

/// Adds the inserts of `key`'s new references (a field it held pointing elsewhere is
/// updated in place) and claims to `batch`.
async fn add_edges<'e>(
    batch: &mut Batch,
    tx: &mut Transaction<'static, Any>,
    key: &ResourceKey,
    refs: impl Iterator<Item = &'e (String, String, String)>,
    claims: impl Iterator<Item = &'e (String, String)>,
) -> Result<(), StoreError> {
    let refs: Vec<_> = refs.collect();
    for chunk in refs.chunks(PER_INSERT) {
        batch
            .push(tx, |p| {
                let rows: Vec<String> = chunk
                    .iter()
                    .map(|(field, to_kind, to_name)| {
                        let cols = [
                            p.text(&key.tenant),
                            p.text(&key.mesh),
                            p.text(key.kind.plural()),
                            p.text(&key.name),
                            p.text(field),
                            p.text(to_kind),
                            p.text(to_name),
                        ];
                        format!("({})", cols.join(", "))
                    })
                    .collect();
                format!(
                    "INSERT INTO refs (tenant, mesh, from_kind, from_name, field, to_kind, \
                     to_name) VALUES {} ON CONFLICT (tenant, mesh, from_kind, from_name, field) \
                     DO UPDATE SET to_kind = excluded.to_kind, to_name = excluded.to_name",
                    rows.join(", ")
                )
            })
            .await?;
    }
    let claims: Vec<_> = claims.collect();
    for chunk in claims.chunks(PER_INSERT) {
        batch
            .push(tx, |p| {
                let rows: Vec<String> = chunk
                    .iter()
                    .map(|(what, value)| {
                        let cols = [
                            p.text(&key.tenant),
                            p.text(&key.mesh),
                            p.text(what),
                            p.text(value),
                            p.text(key.kind.plural()),
                            p.text(&key.name),
                        ];
                        format!("({})", cols.join(", "))
                    })
                    .collect();
                format!(
                    "INSERT INTO claims (tenant, mesh, what, value, owner_kind, owner_name) \
                     VALUES {}",
                    rows.join(", ")
                )
            })
            .await?;
    }
    Ok(())
}

/// `($first, …), (…), …`: `rows` rows of `width` parameters, numbered from `first`.
pub(super) fn placeholders(rows: usize, width: usize, first: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (0..width)
                .map(|c| format!("${}", first + r * width + c))
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_in_order() {
        assert_eq!(placeholders(2, 3, 1), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 2, 3), "($3, $4)");
    }

    #[test]
    fn the_read_binds_each_target_and_claim_once() {
        let key = ResourceKey::new("t", "m", Kind::Route, "r");
        let (sql, params) = statement(
            &key,
            &[("services", "a"), ("services", "b")],
            &[("hostname", "h")],
        );
        assert_eq!(
            params,
            ["meshes", "services", "a", "services", "b", "hostname", "h"]
        );
        assert!(
            sql.contains("kind = $6 AND name = $7 UNION ALL")
                && sql.contains("kind = $8 AND name = $9 UNION ALL"),
            "{sql}"
        );
        assert!(sql.ends_with("what = $10 AND value = $11"), "{sql}");
        let (sql, params) = statement(&ResourceKey::mesh("t", "m"), &[], &[]);
        assert!(params.is_empty());
        assert!(!sql.contains("'mesh'"), "{sql}");
    }
}
