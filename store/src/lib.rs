//! The mesh configuration store.
//!
//! One portable schema (`migrations/`) on PostgreSQL or on embedded SQLite, reached through
//! sqlx's Any driver so every query is written once. Invariants:
//! - every write is one transaction that first bumps the tenant's revision (which also
//!   serializes writers of a tenant) and stamps what it writes with the new revision;
//! - references and claims are checked inside that transaction, so no dangling reference or
//!   double claim can be committed;
//! - each write records what it changed in `changes`, and announces `(tenant, revision)`
//!   after commit: through LISTEN/NOTIFY on PostgreSQL (reaching every replica), in process
//!   on SQLite.
//!
//! Code map:
//! - `batch`: a write's several statements sent to PostgreSQL as one.
//! - `group`: group commit: a tenant's concurrent writes committed in one transaction, each
//!   with its own revision, answered after the commit.
//! - `resources`: the transactional write path ([`Store::put_spec`] records the references
//!   and claims a spec derives, so no caller computes them) and the reads;
//!   `resources/many.rs` several writes in one transaction at one revision
//!   ([`Store::write_many`], all or nothing); `resources/dump.rs` a whole tenant read at one
//!   revision, for exports.
//! - `changes`: the change log, commit notices and the PostgreSQL listener.
//! - `history`: every spec a write stored with its credential (recorded beside the change
//!   log), the audit log, a resource or mesh as it was at a revision, and their pruning;
//!   `resources/rollback.rs` the rollbacks built on them.
//! - `commit_traces`: the span of each recent commit of this replica (a `store.commit` span,
//!   child of the writer's request span), which the xDS server's snapshot builds join.
//! - `cas`: each mesh's sealed CAs, the rotation steps and the trust bundle; `ca_rows` the
//!   row types and in-transaction helpers it shares with `resources`.
//! - `tenants`, `credentials`: tenants; API keys and proxy tokens (stored as SHA-256).
//! - `quotas`: per-tenant quotas, their defaults and cache, and the `resourcesPerMesh` check
//!   of the write transaction.
//! - `proxies`: per-stream xDS status rows, the typed [`ProxyStatusRecord`] the xDS server
//!   writes and the REST API shows, and what the rollout view reads of them.
//! - `types`, `error`: keys, stored values, [`StoreError`].
//! - `metrics`: the store's metrics and their documentation; `replicas`: replica heartbeats
//!   and the reads behind the change-log-lag metrics.
//! - `testing` (feature): fresh databases of either backend for tests.

mod batch;
mod ca_rows;
mod cas;
mod changes;
mod commit_traces;
mod credentials;
mod error;
mod group;
mod history;
pub mod jwt;
pub mod metrics;
mod proxies;
mod quotas;
mod replicas;
mod resources;
mod tenants;
mod types;

#[cfg(feature = "testing")]
pub mod testing;

pub use ca_rows::{CaState, StoredCa};
pub use changes::Notice;
pub use commit_traces::MAX_LINKED_COMMITS;
pub use credentials::{Credential, CredentialKind, NewCredential};
pub use error::{Referrer, StoreError};
pub use history::{Actor, AuditQuery, HistoryEntry, HistoryOp, HistoryPage, MeshAt};
pub use proxies::{
    AckedRecord, CertificateRecord, NackRecord, PROXY_CHUNK, PROXY_GONE_MS, PROXY_STALE_MS,
    ProxyRoleRecord, ProxyRow, ProxyStatusRecord, RolloutRow, SentRecord, TypeState,
    TypeStatusRecord,
};
pub use quotas::{QUOTA_CACHE_TTL, QUOTA_MAX, QuotaOverrides, Quotas, TenantQuotas};
pub use replicas::{REPLICA_FORGET_MS, ReplicaRow};
pub use resources::{
    BatchEffect, BatchError, BatchItem, BatchOptions, BatchOutcome, BatchWrite, Page, Precondition,
    Rollback, TenantDump, WriteAt, WriteOptions, dependency_rank,
};
pub use types::{Change, ChangeOp, MeshSnapshot, ResourceKey, StoredResource, Tenant};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// The longest a store call waits for a database connection. While the database is
/// unreachable (stopped, refusing, or a connect that never completes) every call fails with
/// a [`StoreError::Database`] (`PoolTimedOut`) within this bound instead of hanging: the REST
/// API answers 503 with `Retry-After`, and xDS admission that needs the store answers
/// UNAVAILABLE. Short, because an outage costs every call this long (sqlx retries a refused
/// connection until then); long enough that a busy pool's queue never reaches it.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The channel on which PostgreSQL replicas announce commits.
pub const NOTIFY_CHANNEL: &str = "switchboard_changes";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    url: String,
    notices: broadcast::Sender<Notice>,
    /// SQLite allows one writer at a time; queueing writers here, in order, beats SQLite's
    /// busy handler, which sleeps in growing steps (tens of ms) while a lock is held.
    sqlite_writer: Arc<tokio::sync::Mutex<()>>,
    /// Signs and verifies JWT proxy tokens ([`Store::set_proxy_jwt_key`]).
    proxy_jwt: std::sync::OnceLock<jwt::ProxyJwtKey>,
    /// Quota defaults and the per-tenant quota cache.
    quotas: quotas::QuotaState,
    /// Mesh snapshots read ([`Store::mesh_reads`]).
    mesh_reads: std::sync::atomic::AtomicU64,
    /// The tenants' queued writes (group commit).
    groups: group::Groups,
    /// The spans of this replica's recent commits, for the xDS server's traces.
    commit_traces: commit_traces::CommitTraces,
}

/// Each SQLite connection's page cache, in KiB (a negative `cache_size`): 8 connections hold
/// at most 4 MiB of pages.
const SQLITE_CACHE_SIZE: &str = "PRAGMA cache_size = -512";

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://path`), without migrating.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Config(format!(
                "database_url must start with postgres:// or sqlite:, got {:?}",
                redact(url)
            )));
        };
        let mut opts = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        opts = match backend {
            Backend::Postgres => opts.max_connections(16),
            Backend::Sqlite => opts.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers run beside the single writer; busy_timeout makes a second
                    // writer wait for the first instead of failing at once.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    // A small page cache per connection: the control plane holds what it
                    // serves in its own snapshots, and the pages it reads again (a snapshot
                    // build, a write's checks) come from the OS's file cache. With SQLite's
                    // default (2 MiB each, 16 MiB for the pool), the pages of a fleet's status
                    // rows stayed in the process after the fleet left.
                    conn.execute(SQLITE_CACHE_SIZE).await?;
                    Ok(())
                })
            }),
        };
        crate::metrics::init();
        let pool = opts.connect(url).await?;
        let (notices, _) = broadcast::channel(1024);
        let store = Store {
            inner: Arc::new(Inner {
                pool,
                backend,
                url: url.to_string(),
                notices,
                sqlite_writer: Arc::new(tokio::sync::Mutex::new(())),
                proxy_jwt: std::sync::OnceLock::new(),
                quotas: quotas::QuotaState::default(),
                mesh_reads: std::sync::atomic::AtomicU64::new(0),
                groups: group::Groups::default(),
                commit_traces: commit_traces::CommitTraces::default(),
            }),
        };
        if backend == Backend::Postgres {
            changes::spawn_pg_listener(store.clone());
        }
        Ok(store)
    }

    /// Connects and applies pending migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = Store::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations from `migrations/` (embedded at build time).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.inner.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Answers while the database does; `/readyz` uses it.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT name FROM tenants WHERE name = ''")
            .fetch_optional(&self.inner.pool)
            .await?;
        Ok(())
    }

    /// Commit notices of every tenant. A `Notice::Resync` means notices may have been missed
    /// (the PostgreSQL listener reconnected): re-read the revisions you care about.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    pub(crate) fn url(&self) -> &str {
        &self.inner.url
    }

    /// On SQLite, the turn to write (held until the transaction ends); nothing on PostgreSQL.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self.inner.backend {
            Backend::Sqlite => Some(Arc::clone(&self.inner.sqlite_writer).lock_owned().await),
            Backend::Postgres => None,
        }
    }

    pub(crate) fn notices(&self) -> &broadcast::Sender<Notice> {
        &self.inner.notices
    }

    pub(crate) fn quota_state(&self) -> &quotas::QuotaState {
        &self.inner.quotas
    }

    /// How many mesh snapshots this handle (and its clones) has read: what xDS admission of
    /// meshes not yet loaded costs the database.
    pub fn mesh_reads(&self) -> u64 {
        self.inner
            .mesh_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_mesh_read(&self) {
        self.inner
            .mesh_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn groups(&self) -> &group::Groups {
        &self.inner.groups
    }
}

/// A database URL with any password removed, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..s], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Times a store operation into `switchboard_store_seconds{op, kind}` (the kind from
/// `metrics::op_kind`).
pub(crate) struct Timer(&'static str, std::time::Instant);

impl Timer {
    pub fn start(op: &'static str) -> Self {
        Timer(op, std::time::Instant::now())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        ::metrics::histogram!(
            "switchboard_store_seconds", "op" => self.0, "kind" => crate::metrics::op_kind(self.0)
        )
        .record(self.1.elapsed().as_secs_f64());
    }
}
