//! The data path of `switchboard-proxy`, as a library. Its modules are layered, each using
//! only those listed before it:
//!
//! - Leaves: [`body`] (the response body type), `idle` (inactivity timeouts), [`router`]
//!   (virtual host and route selection in Envoy's order, pure), [`ring`] (ring hash and
//!   request hashing, pure), [`outlier`] (ejection rules, pure), [`tls`] (rustls server
//!   configs, the verified peer identity), `rbac` (RBAC decisions, pure; on `router`'s value
//!   matching and `tls`'s identity), [`telemetry`] (metric names, access log, trace context,
//!   OTLP, per-request observation), `coalesce` (an HTTP/2 connection's writes gathered
//!   into one per poll of its task).
//! - [`cluster`]: the [`ClusterManager`] shared by every listener: per cluster its state
//!   (endpoint choice by priority, locality and endpoint weights under round robin, least
//!   request, random or ring hash; outlier ejection; circuit breakers), its connection pool
//!   and its metrics.
//! - [`http`]: request handling for an HTTP listener, reading the [`ConfigStore`] snapshot
//!   per request, so configuration changes apply without rebinding the socket; routes,
//!   rewrites, redirects, direct responses, faults, timeouts, retries and mirrors.
//! - [`tcp`]: the TCP proxy, relaying a connection to an endpoint of its cluster.
//! - [`listener`]: one bound listener ([`serve`], [`listener::run`]): the accept loop, TLS,
//!   HTTP/1.1 and HTTP/2 connections under the listener's limits, TCP proxying, draining.
//!
//! **Invariant:** the data path reads configuration only through
//! [`ConfigStore::snapshot`]; nothing here caches a route or cluster across requests except
//! cluster state keyed by cluster name, which is rebuilt when the endpoints change.
//!
//! [`ConfigStore`]: switchboard_proxy_xds::ConfigStore
//! [`ConfigStore::snapshot`]: switchboard_proxy_xds::ConfigStore::snapshot

pub mod body;
pub mod cluster;
mod coalesce;
mod gate;
mod headers;
pub mod http;
mod idle;
pub mod listener;
pub mod outlier;
mod rbac;
pub mod ring;
pub mod router;
pub mod tcp;
pub mod telemetry;
pub mod tls;

pub use body::Body;
pub use cluster::{ClusterManager, ClusterRegistry, EndpointSource, Picked, pick_weighted};
pub use listener::{AcceptError, serve};
pub use router::{RequestInfo, route};
pub use tls::PeerIdentity;
