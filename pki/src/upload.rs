//! Validation of a user's intermediate CA (a PEM certificate chain and a PEM private key).
//! Every error names the request field it is about and never quotes key material.

use crate::ca::{MeshCa, Origin};
use crate::info::{self, cert_info, rfc3339};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PublicKeyData};
use time::OffsetDateTime;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// The longest chain accepted (the CA's certificate and its issuers).
pub const MAX_CHAIN: usize = 5;
/// The smallest RSA key accepted.
pub const MIN_RSA_BITS: usize = 2048;

pub const CHAIN_FIELD: &str = "certificateChain";
pub const KEY_FIELD: &str = "privateKey";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("malformed PEM: {0}")]
    MalformedChain(String),
    #[error("the chain has {0} certificates; at most {MAX_CHAIN} are accepted")]
    ChainTooLong(usize),
    #[error("certificate {index} ({subject}) is not valid until {not_before}")]
    NotYetValid {
        index: usize,
        subject: String,
        not_before: String,
    },
    #[error("certificate {index} ({subject}) expired at {not_after}")]
    Expired {
        index: usize,
        subject: String,
        not_after: String,
    },
    #[error("the first certificate ({0}) is not a CA: it has no `CA:true` basic constraint")]
    NotCa(String),
    #[error(
        "certificate {0} was not issued by the certificate after it (issuer and subject differ)"
    )]
    BrokenChain(usize),
    #[error(
        "not one unencrypted PKCS#8 key in PEM; convert the key with \
         `openssl pkcs8 -topk8 -nocrypt`"
    )]
    MalformedKey,
    #[error("the RSA key has {0} bits; at least {MIN_RSA_BITS} are required")]
    WeakRsa(usize),
    #[error("unsupported key type ({0}): use ECDSA P-256 or P-384, or RSA of at least 2048 bits")]
    UnsupportedKey(String),
    #[error("the private key does not match the first certificate of certificateChain")]
    KeyMismatch,
}

impl UploadError {
    /// The request field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            UploadError::MalformedKey
            | UploadError::WeakRsa(_)
            | UploadError::UnsupportedKey(_)
            | UploadError::KeyMismatch => KEY_FIELD,
            _ => CHAIN_FIELD,
        }
    }
}

/// Checks an uploaded intermediate CA at `now` and returns it ready to issue: the chain
/// (the CA's own certificate first, at most [`MAX_CHAIN`]) must parse, be valid now, link
/// issuer to subject, and start with a `CA:true` certificate whose key is ECDSA P-256/P-384
/// or RSA ≥ 2048 bits and matches `key_pem`.
pub fn validate_upload(
    chain_pem: &str,
    key_pem: &str,
    now: OffsetDateTime,
) -> Result<MeshCa, UploadError> {
    let ders = parse_chain(chain_pem, now)?;
    let (_, leaf) = X509Certificate::from_der(&ders[0])
        .map_err(|e| UploadError::MalformedChain(format!("certificate 1 does not parse: {e}")))?;
    let is_ca = matches!(leaf.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        return Err(UploadError::NotCa(leaf.subject().to_string()));
    }
    let key = leaf_key(&leaf, key_pem)?;
    let chain = ders.iter().map(|d| info::der_to_pem(d)).collect();
    MeshCa::assemble(Origin::Uploaded, chain, key)
        .map_err(|e| UploadError::MalformedChain(e.to_string()))
}

/// The DER certificates of `chain_pem` (at most [`MAX_CHAIN`]), each valid at `now` and
/// issued by the next one: what a CA upload and a gateway certificate have in common.
pub(crate) fn parse_chain(
    chain_pem: &str,
    now: OffsetDateTime,
) -> Result<Vec<Vec<u8>>, UploadError> {
    let mut ders = vec![];
    for (i, block) in Pem::iter_from_buffer(chain_pem.as_bytes()).enumerate() {
        let block =
            block.map_err(|e| UploadError::MalformedChain(format!("block {}: {e}", i + 1)))?;
        if block.label != "CERTIFICATE" {
            return Err(UploadError::MalformedChain(format!(
                "block {} is a {:?} block, not a CERTIFICATE",
                i + 1,
                block.label
            )));
        }
        ders.push(block.contents);
    }
    if ders.is_empty() {
        return Err(UploadError::MalformedChain(
            "no `-----BEGIN CERTIFICATE-----` block found".into(),
        ));
    }
    if ders.len() > MAX_CHAIN {
        return Err(UploadError::ChainTooLong(ders.len()));
    }
    let mut certs = vec![];
    for (i, der) in ders.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| {
            UploadError::MalformedChain(format!("certificate {} does not parse: {e}", i + 1))
        })?;
        certs.push(cert);
    }
    for (i, cert) in certs.iter().enumerate() {
        let info = cert_info(cert);
        if now < info.not_before {
            return Err(UploadError::NotYetValid {
                index: i + 1,
                subject: info.subject,
                not_before: rfc3339(info.not_before),
            });
        }
        if now > info.not_after {
            return Err(UploadError::Expired {
                index: i + 1,
                subject: info.subject,
                not_after: rfc3339(info.not_after),
            });
        }
    }
    for (i, pair) in certs.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw() {
            return Err(UploadError::BrokenChain(i + 1));
        }
    }
    drop(certs);
    Ok(ders)
}

/// The private key of `leaf`: of a type we accept, and matching the certificate.
pub(crate) fn leaf_key(leaf: &X509Certificate<'_>, key_pem: &str) -> Result<KeyPair, UploadError> {
    check_key_type(leaf)?;
    let key = parse_key(key_pem)?;
    if key.subject_public_key_info() != leaf.public_key().raw {
        return Err(UploadError::KeyMismatch);
    }
    Ok(key)
}

/// The certificate's key must be one we accept (checked on the certificate, so a weak RSA
/// key is named as such rather than as unparseable).
fn check_key_type(cert: &X509Certificate<'_>) -> Result<(), UploadError> {
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = bit_length(rsa.modulus);
            if bits < MIN_RSA_BITS {
                return Err(UploadError::WeakRsa(bits));
            }
            Ok(())
        }
        Ok(PublicKey::EC(_)) => Ok(()),
        Ok(PublicKey::DSA(_)) => Err(UploadError::UnsupportedKey("DSA".into())),
        Ok(_) => Err(UploadError::UnsupportedKey(
            cert.public_key().algorithm.algorithm.to_id_string(),
        )),
        Err(_) => Err(UploadError::UnsupportedKey("unparseable public key".into())),
    }
}

fn bit_length(big_endian: &[u8]) -> usize {
    let trimmed: &[u8] = match big_endian.iter().position(|&b| b != 0) {
        Some(i) => &big_endian[i..],
        None => &[],
    };
    match trimmed.first() {
        Some(first) => (trimmed.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}

fn parse_key(key_pem: &str) -> Result<KeyPair, UploadError> {
    let mut blocks = Pem::iter_from_buffer(key_pem.as_bytes());
    let block = match (blocks.next(), blocks.next()) {
        (Some(Ok(b)), None) if b.label == "PRIVATE KEY" => b,
        _ => return Err(UploadError::MalformedKey),
    };
    let key =
        KeyPair::try_from(block.contents.as_slice()).map_err(|_| UploadError::MalformedKey)?;
    let alg = key.algorithm();
    if alg == &PKCS_ECDSA_P256_SHA256
        || alg == &PKCS_ECDSA_P384_SHA384
        || alg == &rcgen::PKCS_RSA_SHA256
    {
        Ok(key)
    } else {
        Err(UploadError::UnsupportedKey(format!("{alg:?}")))
    }
}
