//! SDS: the secrets the xDS port serves, `ROOTCA` (the mesh's trust bundle), `default`
//! (the node's own certificate and key) and `certificate/{name}` (a certificate users
//! uploaded, for the gateways that name it).
//!
//! - [`ca`]: the port to the mesh CA ([`WorkloadIssuer`]); without one, no `default` is ever
//!   served.
//! - [`secrets`]: the resources, built without IO, and the redaction that keeps private keys
//!   out of status and CSDS.
//! - [`renewal`]: the per-stream task that issues, renews and re-issues `default`.
//! - [`guard`]: the check of every Secret response against the stream's credentials, just
//!   before it is sent.
//! - [`certificates`]: the uploaded certificates gateways name, opened through the CA port
//!   at each snapshot rebuild.
//!
//! Who gets what is decided by [`crate::view::NodeView`]: nothing for an anonymous stream;
//! `ROOTCA` for any stream with a proxy token; `default` for a sidecar whose service exists
//! (identity `spiffe://{tenant}.{trust domain}/mesh/{mesh}/service/{service}`) or a gateway
//! that exists (its name in the `service` segment), unless the mesh's mTLS mode is `off`;
//! `certificate/{name}` for a gateway whose spec names certificate `name` (whatever the mTLS
//! mode).

use switchboard_xds_proto::ResourceType;

use crate::protocol::Subscriptions;

pub mod ca;
pub mod certificates;
pub mod guard;
pub mod renewal;
pub mod secrets;

pub use ca::{IssueError, IssuedCertificate, WorkloadIssuer};
pub use secrets::{CertificateInfo, DEFAULT, NodeSecret, ROOTCA};

/// Whether a stream's Secret subscription covers `default` (by name or wildcard): only then
/// is a certificate issued for it.
pub(crate) fn wants_default(state: &(impl Subscriptions + ?Sized)) -> bool {
    state
        .subscription(ResourceType::Secret)
        .is_some_and(|(wildcard, names)| wildcard || names.iter().any(|n| n == DEFAULT))
}
