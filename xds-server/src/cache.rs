//! The snapshot cache: one [`MeshSnapshot`] per mesh that has streams, rebuilt when the mesh
//! changes and published through a `watch` channel so every stream of the mesh wakes up.
//!
//! **Invariants.**
//! - A mesh is loaded when its first stream arrives ([`SnapshotCache::acquire`]) and dropped
//!   when its last [`MeshHandle`] goes.
//! - Each loaded mesh has one task that owns its incremental [`Translator`]. It rebuilds at
//!   most once at a time: kicks that arrive during a rebuild coalesce into one follow-up
//!   rebuild, after a short debounce.
//! - If the store cannot be read, the last good snapshot stays published and the task retries
//!   with backoff.
//! - The translator sits in a slot the task empties while it rebuilds. Between rebuilds a
//!   planner may borrow it ([`SnapshotCache::translator_at`]) to apply a change and undo it,
//!   rather than read and translate the whole mesh again; a rebuild about to start refuses
//!   new borrowers, so it waits for one plan at most.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use switchboard_runtime::Backoff;
use switchboard_store::{Store, StoreError};
use switchboard_translator::{MeshResources, Translator};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::lookups::{LookupLimits, Refused, UnverifiedLookups};
use crate::push_trace::BuildTrace;
use crate::sds::{IssueError, WorkloadIssuer};
use crate::snapshot::{MeshSnapshot, mesh_config};

/// Tenant and mesh name.
pub type MeshKey = (String, String);

/// First wait before reading again a mesh the store could not give; it doubles per attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts to read a mesh the store could not give.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a mesh's watch channel holds.
#[derive(Debug, Clone)]
pub enum MeshState {
    /// The first load is in progress.
    Loading,
    Ready(Arc<MeshSnapshot>),
    /// The mesh or its tenant does not exist (or was deleted).
    Missing,
    /// The first load failed; the task keeps retrying.
    Unavailable(String),
}

/// Why a mesh cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("mesh {mesh:?} of tenant {tenant:?} does not exist")]
    NotFound { tenant: String, mesh: String },
    #[error(
        "the configuration store cannot be read ({0}); the server keeps retrying (hint: is \
         the database reachable?)"
    )]
    Unavailable(String),
    /// Clients without verified credentials are naming too many meshes not loaded here
    /// ([`crate::lookups`]).
    #[error(
        "too many streams without verified credentials are naming meshes not loaded on this \
         server (at most {per_second} such lookups per second): retry later, or authenticate \
         with a proxy token"
    )]
    Busy { per_second: String },
}

/// Shared by every [`MeshHandle`] of the same mesh and by the watcher.
#[derive(Debug)]
struct Shared {
    rx: watch::Receiver<MeshState>,
    kick: mpsc::Sender<SystemTime>,
    /// The tenant revision up to which this mesh is known to be current.
    checked: Arc<AtomicI64>,
    /// The task's translator between rebuilds.
    slot: Slot,
}

/// A mesh task's translator, shared with planners ([`SnapshotCache::translator_at`]).
type Slot = Arc<TranslatorSlot>;

#[derive(Debug, Default)]
struct TranslatorSlot {
    /// The translator and the tenant revision its configuration was read at; empty while a
    /// rebuild runs and before the first.
    built: Mutex<Option<Built>>,
    /// Set while the task wants the translator: no planner may take the lock meanwhile.
    wanted: AtomicBool,
}

struct Built {
    revision: i64,
    translator: Translator,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Built>> {
    // Nothing panics while holding the lock: the task only moves the translator in and out,
    // and a planner's panic is caught (the translator then dropped).
    slot.built.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct Entry {
    users: usize,
    shared: Arc<Shared>,
}

/// What a snapshot needs besides the store: the server's trust domain, and the mesh CA's
/// trust bundle (through the CA port, when there is one).
#[derive(Debug, Clone, Default)]
pub struct TrustSource {
    pub trust_domain: String,
    pub issuer: Option<Arc<dyn WorkloadIssuer>>,
}

struct Inner {
    store: Store,
    trust: TrustSource,
    meshes: Mutex<BTreeMap<MeshKey, Entry>>,
    /// Bounds the loads of clients without verified credentials.
    unverified: UnverifiedLookups,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotCache")
            .field("meshes", &self.meshes)
            .finish_non_exhaustive()
    }
}

/// Per-mesh snapshots of the meshes that have streams. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SnapshotCache {
    inner: Arc<Inner>,
}

impl SnapshotCache {
    /// A cache reading from `store` (and trust bundles from `trust`). Rebuilds follow the
    /// watcher's kicks, which are already debounced.
    pub fn new(store: Store, trust: TrustSource) -> Self {
        Self::with_lookup_limits(store, trust, LookupLimits::default())
    }

    /// [`SnapshotCache::new`] with `limits` on the loads of unverified clients.
    pub fn with_lookup_limits(store: Store, trust: TrustSource, limits: LookupLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                trust,
                meshes: Mutex::new(BTreeMap::new()),
                unverified: UnverifiedLookups::new(limits),
            }),
        }
    }

    /// [`SnapshotCache::acquire`] for a client whose credentials are not verified yet: a
    /// mesh not loaded is read only within [`crate::lookups`]' bounds (`Busy` beyond them),
    /// and one found missing a moment ago is `NotFound` without a read.
    pub async fn acquire_unverified(
        &self,
        tenant: &str,
        mesh: &str,
    ) -> Result<MeshHandle, CacheError> {
        let key = (tenant.to_owned(), mesh.to_owned());
        let not_found = || CacheError::NotFound {
            tenant: tenant.to_owned(),
            mesh: mesh.to_owned(),
        };
        let guard = &self.inner.unverified;
        if !self.meshes().contains_key(&key) {
            match guard.before_load(&key, Instant::now()) {
                Ok(()) => {}
                Err(Refused::Missing) => return Err(not_found()),
                Err(Refused::Busy) => {
                    crate::metrics::unverified_lookup_refused();
                    return Err(CacheError::Busy {
                        per_second: guard.limits().per_second.to_string(),
                    });
                }
            }
        }
        let acquired = self.acquire(tenant, mesh).await;
        if let Err(CacheError::NotFound { .. }) = &acquired {
            guard.missing(key, Instant::now());
        }
        acquired
    }

    fn meshes(&self) -> std::sync::MutexGuard<'_, BTreeMap<MeshKey, Entry>> {
        self.inner
            .meshes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The mesh's snapshot, loading it if no stream uses it yet. The handle keeps it loaded.
    pub async fn acquire(&self, tenant: &str, mesh: &str) -> Result<MeshHandle, CacheError> {
        let key = (tenant.to_owned(), mesh.to_owned());
        let rx = {
            let mut meshes = self.meshes();
            let entry = meshes.entry(key.clone()).or_insert_with(|| Entry {
                users: 0,
                shared: self.spawn_mesh(&key),
            });
            entry.users += 1;
            entry.shared.rx.clone()
        };
        let mut handle = MeshHandle {
            cache: self.clone(),
            key,
            rx,
        };
        let state = handle
            .rx
            .wait_for(|s| !matches!(s, MeshState::Loading))
            .await
            .map(|s| s.clone())
            .map_err(|_| CacheError::Unavailable("the mesh task stopped".to_owned()))?;
        match state {
            MeshState::Ready(_) => Ok(handle),
            MeshState::Missing => Err(CacheError::NotFound {
                tenant: tenant.to_owned(),
                mesh: mesh.to_owned(),
            }),
            MeshState::Unavailable(e) => Err(CacheError::Unavailable(e)),
            MeshState::Loading => Err(CacheError::Unavailable("still loading".to_owned())),
        }
    }

    fn release(&self, key: &MeshKey) {
        let mut meshes = self.meshes();
        if let Some(entry) = meshes.get_mut(key) {
            entry.users = entry.users.saturating_sub(1);
            if entry.users == 0 {
                meshes.remove(key);
                tracing::debug!(tenant = %key.0, mesh = %key.1, "mesh unloaded: no stream uses it");
            }
        }
    }

    fn spawn_mesh(&self, key: &MeshKey) -> Arc<Shared> {
        let (tx, rx) = watch::channel(MeshState::Loading);
        // One pending kick: everything that arrives while a rebuild runs becomes one rebuild.
        let (kick, kicks) = mpsc::channel(1);
        let checked = Arc::new(AtomicI64::new(0));
        let slot = Slot::default();
        let task = MeshTask {
            store: self.inner.store.clone(),
            trust: self.inner.trust.clone(),
            key: key.clone(),
            tx,
            kicks,
            checked: Arc::clone(&checked),
            slot: Arc::clone(&slot),
        };
        let span = tracing::info_span!("mesh", tenant = %key.0, mesh = %key.1);
        tokio::spawn(task.run().instrument(span));
        Arc::new(Shared {
            rx,
            kick,
            checked,
            slot,
        })
    }

    /// The trust domain snapshots are translated with.
    pub fn trust_domain(&self) -> &str {
        &self.inner.trust.trust_domain
    }

    /// The shared state of a loaded mesh whose translator is current at tenant revision
    /// `revision`: read at or before it, and the mesh unchanged from then through it.
    fn current_at(&self, tenant: &str, mesh: &str, revision: i64) -> Option<Arc<Shared>> {
        let key = (tenant.to_owned(), mesh.to_owned());
        let shared = Arc::clone(&self.meshes().get(&key)?.shared);
        (shared.checked.load(Ordering::Acquire) >= revision).then_some(shared)
    }

    /// Whether [`SnapshotCache::translator_at`] would give a translator now.
    pub fn holds(&self, tenant: &str, mesh: &str, revision: i64) -> bool {
        self.current_at(tenant, mesh, revision).is_some_and(|s| {
            !s.slot.wanted.load(Ordering::Acquire)
                && lock(&s.slot)
                    .as_ref()
                    .is_some_and(|b| b.revision <= revision)
        })
    }

    /// `plan` run on the translator of the loaded mesh `tenant`/`mesh` when it holds the
    /// mesh as it is at tenant revision `revision`: a planner applies its change and undoes
    /// it there, rather than read and translate the mesh. `None` when the mesh is not loaded,
    /// is current at another revision, or is (about to be) rebuilt.
    ///
    /// `plan` must leave the translator as it found it. The translator is locked meanwhile,
    /// so the next rebuild waits for it; a panic in it drops the translator (the next rebuild
    /// translates the mesh in full) and gives `None`.
    pub fn translator_at<T>(
        &self,
        tenant: &str,
        mesh: &str,
        revision: i64,
        plan: impl FnOnce(&mut Translator) -> T,
    ) -> Option<T> {
        let shared = self.current_at(tenant, mesh, revision)?;
        if shared.slot.wanted.load(Ordering::Acquire) {
            return None;
        }
        let mut built = lock(&shared.slot);
        if shared.slot.wanted.load(Ordering::Acquire) {
            return None;
        }
        // `checked` only grows, and the slot holds what was read at `b.revision`: the mesh
        // did not change between that revision and `revision`.
        let b = built.as_mut().filter(|b| b.revision <= revision)?;
        let translator = &mut b.translator;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan(translator))) {
            Ok(planned) => Some(planned),
            Err(_) => {
                tracing::error!(
                    %tenant, %mesh,
                    "a plan failed on the mesh's translator; it is dropped and the mesh will be \
                     translated in full"
                );
                *built = None;
                None
            }
        }
    }

    /// The loaded meshes of `tenant` and the revision each is known to be current through.
    pub fn loaded(&self, tenant: &str) -> Vec<(String, i64)> {
        self.meshes()
            .range((tenant.to_owned(), String::new())..)
            .take_while(|((t, _), _)| t == tenant)
            .map(|((_, m), e)| (m.clone(), e.shared.checked.load(Ordering::Acquire)))
            .collect()
    }

    /// Every loaded mesh.
    pub fn loaded_meshes(&self) -> Vec<MeshKey> {
        self.meshes().keys().cloned().collect()
    }

    /// Asks the mesh's task to re-read it; `at` is when the change was committed (or, when
    /// that is unknown, announced).
    pub fn kick(&self, tenant: &str, mesh: &str, at: SystemTime) {
        let key = (tenant.to_owned(), mesh.to_owned());
        if let Some(e) = self.meshes().get(&key) {
            // Full means a rebuild is already pending, which will see this change too.
            let _ = e.shared.kick.try_send(at);
        }
    }

    /// Re-reads every loaded mesh (after notices may have been lost).
    pub fn kick_all(&self, at: SystemTime) {
        for e in self.meshes().values() {
            let _ = e.shared.kick.try_send(at);
        }
    }

    /// Records that nothing of `mesh` changed up to `revision`.
    pub fn advance(&self, tenant: &str, mesh: &str, revision: i64) {
        let key = (tenant.to_owned(), mesh.to_owned());
        if let Some(e) = self.meshes().get(&key) {
            e.shared.checked.fetch_max(revision, Ordering::AcqRel);
        }
    }

    /// The current snapshot of a loaded mesh (for status pages and tests).
    pub fn current(&self, tenant: &str, mesh: &str) -> Option<Arc<MeshSnapshot>> {
        let key = (tenant.to_owned(), mesh.to_owned());
        match &*self.meshes().get(&key)?.shared.rx.borrow() {
            MeshState::Ready(s) => Some(Arc::clone(s)),
            _ => None,
        }
    }
}

/// Keeps a mesh loaded and watches its snapshots. Dropping the last handle of a mesh unloads
/// it.
#[derive(Debug)]
pub struct MeshHandle {
    cache: SnapshotCache,
    key: MeshKey,
    rx: watch::Receiver<MeshState>,
}

impl MeshHandle {
    /// The latest state, marking it seen.
    pub fn current(&mut self) -> MeshState {
        self.rx.borrow_and_update().clone()
    }

    /// Waits for the next published state. An error means the mesh task is gone (shutdown).
    pub async fn changed(&mut self) -> Result<MeshState, CacheError> {
        self.rx
            .changed()
            .await
            .map_err(|_| CacheError::Unavailable("the mesh task stopped".to_owned()))?;
        Ok(self.current())
    }
}

impl Drop for MeshHandle {
    fn drop(&mut self) {
        self.cache.release(&self.key);
    }
}

/// The task that owns one mesh's translator.
struct MeshTask {
    store: Store,
    trust: TrustSource,
    key: MeshKey,
    tx: watch::Sender<MeshState>,
    kicks: mpsc::Receiver<SystemTime>,
    checked: Arc<AtomicI64>,
    slot: Slot,
}

impl MeshTask {
    async fn run(mut self) {
        let mut committed_at: Option<SystemTime> = None;
        loop {
            let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
            while let Err(e) = self.rebuild(committed_at).await {
                crate::metrics::snapshot_build_failed();
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = %e,
                    retry_in = ?delay,
                    "cannot read the mesh from the store; serving the last good snapshot \
                     (hint: is the database reachable?)"
                );
                if matches!(*self.tx.borrow(), MeshState::Loading) {
                    self.tx.send_replace(MeshState::Unavailable(e.to_string()));
                }
                match tokio::time::timeout(delay, self.kicks.recv()).await {
                    Ok(None) => return,
                    Ok(Some(at)) => committed_at = earliest(committed_at, at),
                    Err(_) => {}
                }
            }
            let Some(at) = self.kicks.recv().await else {
                return;
            };
            committed_at = earliest(None, at);
            // Kicks come from the watcher, which already waited out its debounce window, so
            // rebuild at once; kicks that queued meanwhile fold into this one rebuild.
            while let Ok(at) = self.kicks.try_recv() {
                committed_at = earliest(committed_at, at);
            }
        }
    }

    async fn rebuild(&mut self, committed_at: Option<SystemTime>) -> Result<(), RebuildError> {
        let (tenant, mesh) = &self.key;
        let stored = match self.store.mesh_snapshot(tenant, mesh).await {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => {
                if !matches!(*self.tx.borrow(), MeshState::Missing) {
                    tracing::info!("the mesh does not exist (or was deleted)");
                    *lock(&self.slot) = None;
                    self.tx.send_replace(MeshState::Missing);
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let previous = match &*self.tx.borrow() {
            MeshState::Ready(current) if current.revision == stored.revision => {
                self.checked.fetch_max(stored.revision, Ordering::AcqRel);
                return Ok(());
            }
            MeshState::Ready(current) => current.revision,
            _ => 0,
        };
        let span = build_span(&self.store, tenant, mesh, previous, stored.revision);
        self.build(stored, committed_at, &span)
            .instrument(span.clone())
            .await
    }

    /// Translates what [`MeshTask::rebuild`] read and publishes it; `span` is the build's.
    async fn build(
        &mut self,
        stored: switchboard_store::MeshSnapshot,
        committed_at: Option<SystemTime>,
        span: &tracing::Span,
    ) -> Result<(), RebuildError> {
        let (tenant, mesh) = &self.key;
        let started = Instant::now();
        let (mut config, warnings) = mesh_config(&stored, &self.trust.trust_domain);
        if let Some(issuer) = &self.trust.issuer {
            config.trust = match issuer.trust_bundle(tenant, mesh).await {
                Ok(trust) => trust,
                // No CA yet: no ROOTCA and no certificates until one exists.
                Err(IssueError::NoCa { .. }) => Default::default(),
                Err(e) => return Err(RebuildError::Trust(e)),
            };
        }
        for w in &warnings {
            tracing::warn!(warning = %w, "left out of the mesh's xDS resources");
        }
        let mut snapshot = MeshSnapshot::new(&config, MeshResources::default(), committed_at);
        snapshot.trace = BuildTrace::new(switchboard_runtime::otel::span_context(span));
        if let Some(issuer) = &self.trust.issuer {
            snapshot.certificates =
                crate::snapshot::Certificates(crate::sds::certificates::open(&config, &**issuer));
        }
        let revision = config.revision;
        // Translation is CPU work proportional to the change; keep it off the async workers.
        // No new planner from here until the translator is back.
        self.slot.wanted.store(true, Ordering::Release);
        let translator = lock(&self.slot).take().map(|b| b.translator);
        let (translator, resources) = tokio::task::spawn_blocking(move || {
            let t = match translator {
                Some(mut t) => {
                    t.update(config);
                    t
                }
                None => Translator::new(config),
            };
            let resources = t.resources().clone();
            (t, resources)
        })
        .await
        .map_err(|e| {
            self.slot.wanted.store(false, Ordering::Release);
            RebuildError::Translation(e.to_string())
        })?;
        *lock(&self.slot) = Some(Built {
            revision,
            translator,
        });
        self.slot.wanted.store(false, Ordering::Release);
        snapshot.resources = resources;
        crate::metrics::snapshot_built(started.elapsed());
        tracing::debug!(
            revision,
            listeners = snapshot.resources.listeners.len(),
            clusters = snapshot.resources.clusters.len(),
            "snapshot built"
        );
        self.checked.fetch_max(revision, Ordering::AcqRel);
        self.tx.send_replace(MeshState::Ready(Arc::new(snapshot)));
        Ok(())
    }
}

/// Why a rebuild failed; the last good snapshot stays published.
#[derive(Debug, thiserror::Error)]
enum RebuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the mesh's trust bundle: {0}")]
    Trust(IssueError),
    #[error("translation failed: {0}")]
    Translation(String),
}

/// The `xds.snapshot_build` span of `tenant`/`mesh` at `revision`: child of the first of
/// this replica's commits it includes (those after `previous`, the revision of the snapshot
/// it replaces), linked to the others, so the write's trace goes on through the build. A
/// build with no such commit (another replica's, a first load) starts its own trace.
fn build_span(
    store: &Store,
    tenant: &str,
    mesh: &str,
    previous: i64,
    revision: i64,
) -> tracing::Span {
    let commits = store.commit_traces(tenant, mesh, previous, revision);
    let span = tracing::info_span!(
        target: switchboard_runtime::otel::TRACE_TARGET,
        parent: None,
        "xds.snapshot_build",
        tenant,
        mesh,
        revision,
        previous_revision = previous,
        commits = commits.len(),
    );
    let mut commits = commits.iter();
    if let Some(first) = commits.next() {
        switchboard_runtime::otel::set_parent(&span, first);
    }
    for other in commits {
        switchboard_runtime::otel::add_link(&span, other);
    }
    span
}

fn earliest(a: Option<SystemTime>, b: SystemTime) -> Option<SystemTime> {
    Some(a.map_or(b, |a| a.min(b)))
}
