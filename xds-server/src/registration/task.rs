//! The registration task: one per replica. It feeds the [`Machine`] the streams' events,
//! the store's notices and its timer, and performs the store calls the machine asks for.

use std::time::Duration;

use switchboard_model::{Kind, Spec};
use switchboard_store::{
    Notice, Precondition, ResourceKey, Store, StoreError, StoredResource, WriteOptions,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::BATCH;
use super::endpoint::ENDPOINT_PREFIX;
use super::machine::{Action, Input, Machine, UpsertError, Upserted};
use super::registrar::{Event, Registrar};

/// Writes tried in a row when another writer keeps changing the endpoint.
const WRITE_ATTEMPTS: usize = 3;

/// The registration task for `registrar`'s streams, which turns registration on; `None`
/// when it was on already. It runs until every stream guard and the registrar are gone, or
/// until it is dropped (a stopping replica deregisters nothing); pending grace periods are
/// then abandoned, not cut short. `status_sync`: how often replicas write the `proxies`
/// table.
pub(crate) fn run(
    store: Store,
    registrar: &Registrar,
    replica: String,
    grace: Duration,
    status_sync: Duration,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let Some(rx) = registrar.connect() else {
        tracing::warn!("sidecar registration was already started; not starting it twice");
        return None;
    };
    let task = Task {
        notices: Some(store.subscribe()),
        store,
        rx,
        machine: Machine::new(replica, grace, status_sync, Instant::now()),
    };
    Some(task.run())
}

struct Task {
    store: Store,
    rx: mpsc::UnboundedReceiver<Event>,
    /// `None` once the store's notices closed.
    notices: Option<broadcast::Receiver<Notice>>,
    machine: Machine,
}

impl Task {
    async fn run(mut self) {
        loop {
            let wake = self.machine.wake_at(Instant::now());
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(event) => self.event(event),
                    None => return,
                },
                notice = recv_notice(&mut self.notices) => self.notice(notice),
                () = tokio::time::sleep_until(wake) => {}
            }
            // Take what else is queued, so reconnect storms coalesce per node and bursts of
            // commits per tenant.
            for _ in 0..BATCH {
                match self.rx.try_recv() {
                    Ok(event) => self.event(event),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            for _ in 0..BATCH {
                let Some(rx) = self.notices.as_mut() else {
                    break;
                };
                match rx.try_recv() {
                    Ok(notice) => self.notice(Ok(notice)),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(n)) => self.notice(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Closed) => self.notice(Err(RecvError::Closed)),
                }
            }
            let mut next = self.machine.step(Input::Round, Instant::now());
            while let Some(action) = next {
                let result = self.perform(action).await;
                next = self.machine.step(result, Instant::now());
            }
        }
    }

    fn event(&mut self, event: Event) {
        let input = match event {
            Event::Register {
                stream,
                node,
                desired,
            } => Input::Opened {
                stream,
                node,
                desired,
            },
            Event::Deregister { stream, node } => Input::Closed { stream, node },
        };
        // Events only change the state; the round that follows does the work.
        let _ = self.machine.step(input, Instant::now());
    }

    fn notice(&mut self, notice: Result<Notice, RecvError>) {
        let input = match notice {
            Ok(Notice::Committed { tenant, revision }) => Input::Committed { tenant, revision },
            Ok(Notice::Revoked { .. }) => return,
            Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => Input::NoticesLost,
            Err(RecvError::Closed) => {
                self.notices = None;
                return;
            }
        };
        let _ = self.machine.step(input, Instant::now());
    }

    /// Makes the store call and says how it went.
    async fn perform(&self, action: Action) -> Input {
        match action {
            Action::ReadRevision { tenant } => {
                let result = self.store.revision(&tenant).await;
                Input::Revision { tenant, result }
            }
            Action::Upsert { node, key, spec } => {
                let result = upsert(&self.store, &key, &spec).await;
                if let Ok(Upserted::Written(_)) = &result {
                    metrics::counter!("switchboard_sidecar_registrations_total", "tenant" => key.tenant.clone())
                        .increment(1);
                }
                Input::Upserted { node, result }
            }
            Action::ListReplicas { node } => {
                let result = self
                    .store
                    .list_proxies(&node.tenant, &node.mesh, Some(&node.name))
                    .await
                    .map(|rows| rows.into_iter().map(|r| r.replica).collect());
                Input::Replicas { node, result }
            }
            Action::Delete { key, etag } => {
                let opts = WriteOptions {
                    precondition: Precondition::IfMatch(etag),
                    dry_run: false,
                    actor: None,
                };
                let result = self.store.delete(&key, &opts).await.map(|_| ());
                if result.is_ok() {
                    metrics::counter!("switchboard_sidecar_deregistrations_total", "tenant" => key.tenant.clone())
                        .increment(1);
                }
                Input::Deleted { key, result }
            }
            Action::ReadChanges {
                tenant,
                since,
                limit,
            } => {
                let result = self.store.changes_since(&tenant, since, limit).await;
                Input::Changes { tenant, result }
            }
            Action::ListManaged => {
                let result = tokio::try_join!(
                    self.store.list_everywhere(Kind::Endpoint, ENDPOINT_PREFIX),
                    self.store.live_nodes()
                );
                Input::Managed { result }
            }
        }
    }
}

/// The next store notice, or never once they closed.
async fn recv_notice(
    notices: &mut Option<broadcast::Receiver<Notice>>,
) -> Result<Notice, RecvError> {
    match notices {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes `spec` at `key` unless it is there already, as the REST API writes (references
/// checked in the transaction). `If-Match` the version read, so a concurrent change is
/// looked at again rather than overwritten blindly.
async fn upsert(store: &Store, key: &ResourceKey, spec: &Spec) -> Result<Upserted, UpsertError> {
    for _ in 0..WRITE_ATTEMPTS {
        let existing = match store.get(key).await {
            Ok(r) => Some(r),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(r) = &existing
            && Spec::parse(key.kind, r.spec.clone()).is_ok_and(|s| s == *spec)
        {
            return Ok(Upserted::Unchanged(r.etag()));
        }
        let precondition = match &existing {
            Some(r) => Precondition::IfMatch(r.etag()),
            None => Precondition::Create,
        };
        match put(store, key, spec, precondition).await {
            Ok(stored) => return Ok(Upserted::Written(stored.etag())),
            Err(StoreError::PreconditionFailed { .. } | StoreError::AlreadyExists { .. }) => {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(UpsertError::Contended)
}

/// Writes the endpoint through the store's `put_spec`, which derives its references and
/// claims from the spec, as for a REST write.
async fn put(
    store: &Store,
    key: &ResourceKey,
    spec: &Spec,
    precondition: Precondition,
) -> Result<StoredResource, StoreError> {
    let opts = WriteOptions {
        precondition,
        dry_run: false,
        actor: None,
    };
    store
        .put_spec(&key.tenant, &key.mesh, &key.name, spec, &opts)
        .await
}
