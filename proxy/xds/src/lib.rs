//! The xDS client of `switchboard-proxy`.
//!
//! - [`config`]: the proxy's own configuration types, converted from Envoy protos with
//!   `TryFrom`; anything the proxy does not implement is rejected with a precise message.
//! - [`client`]: one ADS stream, delta (incremental) by default or state of the world
//!   (chosen by [`bootstrap::AdsConfig`]), a typed [`Handler`] per resource type,
//!   ACK only after apply, per-resource NACKs, RDS/EDS subscriptions that follow the applied
//!   listeners and clusters, reconnects with `switchboard_runtime::Backoff` (jittered), and
//!   readiness.
//! - [`Handler`] (module `handler`): what applies converted resources, or refuses some with
//!   [`Rejected`]; the store and the binary's listener manager implement it.
//! - [`state`]: the applied configuration, [`ConfigStore`], read by the data path as one
//!   consistent snapshot.
//! - [`dump`]: the protos applied and refused, per resource, for `/config_dump`.
//! - [`bootstrap`]: where the control plane is, who this node is, and which ADS protocol to
//!   speak.
//!
//! **Invariant:** the data path reads configuration only through [`ConfigStore`] snapshots;
//! a snapshot never names a listener, route or cluster that failed conversion.

pub mod bootstrap;
pub mod client;
pub mod config;
pub mod dump;
mod handler;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;

pub use bootstrap::{AdsConfig, ApiType, Bootstrap, BootstrapError};
pub use client::{ClientOptions, Handler, Rejected, XdsClient, XdsClientHandle};
pub use config::ConfigError;
pub use dump::ConfigDump;
pub use state::{ConfigStore, Snapshot};
