//! Switchboard's xDS server: what proxies and proxyless gRPC clients connect to.
//!
//! The change path (ARCHITECTURE.md's bird's-eye view): the store commits revision N and announces it → the
//! [`watcher`] finds which loaded meshes changed → the [`cache`] rebuilds only those, with
//! the translator's incremental `Translator`, into a shared [`MeshSnapshot`] → every stream
//! of the mesh wakes up and sends only what changed for it, make-before-break
//! ([`protocol`]) → the client ACKs or NACKs → [`status`] records it, and CSDS ([`csds`])
//! and the REST API report it.
//!
//! Code map:
//! - [`protocol`]: the state-of-the-world and delta protocols per stream (pure, no IO).
//! - [`node`]: node id and role (pure).
//! - [`snapshot`], [`cache`], [`watcher`]: per-mesh snapshots and their updates.
//! - [`view`]: what one node may see of a snapshot.
//! - [`push_trace`]: the xDS end of a write's trace: push and ACK spans under the snapshot
//!   build's span (which `cache` opens as a child of the store's commit span), bounded per
//!   snapshot.
//! - `ads`, [`services`]: the stream drivers (SotW, and delta in `ads/delta.rs`) and the
//!   ADS/LDS/RDS/CDS/EDS/SDS services.
//! - [`sds`]: secrets (`ROOTCA`, the node's `default` certificate), the port to the mesh CA
//!   and the per-stream renewal task.
//! - [`auth`]: proxy tokens and anonymous access; `revocation` ends the streams of a
//!   revoked token; [`lookups`] bounds the store reads clients without verified credentials
//!   can cause; `quotas` the tenant's `streams` quota, taken at admission.
//! - [`registration`]: sidecars registering themselves as endpoints of their services: the
//!   endpoint's name and spec, the streams' registrar, a pure state machine and the task
//!   that performs its store calls.
//! - [`status`], [`csds`]: per-proxy status and the Client Status Discovery Service;
//!   [`report`] writes the status to the store for every replica's REST API.
//! - [`metrics`]: what the server measures, documented in [`metrics::METRICS`]; `sampler`:
//!   the gauges read from the store every few seconds (replica heartbeats, change-log lag).
//! - [`admission`]: turns for streams' initial responses (a reconnect storm queues); `conn`:
//!   the port's HTTP/2 connections (keepalive, jittered maximum age, GOAWAY spread over
//!   the drain period at shutdown).
//! - [`wire`]: responses written around the resources' shared encodings (one encoding per
//!   snapshot, not per stream) and their codec; `discovery` serves the stream methods with it.
//! - [`XdsServer`] (`server`): assembles everything into tonic routes for the xDS port.
//! - [`RunningXds`] (`running`): [`XdsServer::start`], the one way to serve the port; it starts
//!   the watcher, status sync and registration tasks and ends them at shutdown.
//! - `testing` (feature): a real server on 127.0.0.1:0, a hand-driven ADS/SDS client and a
//!   test mesh CA.
//!
//! **Architecture invariants.**
//! - [`protocol`], [`node`], [`view`] and registration's state machine do no IO and read
//!   no clock.
//! - Streams share snapshots through `Arc`s and hold pointers to the resources they sent;
//!   memory does not grow with configuration × streams.
//! - A stream computes what to send when it can write: a slow client skips intermediate
//!   snapshots and never delays another stream.
//! - A store outage never takes config away: the last good snapshot keeps being served.

pub mod admission;
mod ads;
pub mod auth;
pub mod cache;
mod conn;
pub mod csds;
mod discovery;
pub mod expiry;
pub mod lookups;
pub mod metrics;
pub mod node;
pub mod plan;
pub mod protocol;
pub mod push_trace;
mod quotas;
pub mod registration;
pub mod report;
mod revocation;
mod running;
mod sampler;
pub mod sds;
mod server;
pub mod services;
pub mod snapshot;
pub mod status;
pub mod view;
pub mod watcher;
pub mod wire;

#[cfg(feature = "testing")]
pub mod testing;

pub use cache::{CacheError, MeshHandle, MeshState, SnapshotCache, TrustSource};
pub use conn::{ConnectionPolicy, Drain, MaxAge};
pub use lookups::LookupLimits;
pub use node::{NodeError, NodeId, SidecarEndpointMeta};
pub use registration::{DEFAULT_GRACE_PERIOD, endpoint_name, parse_grace_period};
pub use running::RunningXds;
pub use sds::{IssueError, IssuedCertificate, WorkloadIssuer};
pub use server::{XdsConfig, XdsServer};
pub use snapshot::MeshSnapshot;
pub use status::{ClientState, ProxyRegistry, ProxyStatus, TypeStatus};
pub use wire::DeltaResponseStream;
pub use wire::ResponseStream;
