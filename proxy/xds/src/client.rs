//! The ADS client: one state-of-the-world stream carrying LDS, RDS, CDS and EDS.
//!
//! - LDS and CDS are wildcard subscriptions; RDS and EDS subscribe to exactly the names the
//!   applied listeners and clusters need, and drop what they no longer need.
//! - Each response is converted, then handed to the type's [`Handler`]; the ACK goes out
//!   only after the handler returned. One bad resource rejects only itself: the valid ones of
//!   the same response are applied, and the NACK's `error_detail` names each rejected one.
//! - When the stream fails, the applied configuration stays; the client reconnects with
//!   exponential backoff and jitter and re-sends the versions and names it holds.
//! - Readiness turns true once the initial LDS, RDS, CDS, EDS and SDS have been handled, and stays
//!   true across reconnects (the last good configuration keeps serving).

mod resource;

use std::time::Duration;

use switchboard_runtime::Backoff;
use switchboard_xds_proto::service::ads::AggregatedDiscoveryServiceClient;
use switchboard_xds_proto::{DiscoveryRequest, DiscoveryResponse, Node, ResourceType, Status};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use resource::TypeState;
pub use resource::XdsResource;

use crate::bootstrap::Bootstrap;
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

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("cannot read the token file {path}: {source} (hint: is the proxy token mounted?)")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read xds_ca_file {path}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    /// Names the file only: the key's contents never reach a message.
    #[error("cannot read {what} {path}: {source}")]
    ClientCert {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("invalid xds_address {address:?}: {source}")]
    Address {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {address}: {source} (hint: is the control plane reachable?)")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("the stream failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("the token is not valid gRPC metadata")]
    BadToken,
    #[error("the stream closed")]
    Closed,
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
        loop {
            let mut answered = false;
            match self.stream(&mut answered).await {
                Ok(()) => tracing::info!("the xDS stream ended; reconnecting"),
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

    async fn stream(&mut self, answered: &mut bool) -> Result<(), StreamError> {
        let address = self.bootstrap.xds_address.clone();
        let token = match &self.bootstrap.token_file {
            Some(path) => Some(tokio::fs::read_to_string(path).await.map_err(|source| {
                StreamError::Token {
                    path: path.display().to_string(),
                    source,
                }
            })?),
            None => None,
        };
        // A new connection per stream: a server that went away must not be reached through
        // an old HTTP/2 connection.
        let mut endpoint =
            Endpoint::from_shared(address.clone()).map_err(|source| StreamError::Address {
                address: address.clone(),
                source,
            })?;
        if let Some(path) = &self.bootstrap.xds_ca_file {
            // Read on every connect, so that a rotated CA applies to the next stream.
            let pem = tokio::fs::read(path)
                .await
                .map_err(|source| StreamError::Ca {
                    path: path.display().to_string(),
                    source,
                })?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            if let (Some(cert), Some(key)) = (
                &self.bootstrap.xds_client_cert_file,
                &self.bootstrap.xds_client_key_file,
            ) {
                // Also read on every connect: a renewed certificate applies to the next stream.
                let read = |what, path: &std::path::PathBuf| {
                    let path = path.clone();
                    async move {
                        tokio::fs::read(&path)
                            .await
                            .map_err(|source| StreamError::ClientCert {
                                what,
                                path: path.display().to_string(),
                                source,
                            })
                    }
                };
                let cert = read("xds_client_cert_file", cert).await?;
                let key = read("xds_client_key_file", key).await?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|source| StreamError::Address {
                    address: address.clone(),
                    source,
                })?;
        }
        let channel = endpoint
            .connect_timeout(self.options.connect_timeout)
            // Notices a control plane that vanished without closing the connection.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|source| StreamError::Connect { address, source })?;
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let (tx, rx) = mpsc::unbounded_channel();
        for t in [
            &mut self.cds,
            &mut self.lds,
            &mut self.eds,
            &mut self.rds,
            &mut self.sds,
        ] {
            t.nonce.clear();
        }
        let mut first = true;
        for kind in [
            ResourceType::Cluster,
            ResourceType::Listener,
            ResourceType::ClusterLoadAssignment,
            ResourceType::RouteConfiguration,
            ResourceType::Secret,
        ] {
            let state = self.state(kind);
            if state.wildcard || !state.names.is_empty() {
                let mut request = request(state, None);
                if first {
                    request.node = Some(self.node.clone());
                    first = false;
                }
                let _ = tx.send(request);
            }
        }
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        if let Some(token) = token {
            let value = format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| StreamError::BadToken)?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut responses = client
            .stream_aggregated_resources(request)
            .await?
            .into_inner();
        tracing::info!(address = %self.bootstrap.xds_address, "xDS stream open");
        // A NACK held back by pacing, per type; a newer response of the type supersedes it.
        let mut held: std::collections::HashMap<String, JoinHandle<()>> = Default::default();
        let result = async {
            while let Some(response) = responses.message().await? {
                *answered = true;
                if let Some(old) = held.remove(&response.type_url) {
                    old.abort();
                }
                for (request, delay) in self.handle(&response) {
                    if delay.is_zero() {
                        tx.send(request).map_err(|_| StreamError::Closed)?;
                    } else {
                        let tx = tx.clone();
                        let type_url = request.type_url.clone();
                        held.insert(
                            type_url,
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
    /// long to hold it back. A NACK of the version NACKed just before is paced (100 ms doubling
    /// to 10 s): some servers (go-control-plane) answer a NACK by re-sending the same version
    /// at once, and both sides would otherwise spin.
    fn handle(&mut self, response: &DiscoveryResponse) -> Vec<(DiscoveryRequest, Duration)> {
        let Some(kind) = ResourceType::from_type_url(&response.type_url) else {
            tracing::warn!(type_url = %response.type_url, "ignoring a response of a type not asked for");
            return Vec::new();
        };
        let h = &mut self.handlers;
        let (state, rejected) = match kind {
            ResourceType::Listener => {
                let r = self.lds.handle(response, h.listeners.as_mut());
                (&mut self.lds, r)
            }
            ResourceType::RouteConfiguration => {
                let r = self.rds.handle(response, h.routes.as_mut());
                (&mut self.rds, r)
            }
            ResourceType::Cluster => {
                let r = self.cds.handle(response, h.clusters.as_mut());
                (&mut self.cds, r)
            }
            ResourceType::ClusterLoadAssignment => {
                let r = self.eds.handle(response, h.endpoints.as_mut());
                (&mut self.eds, r)
            }
            ResourceType::Secret => {
                let r = self.sds.handle(response, h.secrets.as_mut());
                (&mut self.sds, r)
            }
        };
        state.nonce.clone_from(&response.nonce);
        let mut delay = Duration::ZERO;
        let error_detail = if rejected.is_empty() {
            state.version.clone_from(&response.version_info);
            state.nacked = None;
            tracing::debug!(%kind, version = %response.version_info, "ACK");
            None
        } else {
            let repeats = match &state.nacked {
                Some((v, n)) if *v == response.version_info => n + 1,
                _ => 0,
            };
            state.nacked = Some((response.version_info.clone(), repeats));
            if repeats > 0 {
                delay = nack_pacing().delay(repeats - 1);
            }
            let message = rejected
                .iter()
                .map(|r| format!("{}: {}", r.name, r.error))
                .collect::<Vec<_>>()
                .join("\n");
            tracing::warn!(%kind, version = %response.version_info, %message, "NACK");
            Some(Status {
                code: tonic::Code::InvalidArgument as i32,
                message,
                details: vec![],
            })
        };
        let mut out = vec![(request(state, error_detail), delay)];
        // Dependent subscriptions follow what was just applied.
        let dependent = match kind {
            ResourceType::Listener => {
                let needed = self.lds.needed();
                self.rds
                    .resubscribe(needed, self.handlers.routes.as_mut())
                    .then_some(&self.rds)
            }
            ResourceType::Cluster => {
                let needed = self.cds.needed();
                self.eds
                    .resubscribe(needed, self.handlers.endpoints.as_mut())
                    .then_some(&self.eds)
            }
            _ => None,
        };
        if let Some(state) = dependent {
            out.push((request(state, None), Duration::ZERO));
        }
        if matches!(kind, ResourceType::Listener | ResourceType::Cluster) {
            let mut secrets = self.lds.secrets_needed();
            secrets.extend(self.cds.secrets_needed());
            if self
                .sds
                .resubscribe(secrets, self.handlers.secrets.as_mut())
            {
                out.push((request(&self.sds, None), Duration::ZERO));
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

/// The request that (re)states a type's subscription, version and nonce.
fn request(state: &TypeState, error_detail: Option<Status>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: state.version.clone(),
        resource_names: if state.wildcard {
            Vec::new()
        } else {
            state.names.iter().cloned().collect()
        },
        type_url: state.kind.type_url().to_owned(),
        response_nonce: state.nonce.clone(),
        error_detail,
        ..Default::default()
    }
}

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
