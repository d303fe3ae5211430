//! The port through which the xDS server gets workload certificates: the mesh CA lives
//! elsewhere (the store holds it sealed), and this crate only needs "issue a certificate for
//! this SPIFFE ID" and "which roots does this mesh trust".

use std::fmt;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use switchboard_model::TrustBundle;
use switchboard_model::spec::SealedKey;
use zeroize::Zeroizing;

/// A workload certificate fresh from the mesh CA. Its private key exists only here, in the
/// stream that asked for it and on the wire to that proxy.
pub struct IssuedCertificate {
    /// PEM: the leaf first, then any intermediates (not the root).
    pub chain_pem: String,
    /// PEM (PKCS#8) private key of the leaf; wiped from memory when dropped.
    pub private_key_pem: Zeroizing<String>,
    /// Hex serial number of the leaf.
    pub serial: String,
    pub not_after: SystemTime,
    /// The CA that signed it ([`TrustBundle::signer_id`]).
    pub signer_id: String,
}

impl fmt::Debug for IssuedCertificate {
    /// Leaves the key out, so that no log line can carry it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("signer_id", &self.signer_id)
            .finish_non_exhaustive()
    }
}

/// Why the CA did not answer. Messages name the mesh and the cause, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("mesh {mesh:?} of tenant {tenant:?} has no CA yet")]
    NoCa { tenant: String, mesh: String },
    #[error("the mesh CA cannot be read ({0}); retrying (hint: is the database reachable?)")]
    Unavailable(String),
    #[error("the mesh CA could not issue a certificate: {0}")]
    Failed(String),
}

/// The mesh CA as the xDS server sees it. `switchboard serve` plugs in the store-backed CA;
/// tests plug in [`crate::testing::TestIssuer`].
pub trait WorkloadIssuer: fmt::Debug + Send + Sync + 'static {
    /// A new certificate and key for `spiffe_id` (a SAN URI), valid for `lifetime` from now
    /// (or less, if the CA itself expires sooner: the server renews from the `not_after` it
    /// gets, not from `lifetime`).
    fn issue<'a>(
        &'a self,
        tenant: &'a str,
        mesh: &'a str,
        spiffe_id: &'a str,
        lifetime: Duration,
    ) -> BoxFuture<'a, Result<IssuedCertificate, IssueError>>;

    /// The mesh's public trust state: the roots behind `ROOTCA` and the current signer. Read
    /// at every snapshot rebuild; a CA rotation is a store write, so it rebuilds the mesh.
    fn trust_bundle<'a>(
        &'a self,
        tenant: &'a str,
        mesh: &'a str,
    ) -> BoxFuture<'a, Result<TrustBundle, IssueError>>;

    /// Opens the private key of uploaded certificate `name` of `tenant`/`mesh` (the
    /// `certificates` kind), which the API sealed with the key-encryption key that stays
    /// behind this port. Called at snapshot rebuilds, for the certificates gateways name.
    fn open_certificate_key(
        &self,
        tenant: &str,
        mesh: &str,
        name: &str,
        sealed: &SealedKey,
    ) -> Result<Zeroizing<String>, IssueError>;
}
