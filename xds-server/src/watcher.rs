//! Turns the store's commit notices into rebuilds of the meshes that changed.
//!
//! Notices say only "tenant T committed revision R". For each tenant with loaded meshes the
//! watcher reads the change log since the oldest revision its meshes are current through,
//! kicks the meshes named in it and marks the others current. Notices that arrive within the
//! debounce window are handled together. After a `Resync` (notices may have been lost) or when
//! the log cannot say (too many changes, none although the revision moved: a deleted
//! tenant, or pruned past the revision a mesh is at), every loaded mesh concerned is re-read.
//!
//! Each kick carries when the mesh's first unseen change was committed, from the change log's
//! `time` (the committing replica's wall clock), so that convergence is measured from the
//! commit rather than from the notice's arrival; when the log cannot say, the arrival time
//! stands in.
//!
//! Handling a notice of a commit made through this replica is an `xds.change_notice` span in
//! the commit's trace.
//!
//! It also passes proxy token revocations on to `Revocations`, which ends the streams
//! holding them; after a `Resync` it has every credential in use checked again.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_model::Kind;
use switchboard_store::{Change, Notice, Store, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tracing::Instrument;

use crate::cache::SnapshotCache;
use crate::revocation::Revocations;

/// Changes read per tenant per round; more than this re-reads every loaded mesh instead.
const CHANGE_LIMIT: u32 = 1000;

/// How long to wait before retrying when the change log cannot be read.
const RETRY: Duration = Duration::from_secs(1);

/// The watcher's task. It runs until the store's notice channel closes, or until dropped.
pub(crate) fn watch(
    store: Store,
    cache: SnapshotCache,
    revocations: Revocations,
    debounce: Duration,
) -> impl Future<Output = ()> + Send + 'static {
    let watcher = MeshWatcher {
        rx: store.subscribe(),
        store,
        cache,
        revocations,
        recheck_credentials: false,
        debounce,
        pending: BTreeMap::new(),
    };
    watcher.run()
}

/// The notice loop; see the module documentation.
pub struct MeshWatcher {
    store: Store,
    cache: SnapshotCache,
    revocations: Revocations,
    /// Revocation notices may have been lost: check the credentials in use.
    recheck_credentials: bool,
    rx: tokio::sync::broadcast::Receiver<Notice>,
    debounce: Duration,
    /// Tenants with unhandled notices: the latest revision and when the first arrived.
    pending: BTreeMap<String, (i64, SystemTime)>,
}

impl MeshWatcher {
    async fn run(mut self) {
        loop {
            let received = if self.pending.is_empty() {
                Some(self.rx.recv().await)
            } else {
                tokio::time::timeout(RETRY, self.rx.recv()).await.ok()
            };
            if let Some(received) = received
                && !self.take(received)
            {
                return;
            }
            let deadline = tokio::time::Instant::now() + self.debounce;
            while let Ok(received) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
                if !self.take(received) {
                    return;
                }
            }
            if std::mem::take(&mut self.recheck_credentials) {
                self.revocations.recheck(&self.store).await;
            }
            let tenants: Vec<_> = self.pending.keys().cloned().collect();
            for tenant in tenants {
                let Some(&(revision, at)) = self.pending.get(&tenant) else {
                    continue;
                };
                match self
                    .check(&tenant, revision, at)
                    .instrument(notice_span(&self.store, &tenant, revision))
                    .await
                {
                    Ok(()) => {
                        self.pending.remove(&tenant);
                    }
                    Err(e) => tracing::warn!(
                        %tenant, error = %e,
                        "cannot read the change log; xDS keeps serving the last good snapshots \
                         and retries (hint: is the database reachable?)"
                    ),
                }
            }
        }
    }

    /// Records a notice; false when the channel is closed.
    fn take(&mut self, received: Result<Notice, RecvError>) -> bool {
        let now = SystemTime::now();
        match received {
            Ok(Notice::Committed { tenant, revision }) => {
                let entry = self.pending.entry(tenant).or_insert((revision, now));
                entry.0 = entry.0.max(revision);
                true
            }
            Ok(Notice::Revoked { id, .. }) => {
                self.revocations.revoke(&id);
                true
            }
            Ok(Notice::Resync) => {
                crate::metrics::notice_gap("reconnect");
                tracing::info!("store notices may have been lost; re-reading every loaded mesh");
                self.cache.kick_all(now);
                self.recheck_credentials = true;
                true
            }
            Err(RecvError::Lagged(missed)) => {
                crate::metrics::notice_gap("lagged");
                tracing::warn!(
                    missed,
                    "fell behind the store's notices; re-reading every loaded mesh"
                );
                self.cache.kick_all(now);
                self.recheck_credentials = true;
                true
            }
            Err(RecvError::Closed) => false,
        }
    }

    /// Kicks the loaded meshes of `tenant` that changed after the revision they are current
    /// through.
    async fn check(&self, tenant: &str, revision: i64, at: SystemTime) -> Result<(), StoreError> {
        let loaded = self.cache.loaded(tenant);
        // A mesh still loading (0) may have been read before this commit: re-read it.
        let (loading, ready): (Vec<_>, Vec<_>) = loaded.into_iter().partition(|(_, c)| *c == 0);
        for (mesh, _) in &loading {
            self.cache.kick(tenant, mesh, at);
        }
        let Some(floor) = ready.iter().map(|(_, c)| *c).min() else {
            return Ok(());
        };
        if floor >= revision {
            return Ok(());
        }
        let changes = match self.store.changes_since(tenant, floor, CHANGE_LIMIT).await {
            Ok(changes) => changes,
            // The log no longer reaches back to the floor: re-read instead.
            Err(StoreError::Compacted { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        if changes.is_empty() || changes.len() >= CHANGE_LIMIT as usize {
            crate::metrics::caught_up("reread");
            for (mesh, _) in &ready {
                self.cache.kick(tenant, mesh, at);
            }
            return Ok(());
        }
        let through = changes
            .iter()
            .map(|c| c.revision)
            .max()
            .unwrap_or(revision)
            .max(revision);
        crate::metrics::caught_up("changelog");
        for (mesh, checked) in &ready {
            if let Some(committed) = changed_meshes(&changes, *checked).get(mesh.as_str()) {
                self.cache.kick(tenant, mesh, *committed);
            } else {
                self.cache.advance(tenant, mesh, through);
            }
        }
        Ok(())
    }
}

/// The `xds.change_notice` span of the notice of `tenant`'s `revision`, child of its
/// commit's span when the commit was made through this replica; none otherwise (a notice
/// alone starts no trace).
fn notice_span(store: &Store, tenant: &str, revision: i64) -> tracing::Span {
    let Some(commit) = store.commit_trace(tenant, revision) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        target: switchboard_runtime::otel::TRACE_TARGET,
        parent: None,
        "xds.change_notice",
        tenant,
        revision,
    );
    switchboard_runtime::otel::set_parent(&span, &commit);
    span
}

/// The meshes that changes after `since` touched, each with when its first such change was
/// committed. A change to a mesh itself is logged with an empty mesh and the mesh's name.
fn changed_meshes(changes: &[Change], since: i64) -> BTreeMap<&str, SystemTime> {
    let mut meshes = BTreeMap::new();
    for c in changes.iter().filter(|c| c.revision > since) {
        let mesh = if c.kind == Kind::Mesh {
            c.name.as_str()
        } else {
            c.mesh.as_str()
        };
        let committed = commit_time(c.time);
        meshes
            .entry(mesh)
            .and_modify(|t: &mut SystemTime| *t = (*t).min(committed))
            .or_insert(committed);
    }
    meshes
}

/// A change's `time` (Unix ms, the committing replica's clock) as a `SystemTime`.
fn commit_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use switchboard_store::ChangeOp;

    fn change(revision: i64, mesh: &str, kind: Kind, name: &str) -> Change {
        Change {
            revision,
            mesh: mesh.to_owned(),
            kind,
            name: name.to_owned(),
            op: ChangeOp::Put,
            time: 1_000 * revision,
        }
    }

    fn names(meshes: &BTreeMap<&str, SystemTime>) -> BTreeSet<String> {
        meshes.keys().map(|m| (*m).to_owned()).collect()
    }

    #[test]
    fn finds_the_meshes_that_changed() {
        let changes = [
            change(3, "prod", Kind::Service, "a"),
            change(4, "", Kind::Mesh, "staging"),
            change(5, "dev", Kind::Route, "r"),
        ];
        assert_eq!(
            names(&changed_meshes(&changes, 2)),
            BTreeSet::from(["prod".into(), "staging".into(), "dev".into()])
        );
        assert_eq!(
            names(&changed_meshes(&changes, 4)),
            BTreeSet::from(["dev".into()])
        );
        assert!(changed_meshes(&changes, 5).is_empty());
    }

    #[test]
    fn a_mesh_converges_from_its_first_unseen_commit() {
        let changes = [
            change(3, "prod", Kind::Service, "a"),
            change(4, "prod", Kind::Route, "r"),
            change(5, "dev", Kind::Route, "r"),
        ];
        let meshes = changed_meshes(&changes, 2);
        assert_eq!(meshes["prod"], UNIX_EPOCH + Duration::from_secs(3));
        assert_eq!(meshes["dev"], UNIX_EPOCH + Duration::from_secs(5));
        let meshes = changed_meshes(&changes, 3);
        assert_eq!(meshes["prod"], UNIX_EPOCH + Duration::from_secs(4));
    }
}
