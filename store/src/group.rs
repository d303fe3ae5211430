//! Group commit: the concurrent writes of one tenant committed together.
//!
//! Writers of a tenant serialize on its revision row (PostgreSQL) or on the writer's turn
//! (SQLite), and each commit waits for its WAL flush while holding that lock, so a tenant's
//! write rate is at most one over (round trips under the lock + one flush). Here the writes
//! of a tenant queue instead; one task per tenant takes every write waiting (up to
//! [`MAX_GROUP`]), runs them one after another in one transaction, each with its own
//! revision, and commits once. Every writer is answered only after that commit.
//!
//! A write runs its checks (reads) before it writes anything. A write whose checks fail (a
//! missing reference, a claimed host name, a stale `If-Match`) has written nothing: it gets
//! its own error and the others go on, and it takes no revision. A database error, after
//! which PostgreSQL refuses the rest of the transaction, fails the whole group: nothing of
//! it is committed, the write that hit it gets the error and the others
//! [`StoreError::GroupFailed`].

use crate::{Backend, ChangeOp, Notice, Store, StoreError, now_ms};
use sqlx::{Any, Row, Transaction};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use switchboard_model::Kind;
use tokio::sync::oneshot;

/// The most writes committed together: bounds the wait of the last one and the size of the
/// change log's insert.
const MAX_GROUP: usize = 64;

pub(crate) type Tx = Transaction<'static, Any>;

/// A future borrowing the transaction.
pub(crate) type TxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a committed write records in the change log, `(mesh, kind, name, op)`, and what it
/// keeps in history (None: nothing, as for a CA write, which changes no spec).
pub(crate) type ChangeRow = (
    String,
    Kind,
    String,
    ChangeOp,
    Option<Box<crate::history::Recorded>>,
);

/// Why a write of a group did not write.
#[derive(Debug)]
pub(crate) enum JobError {
    /// Its checks failed before it wrote anything: it fails alone.
    Refused(StoreError),
    /// The transaction cannot go on: the whole group fails.
    Fatal(StoreError),
}

impl JobError {
    /// An error of the checks: refused, unless the database failed (PostgreSQL then refuses
    /// the transaction's further statements).
    pub(crate) fn check(e: StoreError) -> JobError {
        match e {
            StoreError::Database(_) => JobError::Fatal(e),
            e => JobError::Refused(e),
        }
    }

    /// The error itself, for a write run alone.
    pub(crate) fn into_inner(self) -> StoreError {
        match self {
            JobError::Refused(e) | JobError::Fatal(e) => e,
        }
    }
}

/// What running a write did.
enum Ran {
    Wrote(Vec<ChangeRow>),
    Refused,
}

/// How a group ended, for one of its writes.
enum Outcome {
    /// Committed (a refused write keeps its own error).
    Committed,
    Failed(StoreError),
}

/// One queued write, its result type erased.
trait Job: Send {
    /// Runs the write at `revision` (which it takes only when it writes).
    fn run<'a>(
        &'a mut self,
        tx: &'a mut Tx,
        revision: i64,
    ) -> TxFuture<'a, Result<Ran, StoreError>>;
    /// Answers the writer.
    fn answer(self: Box<Self>, outcome: Outcome);
    /// The writer's span (its REST request's), parent of the write's commit span.
    fn caller(&self) -> &tracing::Span;
}

struct Typed<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    answer: oneshot::Sender<Result<T, StoreError>>,
    caller: tracing::Span,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send + 'static,
    F: for<'a> FnOnce(&'a mut Tx, i64) -> TxFuture<'a, Result<(T, Vec<ChangeRow>), JobError>>
        + Send
        + 'static,
{
    fn run<'a>(
        &'a mut self,
        tx: &'a mut Tx,
        revision: i64,
    ) -> TxFuture<'a, Result<Ran, StoreError>> {
        Box::pin(async move {
            let Some(work) = self.work.take() else {
                return Ok(Ran::Refused);
            };
            match work(tx, revision).await {
                Ok((value, changes)) => {
                    self.result = Some(Ok(value));
                    Ok(Ran::Wrote(changes))
                }
                Err(JobError::Refused(e)) => {
                    self.result = Some(Err(e));
                    Ok(Ran::Refused)
                }
                Err(JobError::Fatal(e)) => Err(e),
            }
        })
    }

    fn answer(self: Box<Self>, outcome: Outcome) {
        let result = match (outcome, self.result) {
            (Outcome::Committed, Some(result)) => result,
            (Outcome::Committed, None) => {
                Err(StoreError::GroupFailed("the write was not run".to_owned()))
            }
            (Outcome::Failed(e), _) => Err(e),
        };
        // The writer may have gone (its request was cancelled); the write stands.
        let _ = self.answer.send(result);
    }

    fn caller(&self) -> &tracing::Span {
        &self.caller
    }
}

/// The tenants whose writes are queued; a tenant is present while its task runs.
#[derive(Default)]
pub(crate) struct Groups {
    queues: Mutex<HashMap<String, VecDeque<Box<dyn Job>>>>,
}

impl Groups {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Box<dyn Job>>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ends a tenant's task: on a panic, drops its queue so that its writers get an error
/// rather than wait forever, and the next write starts a new task.
struct Running<'a> {
    groups: &'a Groups,
    tenant: &'a str,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.groups.lock().remove(self.tenant);
        }
    }
}

impl Store {
    /// Runs `work` under the tenant's lock in the next group of its writes and answers after
    /// the group commits. `work` gets the transaction and the revision it writes at; it must
    /// do all its checks before its first write (see the module documentation) and return
    /// its result with the changes to log.
    pub(crate) async fn write_in_group<T, F>(&self, tenant: &str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Tx, i64) -> TxFuture<'a, Result<(T, Vec<ChangeRow>), JobError>>
            + Send
            + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job = Box::new(Typed {
            work: Some(work),
            result: None,
            answer,
            caller: tracing::Span::current(),
        });
        let start = {
            let mut queues = self.groups().lock();
            match queues.get_mut(tenant) {
                Some(queue) => {
                    queue.push_back(job);
                    false
                }
                None => {
                    queues.insert(tenant.to_owned(), VecDeque::from([job as Box<dyn Job>]));
                    true
                }
            }
        };
        if start {
            let (store, tenant) = (self.clone(), tenant.to_owned());
            tokio::spawn(async move { store.run_groups(&tenant).await });
        }
        answered.await.map_err(|_| {
            StoreError::GroupFailed("the write's group ended without an answer".to_owned())
        })?
    }

    /// How many of the tenant's writes wait for a group (not those of the group being
    /// committed), for tests that line writes up behind a held lock.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn queued_writes(&self, tenant: &str) -> usize {
        self.groups().lock().get(tenant).map_or(0, VecDeque::len)
    }

    /// Whether the tenant's group task is running (it has taken a group and may be waiting
    /// for the tenant's lock), for the same tests.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn group_running(&self, tenant: &str) -> bool {
        self.groups().lock().contains_key(tenant)
    }

    /// The tenant's task: commits groups until its queue is empty.
    async fn run_groups(&self, tenant: &str) {
        let _running = Running {
            groups: self.groups(),
            tenant,
        };
        loop {
            let jobs: Vec<Box<dyn Job>> = {
                let mut queues = self.groups().lock();
                let Some(queue) = queues.get_mut(tenant) else {
                    return;
                };
                if queue.is_empty() {
                    queues.remove(tenant);
                    return;
                }
                let n = queue.len().min(MAX_GROUP);
                queue.drain(..n).collect()
            };
            self.run_group(tenant, jobs).await;
        }
    }

    /// Commits one group and answers its writers.
    async fn run_group(&self, tenant: &str, mut jobs: Vec<Box<dyn Job>>) {
        metrics::histogram!("switchboard_store_group_writes").record(jobs.len() as f64);
        match self.commit_group(tenant, &mut jobs).await {
            Ok(()) => {
                for job in jobs {
                    job.answer(Outcome::Committed);
                }
            }
            Err(GroupError::NoTenant) => {
                for job in jobs {
                    job.answer(Outcome::Failed(StoreError::NotFound {
                        what: "tenant",
                        name: tenant.into(),
                    }));
                }
            }
            Err(GroupError::Failed { culprit, error }) => {
                tracing::warn!(%tenant, writes = jobs.len(), %error, "a group of writes failed; none was committed");
                let single = jobs.len() == 1;
                let message = error.to_string();
                let mut error = Some(error);
                for (i, job) in jobs.into_iter().enumerate() {
                    let own = if culprit == Some(i) || single {
                        error.take()
                    } else {
                        None
                    };
                    let e = own.unwrap_or_else(|| StoreError::GroupFailed(message.clone()));
                    job.answer(Outcome::Failed(e));
                }
            }
        }
    }

    /// Runs the group's writes in one transaction, each at the next revision, and commits.
    async fn commit_group(
        &self,
        tenant: &str,
        jobs: &mut [Box<dyn Job>],
    ) -> Result<(), GroupError> {
        let _t = crate::Timer::start("group_commit");
        let jobs_len = jobs.len();
        let turn = self.write_turn().await;
        let mut tx = self.pool().begin().await?;
        // The lock: the tenant's other writers (other replicas, CA writes) wait from here.
        let row =
            sqlx::query("UPDATE tenants SET update_time = $1 WHERE name = $2 RETURNING revision")
                .bind(now_ms())
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            return Err(GroupError::NoTenant);
        };
        let base: i64 = row.try_get("revision").map_err(StoreError::from)?;
        let mut revision = base;
        let mut changes: Vec<(i64, ChangeRow)> = Vec::new();
        // Each write's commit span (child of its writer's request span), ended at the commit.
        let mut spans = Vec::new();
        for (i, job) in jobs.iter_mut().enumerate() {
            match job.run(&mut tx, revision + 1).await {
                Ok(Ran::Wrote(rows)) => {
                    revision += 1;
                    spans.push(commit_span(job.caller(), tenant, revision, &rows, jobs_len));
                    changes.extend(rows.into_iter().map(|c| (revision, c)));
                }
                Ok(Ran::Refused) => {}
                Err(error) => {
                    return Err(GroupError::Failed {
                        culprit: Some(i),
                        error,
                    });
                }
            }
        }
        if revision == base {
            tx.rollback().await?;
            return Ok(());
        }
        let notice = Notice::Committed {
            tenant: tenant.into(),
            revision,
        };
        let rows: Vec<_> = changes
            .iter()
            .map(|(r, (mesh, kind, name, op, _))| (*r, mesh.as_str(), *kind, name.as_str(), *op))
            .collect();
        let history: Vec<_> = changes
            .iter()
            .filter_map(|(r, (mesh, kind, name, _, rec))| {
                rec.as_deref()
                    .map(|rec| (*r, mesh.as_str(), *kind, name.as_str(), rec))
            })
            .collect();
        self.record_changes(&mut tx, tenant, &rows, &history, &notice, Some(revision))
            .await?;
        tx.commit().await?;
        drop(turn);
        for (span, revision, meshes) in spans {
            self.record_commit_trace(&span, tenant, revision, meshes);
        }
        if self.backend() == Backend::Sqlite {
            let _ = self.notices().send(notice);
        }
        Ok(())
    }
}

/// The `store.commit` span of the write at `revision` that changed `rows`, child of the
/// writer's span, with the meshes it changed.
pub(crate) fn commit_span(
    caller: &tracing::Span,
    tenant: &str,
    revision: i64,
    rows: &[ChangeRow],
    group: usize,
) -> (tracing::Span, i64, Vec<String>) {
    let mut meshes: Vec<String> = rows
        .iter()
        .map(|(mesh, kind, name, _, _)| {
            if *kind == Kind::Mesh {
                name.clone()
            } else {
                mesh.clone()
            }
        })
        .collect();
    meshes.sort();
    meshes.dedup();
    let span = tracing::info_span!(
        target: switchboard_runtime::otel::TRACE_TARGET,
        parent: caller,
        "store.commit",
        tenant,
        mesh = %meshes.join(","),
        revision,
        writes_in_group = group,
    );
    (span, revision, meshes)
}

enum GroupError {
    NoTenant,
    Failed {
        /// The write whose statement failed, if the failure was one of a write's.
        culprit: Option<usize>,
        error: StoreError,
    },
}

impl From<StoreError> for GroupError {
    fn from(error: StoreError) -> Self {
        GroupError::Failed {
            culprit: None,
            error,
        }
    }
}

impl From<sqlx::Error> for GroupError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::from(error).into()
    }
}
