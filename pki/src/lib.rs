//! Mesh certificate authorities, with no IO and no async (randomness comes from the OS
//! through ring; the time is always a parameter).
//!
//! Code map:
//! - `ca`: [`MeshCa`]: generate a root, [`seal`](MeshCa::seal) it for storage,
//!   [`unseal`](MeshCa::unseal) it, and [`issue`](MeshCa::issue) workload certificates.
//! - `upload`: [`validate_upload`], a user's intermediate CA checked field by field.
//! - `kek`: [`Kek`], the key-encryption key CA keys are sealed with (AES-256-GCM).
//! - `info`: [`describe`], what the API shows of a certificate.
//! - `serving`: [`validate_certificate`], a gateway certificate a user uploads, and the
//!   sealing of its key.
//!
//! How the xDS server issues a workload certificate: read the mesh's signing CA from the
//! store (sealed), [`MeshCa::unseal`] it with the configured [`Kek`] (once, then keep it
//! while the trust bundle's `signer_id` is the same), then call [`MeshCa::issue`].

mod ca;
mod info;
mod kek;
mod serving;
mod upload;

pub use ca::{CLOCK_SKEW, IssuedCertificate, MeshCa, Origin, ROOT_VALIDITY, SealedCa, SealedCaRef};
pub use info::{CertInfo, describe};
pub use kek::{Kek, KekError, ca_key_aad};
pub use serving::{
    OpenKeyError, ServingCertificate, certificate_key_aad, open_certificate_key,
    seal_certificate_key, validate_certificate,
};
pub use upload::{CHAIN_FIELD, KEY_FIELD, MAX_CHAIN, MIN_RSA_BITS, UploadError, validate_upload};

use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(
        "the CA key was sealed with key-encryption key {stored}, but the configured key is \
         {configured}: configure the key the CAs were created with"
    )]
    WrongKek { stored: String, configured: String },
    #[error("stored CA is corrupt: {0}")]
    Corrupt(String),
    #[error("the CA expired at {0}: rotate to a new CA")]
    CaExpired(String),
    #[error("invalid SPIFFE ID: {0}")]
    SpiffeId(String),
    #[error("invalid certificate lifetime: {0}")]
    Lifetime(String),
}

/// A random positive 128-bit serial number.
pub(crate) fn random_serial() -> Result<rcgen::SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Kek(KekError::Random))?;
    // Positive and of full length, so the DER encoding is the 16 bytes as they are.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests;
