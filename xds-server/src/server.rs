//! Assembles the gRPC services for the xDS port.

use std::sync::Arc;
use std::time::Duration;

use switchboard_store::Store;
use switchboard_xds_proto::service::{ads, cds, csds, eds, lds, rds};
use switchboard_xds_proto::{FILE_DESCRIPTOR_SET, service_name};
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;

use crate::ads::Engine;
use crate::cache::SnapshotCache;
use crate::csds::CsdsService;
use crate::protocol::Limits;
use crate::registration::Registrar;
use crate::revocation::Revocations;
use crate::services::{AdsService, CdsService, EdsService, LdsService, RdsService};
use crate::status::ProxyRegistry;
use crate::watcher::spawn_watcher;

/// Tuning of the xDS server.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// How long a mesh waits after a change before rebuilding, to batch bursts of writes.
    pub debounce: Duration,
    pub limits: Limits,
    /// Responses queued towards one client at most; a client slower than that skips
    /// intermediate states.
    pub queue: usize,
    /// HTTP/2 keepalive pings, to notice proxies that vanished without closing.
    pub keepalive: Option<Duration>,
    /// How long a registered sidecar's endpoint outlives the last stream of its node (see
    /// [`crate::registration`]): a reconnect within it changes nothing.
    pub sidecar_grace_period: Duration,
}

impl Default for XdsConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(20),
            limits: Limits::default(),
            queue: 1,
            keepalive: Some(Duration::from_secs(30)),
            sidecar_grace_period: crate::registration::DEFAULT_GRACE_PERIOD,
        }
    }
}

/// The xDS server: snapshot cache, proxy registry and the gRPC services. Cheap to clone.
///
/// ```no_run
/// # async fn run(store: switchboard_store::Store, addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
/// let xds = switchboard_xds_server::XdsServer::new(store, Default::default());
/// let _watcher = xds.spawn_watcher();
/// xds.router().await.serve(addr).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct XdsServer {
    engine: Arc<Engine>,
    config: XdsConfig,
    /// Names this process among the replicas sharing a database (proxy status rows).
    replica: String,
}

impl XdsServer {
    pub fn new(store: Store, config: XdsConfig) -> Self {
        let cache = SnapshotCache::new(store.clone());
        let engine = Arc::new(Engine {
            store,
            cache,
            registry: ProxyRegistry::new(),
            limits: config.limits,
            queue: config.queue,
            registrar: Registrar::default(),
            revocations: Revocations::default(),
        });
        let mut id = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
        Self {
            engine,
            config,
            replica: hex::encode(id),
        }
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn store(&self) -> &Store {
        &self.engine.store
    }

    /// Starts writing this replica's proxy status to the store (for the REST API of every
    /// replica). Call once, inside a Tokio runtime.
    pub fn spawn_status_sync(&self) -> JoinHandle<()> {
        crate::report::spawn_status_sync(
            self.engine.store.clone(),
            self.engine.registry.clone(),
            self.replica.clone(),
        )
    }

    /// Starts the task that turns store commits into snapshot rebuilds and token
    /// revocations into ended streams. Without it, snapshots are loaded for new streams but
    /// never updated. Call once, inside a Tokio runtime.
    pub fn spawn_watcher(&self) -> JoinHandle<()> {
        spawn_watcher(
            self.engine.store.clone(),
            self.engine.cache.clone(),
            self.engine.revocations.clone(),
            self.config.debounce,
        )
    }

    /// Starts registering authenticated sidecars as endpoints of their services, and
    /// deregistering them a grace period after their last stream here ended (see
    /// [`crate::registration`]). Until it is called, sidecars are not registered. Call once,
    /// inside a Tokio runtime, before serving.
    pub fn spawn_registration(&self) -> JoinHandle<()> {
        crate::registration::spawn(
            self.engine.store.clone(),
            &self.engine.registrar,
            self.replica.clone(),
            self.config.sidecar_grace_period,
        )
    }

    /// Connected proxies and what they were sent (for the REST API and CSDS).
    pub fn registry(&self) -> &ProxyRegistry {
        &self.engine.registry
    }

    /// The per-mesh snapshots.
    pub fn cache(&self) -> &SnapshotCache {
        &self.engine.cache
    }

    /// Every service of the xDS port: ADS, LDS, RDS, CDS, EDS, CSDS, `grpc.health.v1.Health`
    /// (every service SERVING) and gRPC reflection (v1).
    pub async fn routes(&self) -> Routes {
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in [
            service_name::AGGREGATED_DISCOVERY,
            service_name::LISTENER_DISCOVERY,
            service_name::ROUTE_DISCOVERY,
            service_name::CLUSTER_DISCOVERY,
            service_name::ENDPOINT_DISCOVERY,
            service_name::CLIENT_STATUS_DISCOVERY,
        ] {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let mut builder = Routes::builder();
        let engine = &self.engine;
        builder
            .add_service(ads::AggregatedDiscoveryServiceServer::new(AdsService::new(
                Arc::clone(engine),
            )))
            .add_service(lds::ListenerDiscoveryServiceServer::new(LdsService::new(
                Arc::clone(engine),
            )))
            .add_service(rds::RouteDiscoveryServiceServer::new(RdsService::new(
                Arc::clone(engine),
            )))
            .add_service(cds::ClusterDiscoveryServiceServer::new(CdsService::new(
                Arc::clone(engine),
            )))
            .add_service(eds::EndpointDiscoveryServiceServer::new(EdsService::new(
                Arc::clone(engine),
            )))
            .add_service(csds::ClientStatusDiscoveryServiceServer::new(
                CsdsService::new(engine.store.clone(), engine.registry.clone()),
            ))
            .add_service(health_service);
        match tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .build_v1()
        {
            Ok(reflection) => {
                builder.add_service(reflection);
            }
            Err(e) => {
                tracing::warn!(error = %e, "gRPC reflection is off: the descriptor set does not load")
            }
        }
        builder.routes()
    }

    /// A tonic router with [`XdsServer::routes`], ready to `serve` on the xDS port.
    pub async fn router(&self) -> Router {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(self.config.keepalive)
            .tcp_nodelay(true)
            .add_routes(self.routes().await)
    }
}
