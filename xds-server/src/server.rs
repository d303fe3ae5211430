//! Assembles the gRPC services for the xDS port.

use std::sync::Arc;
use std::time::Duration;

use switchboard_store::Store;
use switchboard_xds_proto::service::{ads, cds, csds, eds, lds, rds, sds};
use switchboard_xds_proto::{FILE_DESCRIPTOR_SET, ResourceType, service_name};
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::admission::{DEFAULT_MAX_CONCURRENT_INITIAL_PUSHES, InitialPushes};
use crate::ads::Engine;
use crate::auth::cert::RootsCache;
use crate::cache::{SnapshotCache, TrustSource};
use crate::conn::{ConnectionPolicy, Drain};
use crate::csds::CsdsService;
use crate::discovery::Discovery;
use crate::protocol::Limits;
use crate::registration::Registrar;
use crate::revocation::Revocations;
use crate::sds::WorkloadIssuer;
use crate::services::{AdsService, CdsService, EdsService, LdsService, RdsService, SdsService};
use crate::status::ProxyRegistry;

/// Tuning of the xDS server.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// How long a mesh waits after a change before rebuilding, to batch bursts of writes.
    pub debounce: Duration,
    pub limits: Limits,
    /// Responses queued towards one client at most; a client slower than that skips
    /// intermediate states.
    pub queue: usize,
    /// HTTP/2 keepalive (proxies that vanished without closing are dropped) and the
    /// jittered maximum connection age (streams re-balance across replicas).
    pub connections: ConnectionPolicy,
    /// Streams writing their initial responses at once at most (admission control: a
    /// reconnect storm queues instead of building thousands of responses together).
    pub max_concurrent_initial_pushes: usize,
    /// Whether authenticated sidecars register themselves as endpoints of their service (see
    /// [`crate::registration`]). On in `switchboard serve`; test servers turn it off unless
    /// they test it, so that their sidecars leave the store alone.
    pub register_sidecars: bool,
    /// How long a registered sidecar's endpoint outlives the last stream of its node: a
    /// reconnect within it changes nothing.
    pub sidecar_grace_period: Duration,
    /// The SPIFFE trust domain: identities are `spiffe://{tenant}.{trust_domain}/…`.
    pub trust_domain: String,
    /// The mesh CA, for SDS `default` certificates and `ROOTCA`. Without one the port serves
    /// no secret at all.
    pub issuer: Option<Arc<dyn WorkloadIssuer>>,
    /// Bounds on the store reads that clients without verified credentials can cause.
    pub unverified_lookups: crate::LookupLimits,
    /// How the port stops: GOAWAY spread over a drain period; `None`: every connection is
    /// sent GOAWAY at once and waited for (tests).
    pub drain: Option<Drain>,
}

impl Default for XdsConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(20),
            limits: Limits::default(),
            queue: 1,
            connections: ConnectionPolicy::default(),
            max_concurrent_initial_pushes: DEFAULT_MAX_CONCURRENT_INITIAL_PUSHES,
            register_sidecars: true,
            sidecar_grace_period: crate::registration::DEFAULT_GRACE_PERIOD,
            trust_domain: "switchboard.local".to_owned(),
            issuer: None,
            unverified_lookups: crate::LookupLimits::default(),
            drain: None,
        }
    }
}

/// The xDS server: snapshot cache, proxy registry and the gRPC services. Cheap to clone.
///
/// [`XdsServer::start`] is the one way to serve it: it also starts the background tasks the
/// port needs, and the `RunningXds` it returns ends them.
///
/// ```no_run
/// # async fn run(store: switchboard_store::Store, listener: tokio::net::TcpListener) -> Result<(), Box<dyn std::error::Error>> {
/// let xds = switchboard_xds_server::XdsServer::start(store, Default::default());
/// let for_the_api = xds.server().clone();
/// xds.serve(listener, switchboard_runtime::shutdown_signal()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct XdsServer {
    pub(crate) engine: Arc<Engine>,
    pub(crate) config: XdsConfig,
    /// Names this process among the replicas sharing a database (proxy status rows).
    pub(crate) replica: String,
}

impl XdsServer {
    /// The server with no background task: enough for reading its registry and snapshots,
    /// not for serving (see [`XdsServer::start`]).
    pub fn new(store: Store, config: XdsConfig) -> Self {
        let cache = SnapshotCache::with_lookup_limits(
            store.clone(),
            TrustSource {
                trust_domain: config.trust_domain.clone(),
                issuer: config.issuer.clone(),
            },
            config.unverified_lookups,
        );
        let engine = Arc::new(Engine {
            store,
            cache,
            registry: ProxyRegistry::new(),
            limits: config.limits,
            queue: config.queue,
            registrar: Registrar::default(),
            revocations: Revocations::default(),
            roots: RootsCache::default(),
            known: Default::default(),
            issuer: config.issuer.clone(),
            streams: Arc::default(),
            initial_pushes: InitialPushes::new(config.max_concurrent_initial_pushes),
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

    /// Connected proxies and what they were sent (for the REST API and CSDS).
    pub fn registry(&self) -> &ProxyRegistry {
        &self.engine.registry
    }

    /// The per-mesh snapshots.
    pub fn cache(&self) -> &SnapshotCache {
        &self.engine.cache
    }

    /// How many meshes this replica holds a snapshot of, ready to serve new streams from
    /// memory while the store is unreachable (readiness).
    pub fn snapshots_loaded(&self) -> usize {
        let cache = self.cache();
        cache
            .loaded_meshes()
            .iter()
            .filter(|(tenant, mesh)| cache.current(tenant, mesh).is_some())
            .count()
    }

    /// Every service of the xDS port: ADS, LDS, RDS, CDS, EDS, SDS, CSDS, `grpc.health.v1.Health`
    /// (every service SERVING) and gRPC reflection (v1, and v1alpha for the many tools that
    /// still speak only that one).
    pub(crate) async fn routes(&self) -> Routes {
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in [
            service_name::AGGREGATED_DISCOVERY,
            service_name::LISTENER_DISCOVERY,
            service_name::ROUTE_DISCOVERY,
            service_name::CLUSTER_DISCOVERY,
            service_name::ENDPOINT_DISCOVERY,
            service_name::SECRET_DISCOVERY,
            service_name::CLIENT_STATUS_DISCOVERY,
        ] {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let mut builder = Routes::builder();
        let engine = &self.engine;
        builder
            .add_service(Discovery::new(
                Arc::clone(engine),
                None,
                ["StreamAggregatedResources", "DeltaAggregatedResources"],
                ads::AggregatedDiscoveryServiceServer::new(AdsService::new(Arc::clone(engine))),
            ))
            .add_service(Discovery::new(
                Arc::clone(engine),
                Some(ResourceType::Listener),
                ["StreamListeners", "DeltaListeners"],
                lds::ListenerDiscoveryServiceServer::new(LdsService::new(Arc::clone(engine))),
            ))
            .add_service(Discovery::new(
                Arc::clone(engine),
                Some(ResourceType::RouteConfiguration),
                ["StreamRoutes", "DeltaRoutes"],
                rds::RouteDiscoveryServiceServer::new(RdsService::new(Arc::clone(engine))),
            ))
            .add_service(Discovery::new(
                Arc::clone(engine),
                Some(ResourceType::Cluster),
                ["StreamClusters", "DeltaClusters"],
                cds::ClusterDiscoveryServiceServer::new(CdsService::new(Arc::clone(engine))),
            ))
            .add_service(Discovery::new(
                Arc::clone(engine),
                Some(ResourceType::ClusterLoadAssignment),
                ["StreamEndpoints", "DeltaEndpoints"],
                eds::EndpointDiscoveryServiceServer::new(EdsService::new(Arc::clone(engine))),
            ))
            .add_service(Discovery::new(
                Arc::clone(engine),
                Some(ResourceType::Secret),
                ["StreamSecrets", "DeltaSecrets"],
                sds::SecretDiscoveryServiceServer::new(SdsService::new(Arc::clone(engine))),
            ))
            .add_service(csds::ClientStatusDiscoveryServiceServer::new(
                CsdsService::new(engine.store.clone(), engine.registry.clone()),
            ))
            .add_service(health_service);
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        };
        match (reflection().build_v1(), reflection().build_v1alpha()) {
            (Ok(v1), Ok(v1alpha)) => {
                builder.add_service(v1).add_service(v1alpha);
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "gRPC reflection is off: the descriptor set does not load")
            }
        }
        builder.routes()
    }
}
