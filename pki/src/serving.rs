//! Certificates that users upload for gateways to serve (the `certificates` kind): a chain
//! whose first certificate is the server's, and its private key. Checked field by field like
//! a CA upload (PEM, validity, chain links, key type and size, key match), but the leaf need
//! not be a CA. The key is stored only sealed with the [`Kek`], bound to its tenant, mesh and
//! certificate name ([`certificate_key_aad`]), so a sealed key copied elsewhere does not open.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::info::{cert_info, der_to_pem};
use crate::kek::{Kek, KekError};
use crate::upload::{UploadError, leaf_key, parse_chain};

/// A validated gateway certificate: what is stored (the chain and the facts the API shows)
/// and the key to seal. No `Debug` of the key.
pub struct ServingCertificate {
    /// The chain re-encoded as PEM, the server's certificate first.
    pub chain_pem: String,
    /// The key as PKCS#8 PEM.
    pub key_pem: Zeroizing<String>,
    /// RFC 4514 subject of the server's certificate.
    pub subject: String,
    /// Its DNS subject alternative names (lowercase), what SNI chooses it by.
    pub dns_names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// SHA-256 of the server certificate's DER, lowercase hex.
    pub fingerprint: String,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("subject", &self.subject)
            .field("dns_names", &self.dns_names)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Checks an uploaded gateway certificate at `now`: the chain (at most
/// [`crate::MAX_CHAIN`]) must parse, be valid now and link issuer to subject; the key must be
/// one unencrypted PKCS#8 key (ECDSA P-256/P-384, RSA ≥ 2048 bits) matching the first
/// certificate. Errors name `certificateChain` or `privateKey` ([`UploadError::field`]).
pub fn validate_certificate(
    chain_pem: &str,
    key_pem: &str,
    now: OffsetDateTime,
) -> Result<ServingCertificate, UploadError> {
    let ders = parse_chain(chain_pem, now)?;
    let (_, leaf) = X509Certificate::from_der(&ders[0])
        .map_err(|e| UploadError::MalformedChain(format!("certificate 1 does not parse: {e}")))?;
    let key = leaf_key(&leaf, key_pem)?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(d) = name {
                let d = d.to_ascii_lowercase();
                if !dns_names.contains(&d) {
                    dns_names.push(d);
                }
            }
        }
    }
    let info = cert_info(&leaf);
    let digest = ring::digest::digest(&ring::digest::SHA256, &ders[0]);
    Ok(ServingCertificate {
        chain_pem: ders.iter().map(|d| der_to_pem(d)).collect(),
        key_pem: Zeroizing::new(key.serialize_pem()),
        subject: info.subject,
        dns_names,
        not_before: info.not_before,
        not_after: info.not_after,
        fingerprint: hex::encode(digest.as_ref()),
    })
}

/// The additional data a gateway certificate's sealed key is bound to.
pub fn certificate_key_aad(tenant: &str, mesh: &str, name: &str) -> Vec<u8> {
    format!("switchboard-certificate-key/v1\0{tenant}\0{mesh}\0{name}").into_bytes()
}

/// Seals a gateway certificate's key for storage: the KEK's id and the sealed bytes in
/// base64.
pub fn seal_certificate_key(
    kek: &Kek,
    tenant: &str,
    mesh: &str,
    name: &str,
    key_pem: &str,
) -> Result<(String, String), KekError> {
    let sealed = kek.seal(key_pem.as_bytes(), &certificate_key_aad(tenant, mesh, name))?;
    Ok((kek.id().to_owned(), STANDARD.encode(sealed)))
}

/// Why a stored gateway key does not open. Never carries key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenKeyError {
    #[error(
        "the key was sealed with key-encryption key {stored}, but the configured key is \
         {configured}"
    )]
    WrongKek { stored: String, configured: String },
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error("the opened key is not UTF-8 PEM")]
    NotPem,
}

/// Opens what [`seal_certificate_key`] sealed for the same tenant, mesh and name.
pub fn open_certificate_key(
    kek: &Kek,
    tenant: &str,
    mesh: &str,
    name: &str,
    kek_id: &str,
    sealed_base64: &str,
) -> Result<Zeroizing<String>, OpenKeyError> {
    if kek_id != kek.id() {
        return Err(OpenKeyError::WrongKek {
            stored: kek_id.to_owned(),
            configured: kek.id().to_owned(),
        });
    }
    let sealed = STANDARD
        .decode(sealed_base64)
        .map_err(|_| KekError::Corrupt("not base64"))?;
    let bytes = kek.open(&sealed, &certificate_key_aad(tenant, mesh, name))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| OpenKeyError::NotPem)?;
    Ok(Zeroizing::new(text.to_owned()))
}
