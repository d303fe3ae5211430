//! Several writes sent to PostgreSQL as one statement.
//!
//! A resource write runs under its tenant's revision lock, and every round trip it makes
//! there is time the tenant's other writers wait. The writes of one resource (its row, its
//! reference and claim rows, its mesh's size) touch different rows, so on PostgreSQL they go
//! as one statement: every write but the last becomes a data-modifying `WITH` clause, which
//! PostgreSQL runs whether or not the main statement reads it, all in one snapshot. That is
//! only correct when no two of them touch the same row, which the callers ensure (they write
//! differences, never a delete and an insert of the same key). On SQLite, which runs in
//! process and has no data-modifying `WITH`, the writes run one after another.

use crate::{Backend, StoreError};
use sqlx::{Any, Transaction};

/// Bind parameters one PostgreSQL statement may carry before the batch sends what it has:
/// PostgreSQL's limit is 65,535.
const MAX_PARAMS: usize = 30_000;

/// One bind parameter.
enum Arg {
    Text(String),
    Int(i64),
}

/// The placeholders of the statement being added: each call binds a value and returns its
/// `$n`, numbered for the statement it will run in.
pub(crate) struct Params<'a> {
    args: &'a mut Vec<Arg>,
    /// Parameters bound before this statement in the same round trip.
    offset: usize,
    added: usize,
}

impl Params<'_> {
    fn push(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        self.added += 1;
        format!("${}", self.offset + self.added)
    }

    pub(crate) fn text(&mut self, value: impl Into<String>) -> String {
        self.push(Arg::Text(value.into()))
    }

    pub(crate) fn int(&mut self, value: i64) -> String {
        self.push(Arg::Int(value))
    }
}

/// Writes gathered for one round trip on PostgreSQL (one each on SQLite).
pub(crate) struct Batch {
    backend: Backend,
    /// The statements, each with its parameters.
    parts: Vec<(String, Vec<Arg>)>,
    /// Parameters in `parts`.
    params: usize,
}

impl Batch {
    pub(crate) fn new(backend: Backend) -> Batch {
        Batch {
            backend,
            parts: Vec::new(),
            params: 0,
        }
    }

    /// Adds a write: `sql` returns its text, taking a placeholder from the [`Params`] for
    /// each value it binds.
    pub(crate) async fn push(
        &mut self,
        tx: &mut Transaction<'static, Any>,
        sql: impl FnOnce(&mut Params<'_>) -> String,
    ) -> Result<(), StoreError> {
        let mut args = Vec::new();
        let offset = match self.backend {
            Backend::Postgres => self.params,
            Backend::Sqlite => 0,
        };
        let mut p = Params {
            args: &mut args,
            offset,
            added: 0,
        };
        let text = sql(&mut p);
        self.params += args.len();
        self.parts.push((text, args));
        if self.backend == Backend::Sqlite || self.params >= MAX_PARAMS {
            self.send(tx).await?;
        }
        Ok(())
    }

    /// Sends what is gathered; call it once all the writes are added.
    pub(crate) async fn send(
        &mut self,
        tx: &mut Transaction<'static, Any>,
    ) -> Result<(), StoreError> {
        let parts = std::mem::take(&mut self.parts);
        self.params = 0;
        let Some(sql) = compose(parts.iter().map(|(text, _)| text.as_str())) else {
            return Ok(());
        };
        let mut query = sqlx::query(&sql);
        for arg in parts.into_iter().flat_map(|(_, args)| args) {
            query = match arg {
                Arg::Text(v) => query.bind(v),
                Arg::Int(v) => query.bind(v),
            };
        }
        query.execute(&mut **tx).await?;
        Ok(())
    }
}

/// One statement running `parts`: the last as the main statement, the others in `WITH`.
fn compose<'a>(parts: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut parts: Vec<&str> = parts.collect();
    let last = parts.pop()?;
    if parts.is_empty() {
        return Some(last.to_owned());
    }
    let with: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, text)| format!("w{i} AS ({text})"))
        .collect();
    Some(format!("WITH {} {last}", with.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_but_the_last_go_in_with_clauses() {
        assert_eq!(compose(std::iter::empty()), None);
        assert_eq!(
            compose(["DELETE a"].into_iter()).as_deref(),
            Some("DELETE a")
        );
        assert_eq!(
            compose(["DELETE a", "INSERT b", "UPDATE c"].into_iter()).as_deref(),
            Some("WITH w0 AS (DELETE a), w1 AS (INSERT b) UPDATE c")
        );
    }

    #[test]
    fn placeholders_number_from_the_offset() {
        let mut args = Vec::new();
        let mut p = Params {
            args: &mut args,
            offset: 3,
            added: 0,
        };
        assert_eq!((p.text("a"), p.int(1)), ("$4".to_owned(), "$5".to_owned()));
        assert_eq!(args.len(), 2);
    }
}
