//! The ADS client: one stream carrying LDS, RDS, CDS, EDS and SDS, incremental (delta xDS)
//! by default or state of the world ([`crate::bootstrap::AdsConfig`]). The two protocols
//! differ only in how requests are formed and responses read (`wire`); the rules below hold
//! for both.
//!
//! - LDS and CDS are wildcard subscriptions; RDS, EDS and SDS subscribe to exactly the names
//!   the applied listeners and clusters need, and drop what they no longer need.
//! - Each response is converted, then handed to the type's [`Handler`]; the ACK goes out
//!   only after the handler returned. One bad resource rejects only itself: the valid ones of
//!   the same response are applied, and the NACK's `error_detail` names each rejected one.
//! - When the stream fails, the applied configuration stays; the client reconnects with
//!   exponential backoff and jitter and re-sends the versions and names it holds (delta:
//!   `initial_resource_versions`, per resource).
//! - With `ads_config.api_type` unset, a control plane that answers delta with
//!   `UNIMPLEMENTED` gets state of the world from then on (said once, at warn).
//! - Readiness turns true once the initial LDS, RDS, CDS, EDS and SDS have been handled, and stays
//!   true across reconnects (the last good configuration keeps serving).

mod connect;
mod resource;
mod wire;

use std::collections::HashMap;
use std::time::Duration;

use switchboard_runtime::Backoff;
use switchboard_xds_proto::{Node, ResourceType, Status};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use connect::{StreamError, connect};
use resource::TypeState;
pub use resource::XdsResource;
use wire::{Delta, Sotw, Wire};

use crate::bootstrap::{ApiType, Bootstrap};
use crate::config::{Cluster, Listener, LoadAssignment, RouteConfig, Secret};
use crate::dump::ConfigDump;
pub use crate::handler::{Handler, Rejected};
use crate::state::ConfigStore;

/// Timing of the client; the defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// One handler per resource type.
pub struct Handlers {
    pub listeners: Box<dyn Handler<Listener>>,
    pub routes: Box<dyn Handler<RouteConfig>>,
    pub clusters: Box<dyn Handler<Cluster>>,
    pub endpoints: Box<dyn Handler<LoadAssignment>>,
    pub secrets: Box<dyn Handler<Secret>>,
}

impl Handlers {
    /// Every type applied to `store`.
    pub fn store(store: &ConfigStore) -> Self {
        Self {
            listeners: Box::new(store.clone()),
            routes: Box::new(store.clone()),
            clusters: Box::new(store.clone()),
            endpoints: Box::new(store.clone()),
            secrets: Box::new(store.clone()),
        }
    }
}

/// The client; [`XdsClient::spawn`] runs it.
pub struct XdsClient {
    bootstrap: Bootstrap,
    node: Node,
    options: ClientOptions,
    handlers: Handlers,
    lds: TypeState,
    rds: TypeState,
    cds: TypeState,
    eds: TypeState,
    sds: TypeState,
    ready: watch::Sender<bool>,
    dump: ConfigDump,
}

/// A running client. Dropping it stops the client (the applied configuration stays).
#[derive(Debug)]
pub struct XdsClientHandle {
    ready: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl XdsClientHandle {
    /// Whether the initial configuration has been applied.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the initial configuration has been applied.
    pub async fn ready(&mut self) {
        let _ = self.ready.wait_for(|r| *r).await;
    }

    /// A readiness watch, e.g. for the admin `/ready` endpoint.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }
}

impl Drop for XdsClientHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl XdsClient {
    /// A client applying everything to `store`.
    pub fn new(bootstrap: Bootstrap, store: &ConfigStore, options: ClientOptions) -> Self {
        Self::with_handlers(bootstrap, Handlers::store(store), options)
    }

    pub fn with_handlers(bootstrap: Bootstrap, handlers: Handlers, options: ClientOptions) -> Self {
        let dump = ConfigDump::new();
        Self {
            node: bootstrap.node(),
            bootstrap,
            options,
            handlers,
            lds: TypeState::new(ResourceType::Listener, true, dump.clone()),
            rds: TypeState::new(ResourceType::RouteConfiguration, false, dump.clone()),
            cds: TypeState::new(ResourceType::Cluster, true, dump.clone()),
            eds: TypeState::new(ResourceType::ClusterLoadAssignment, false, dump.clone()),
            sds: TypeState::new(ResourceType::Secret, false, dump.clone()),
            ready: watch::channel(false).0,
            dump,
        }
    }

    /// What this client applies and refuses, resource by resource (for `/config_dump`).
    pub fn config_dump(&self) -> ConfigDump {
        self.dump.clone()
    }

    /// Runs the client on the current runtime until the handle is dropped.
    pub fn spawn(self) -> XdsClientHandle {
        let ready = self.ready.subscribe();
        let task = tokio::spawn(self.run());
        XdsClientHandle { ready, task }
    }

    /// Streams forever, reconnecting with exponential backoff and jitter. The backoff resets
    /// once a stream has delivered a response.
    pub async fn run(mut self) {
        let mut backoff = reconnect_backoff(&self.options);
        let api_type = self.bootstrap.ads_config.api_type;
        let mut protocol = api_type.unwrap_or(ApiType::DeltaGrpc);
        loop {
            let mut answered = false;
            let result = match protocol {
                ApiType::DeltaGrpc => self.stream::<Delta>(&mut answered).await,
                ApiType::Grpc => self.stream::<Sotw>(&mut answered).await,
            };
            match result {
                Ok(()) => tracing::info!("the xDS stream ended; reconnecting"),
                Err(StreamError::Status(status))
                    if status.code() == tonic::Code::Unimplemented
                        && protocol == ApiType::DeltaGrpc
                        && api_type.is_none() =>
                {
                    // Only when delta is the default rather than asked for: a proxy pointed
                    // at an older control plane is not left without configuration.
                    tracing::warn!(
                        status = %status.message(),
                        "the control plane does not serve delta xDS (DeltaAggregatedResources \
                         answered UNIMPLEMENTED); falling back to state-of-the-world ADS for \
                         the life of this process"
                    );
                    protocol = ApiType::Grpc;
                    continue;
                }
                Err(StreamError::Status(status)) if status.code() == tonic::Code::Unimplemented => {
                    let (asked, other) = match protocol {
                        ApiType::DeltaGrpc => ("delta (DELTA_GRPC)", "sotw"),
                        ApiType::Grpc => ("state-of-the-world (GRPC)", "delta"),
                    };
                    tracing::warn!(
                        status = %status.message(),
                        hint = %format!(
                            "the control plane does not serve {asked} ADS; \
                             choose --xds-protocol {other} or set ads_config.api_type"
                        ),
                        "xDS stream failed: UNIMPLEMENTED; keeping the current configuration"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "xDS stream failed; keeping the current configuration")
                }
            }
            if answered {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::debug!(?delay, "reconnecting to the xDS server");
            tokio::time::sleep(delay).await;
        }
    }

    /// One stream of protocol `W`, until it fails or ends.
    async fn stream<W: Wire>(&mut self, answered: &mut bool) -> Result<(), StreamError> {
        let (mut client, authorization) =
            connect(&self.bootstrap, self.options.connect_timeout).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        for t in self.types_mut() {
            t.nonce.clear();
        }
        let mut node = Some(self.node.clone());
        for kind in PUSH_ORDER {
            if let Some(mut request) = W::initial(self.state(kind)) {
                if let Some(node) = node.take() {
                    W::with_node(&mut request, node);
                }
                let _ = tx.send(request);
            }
        }
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        if let Some(value) = authorization {
            request.metadata_mut().insert("authorization", value);
        }
        let mut responses = W::open(&mut client, request).await?;
        tracing::info!(address = %self.bootstrap.xds_address, protocol = W::NAME, "xDS stream open");
        // A NACK held back by pacing, per type; a newer response of the type supersedes it.
        let mut held: HashMap<ResourceType, JoinHandle<()>> = HashMap::new();
        let result = async {
            while let Some(response) = responses.message().await? {
                *answered = true;
                let Some(kind) = ResourceType::from_type_url(W::type_url(&response)) else {
                    tracing::warn!(type_url = %W::type_url(&response), "ignoring a response of a type not asked for");
                    continue;
                };
                if let Some(old) = held.remove(&kind) {
                    old.abort();
                }
                for (request, delay) in self.handle::<W>(kind, &response) {
                    if delay.is_zero() {
                        tx.send(request).map_err(|_| StreamError::Closed)?;
                    } else {
                        let tx = tx.clone();
                        held.insert(
                            kind,
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = tx.send(request);
                            }),
                        );
                    }
                }
            }
            Ok(())
        }
        .await;
        for (_, h) in held {
            h.abort();
        }
        result
    }

    fn types_mut(&mut self) -> [&mut TypeState; 5] {
        [
            &mut self.cds,
            &mut self.lds,
            &mut self.eds,
            &mut self.rds,
            &mut self.sds,
        ]
    }

    fn state(&self, kind: ResourceType) -> &TypeState {
        match kind {
            ResourceType::Listener => &self.lds,
            ResourceType::RouteConfiguration => &self.rds,
            ResourceType::Cluster => &self.cds,
            ResourceType::ClusterLoadAssignment => &self.eds,
            ResourceType::Secret => &self.sds,
        }
    }

    /// Handles a response; returns the requests to send, the ACK or NACK first, each with how
    /// long to hold it back. A NACK of the very resources and versions NACKed just before is
    /// paced (100 ms doubling to 10 s): some servers (go-control-plane) answer a NACK by
    /// re-sending the same version at once, and both sides would otherwise spin.
    fn handle<W: Wire>(
        &mut self,
        kind: ResourceType,
        response: &W::Response,
    ) -> Vec<(W::Request, Duration)> {
        let update = W::read(response);
        let version = update.version;
        let h = &mut self.handlers;
        let (state, outcome) = match kind {
            ResourceType::Listener => {
                let r = self.lds.apply(update, h.listeners.as_mut());
                (&mut self.lds, r)
            }
            ResourceType::RouteConfiguration => {
                let r = self.rds.apply(update, h.routes.as_mut());
                (&mut self.rds, r)
            }
            ResourceType::Cluster => {
                let r = self.cds.apply(update, h.clusters.as_mut());
                (&mut self.cds, r)
            }
            ResourceType::ClusterLoadAssignment => {
                let r = self.eds.apply(update, h.endpoints.as_mut());
                (&mut self.eds, r)
            }
            ResourceType::Secret => {
                let r = self.sds.apply(update, h.secrets.as_mut());
                (&mut self.sds, r)
            }
        };
        W::nonce(response).clone_into(&mut state.nonce);
        let mut delay = Duration::ZERO;
        let error_detail = if outcome.rejected.is_empty() {
            state.nacked = None;
            tracing::debug!(%kind, %version, protocol = W::NAME, "ACK");
            None
        } else {
            let repeats = match &state.nacked {
                Some((key, n)) if *key == outcome.nack_key => n + 1,
                _ => 0,
            };
            state.nacked = Some((outcome.nack_key, repeats));
            if repeats > 0 {
                delay = nack_pacing().delay(repeats - 1);
            }
            let message = outcome
                .rejected
                .iter()
                .map(|r| format!("{}: {}", r.name, r.error))
                .collect::<Vec<_>>()
                .join("\n");
            tracing::warn!(%kind, %version, protocol = W::NAME, %message, "NACK");
            Some(Status {
                code: tonic::Code::InvalidArgument as i32,
                message,
                details: vec![],
            })
        };
        let mut out = vec![(W::ack(state, response, error_detail), delay)];
        // Dependent subscriptions follow what was just applied.
        let dependent = match kind {
            ResourceType::Listener => {
                let needed = self.lds.needed();
                self.rds
                    .resubscribe(needed, self.handlers.routes.as_mut())
                    .map(|c| W::resubscribe(&self.rds, &c))
            }
            ResourceType::Cluster => {
                let needed = self.cds.needed();
                self.eds
                    .resubscribe(needed, self.handlers.endpoints.as_mut())
                    .map(|c| W::resubscribe(&self.eds, &c))
            }
            _ => None,
        };
        out.extend(dependent.map(|r| (r, Duration::ZERO)));
        if matches!(kind, ResourceType::Listener | ResourceType::Cluster) {
            let mut secrets = self.lds.secrets_needed();
            secrets.extend(self.cds.secrets_needed());
            if let Some(c) = self
                .sds
                .resubscribe(secrets, self.handlers.secrets.as_mut())
            {
                out.push((W::resubscribe(&self.sds, &c), Duration::ZERO));
            }
        }
        if [&self.lds, &self.rds, &self.cds, &self.eds, &self.sds]
            .iter()
            .all(|t| t.synced())
        {
            self.ready.send_if_modified(|r| !std::mem::replace(r, true));
        }
        out
    }
}

/// The order of a stream's first requests: clusters before listeners, each before the type
/// that depends on it (make before break).
const PUSH_ORDER: [ResourceType; 5] = [
    ResourceType::Cluster,
    ResourceType::Listener,
    ResourceType::ClusterLoadAssignment,
    ResourceType::RouteConfiguration,
    ResourceType::Secret,
];

/// Reconnect delays: `initial * 2^attempt`, capped, jittered so that proxies that lost the
/// same server do not come back in lockstep.
fn reconnect_backoff(options: &ClientOptions) -> Backoff {
    Backoff::new(options.initial_backoff, options.max_backoff).with_jitter()
}

/// How long a repeated NACK of one version is held back: 100 ms doubling to 10 s.
fn nack_pacing() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let o = ClientOptions {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        };
        let b = reconnect_backoff(&o);
        let first = b.delay(0);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let third = b.delay(2);
        assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
        assert!(b.delay(50) <= Duration::from_secs(1));
        // The sequence `run` walks: growing, then from the start again once a stream has
        // delivered a response.
        let mut b = reconnect_backoff(&o);
        let walked: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(walked[2] >= Duration::from_millis(200), "{walked:?}");
        assert!(walked[5] >= Duration::from_millis(500), "{walked:?}");
        b.reset();
        let again = b.next_delay();
        assert!(again >= Duration::from_millis(50) && again <= Duration::from_millis(100));
    }

    #[test]
    fn repeated_nacks_are_paced_from_100ms_doubling_to_10s() {
        let got: Vec<_> = (1..=10u32)
            .map(|repeats| nack_pacing().delay(repeats - 1).as_millis())
            .collect();
        assert_eq!(
            got,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
    }
}
