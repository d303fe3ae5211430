//! The HTTP data path of `switchboard-proxy`, as a library.
//!
//! - [`router`]: virtual host and route selection in Envoy's order, pure and table-tested.
//! - [`balancer`]: endpoint choice per cluster (priorities, locality and endpoint weights,
//!   round robin, least request, random) and weighted-cluster choice.
//! - [`proxy`]: a hyper server for one HTTP listener that reads the [`ConfigStore`] snapshot
//!   per request, so configuration changes apply without rebinding the socket; routes,
//!   rewrites, redirects, direct responses, faults, timeouts and retries.
//!
//! **Invariant:** the data path reads configuration only through
//! [`ConfigStore::snapshot`]; nothing here caches a route or cluster across requests except
//! balancer state keyed by cluster name, which is rebuilt when the endpoints change.
//!
//! [`ConfigStore`]: switchboard_proxy_xds::ConfigStore
//! [`ConfigStore::snapshot`]: switchboard_proxy_xds::ConfigStore::snapshot

pub mod balancer;
pub mod circuit_breaker;
pub mod clusters;
mod idle;
pub mod listener;
pub mod outlier;
pub mod proxy;
pub mod ring;
pub mod router;
pub mod tcp;
pub mod telemetry;
pub mod tls;

pub use balancer::{Balancers, EndpointSource, Picked, pick_weighted};
pub use clusters::ClusterManager;
pub use proxy::{Body, ProxyError, serve};
pub use router::{RequestInfo, route};
