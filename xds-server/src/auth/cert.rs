//! Client-certificate authentication: a proxy may present a workload certificate issued by
//! its mesh's CA instead of a proxy token.
//!
//! The TLS layer only checks that the client holds the key of the certificate it presents
//! (the handshake signature): a mesh's roots change with rotation and differ per mesh, so
//! the chain cannot be checked before the node id says which mesh the stream is for. Here the
//! chain is validated against that mesh's current trust bundle (both roots during a rotation),
//! at the current time, for client authentication. The certificate's only URI SAN, its
//! SPIFFE ID, says who the stream is: its tenant and mesh must be the node's, and the node may
//! claim only its service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use switchboard_model::identity::{TrustBundle, WorkloadId};
use switchboard_translator::NodeRole;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::AuthError;
use crate::node::NodeId;

/// The DER content of id-kp-clientAuth (1.3.6.1.5.5.7.3.2). Required, not merely allowed: a
/// certificate without the EKU extension is not one the mesh CA issued for a workload.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Parsed bundles kept at most; the cache is emptied when it would grow past this (bundles
/// change only with CA rotations, so it refills with the few in use).
const MAX_CACHED_BUNDLES: usize = 1024;

/// Why a client certificate does not authenticate (UNAUTHENTICATED). Messages describe the
/// certificate's shape and dates, never its bytes or any key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("the client certificate is not a valid X.509 certificate")]
    Malformed,
    #[error(
        "the client certificate has no workload identity: it needs exactly one URI SAN of the \
         form spiffe://{{tenant}}.{{trust domain}}/mesh/{{mesh}}/service/{{service}}, as the \
         mesh CA issues them"
    )]
    NoIdentity,
    #[error(
        "the client certificate expired at {not_after} (unix time): renew it from the mesh CA \
         (SDS secret default) and reconnect"
    )]
    Expired { not_after: i64 },
    #[error("the client certificate is not valid before {not_before} (unix time)")]
    NotYetValid { not_before: i64 },
    #[error(
        "the client certificate was not issued by the CA of mesh {mesh:?} of tenant {tenant:?} \
         that the node id names ({reason}); present a certificate that CA issued, or a proxy \
         token"
    )]
    Untrusted {
        tenant: String,
        mesh: String,
        reason: String,
    },
}

/// What a presented certificate claims before its chain is checked: its identity and
/// validity (from the leaf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub identity: WorkloadId,
    pub not_before: i64,
    pub not_after: i64,
}

impl Leaf {
    /// Reads the leaf's SPIFFE ID and validity.
    pub fn parse(der: &[u8]) -> Result<Leaf, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| CertError::Malformed)?;
        let san = cert
            .subject_alternative_name()
            .map_err(|_| CertError::Malformed)?;
        let mut uris = san
            .iter()
            .flat_map(|s| s.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        let (Some(uri), None) = (uris.next(), uris.next()) else {
            return Err(CertError::NoIdentity);
        };
        let identity = WorkloadId::parse(uri).ok_or(CertError::NoIdentity)?;
        let validity = cert.validity();
        Ok(Leaf {
            identity,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }

    /// Whether the leaf is valid at `now` (checked again with the chain; this gives the
    /// precise message before any mesh is looked at).
    pub fn check_time(&self, now: SystemTime) -> Result<(), CertError> {
        let now = unix(now);
        if now > self.not_after {
            return Err(CertError::Expired {
                not_after: self.not_after,
            });
        }
        if now < self.not_before {
            return Err(CertError::NotYetValid {
                not_before: self.not_before,
            });
        }
        Ok(())
    }

    /// When the certificate stops being valid, which ends its streams.
    pub fn expires(&self) -> SystemTime {
        let secs = u64::try_from(self.not_after).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A mesh's roots as webpki trust anchors.
type Anchors = Arc<Vec<TrustAnchor<'static>>>;

/// Parsed trust bundles by content, so a handshake does not re-parse the roots.
#[derive(Debug, Default, Clone)]
pub struct RootsCache {
    inner: Arc<Mutex<HashMap<[u8; 32], Anchors>>>,
}

impl RootsCache {
    fn key(bundle: &TrustBundle) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(bundle.signer_id.as_bytes());
        for root in &bundle.roots_pem {
            h.update([0]);
            h.update(root.as_bytes());
        }
        h.finalize().into()
    }

    /// The anchors of `bundle`; a root that does not parse is left out (and logged).
    pub fn anchors(&self, bundle: &TrustBundle) -> Anchors {
        let key = Self::key(bundle);
        let mut cache = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(a) = cache.get(&key) {
            return a.clone();
        }
        let mut anchors = Vec::new();
        for pem in &bundle.roots_pem {
            let anchor = CertificateDer::from_pem_slice(pem.as_bytes())
                .ok()
                .and_then(|der| {
                    webpki::anchor_from_trusted_cert(&der)
                        .ok()
                        .map(|a| a.to_owned())
                });
            match anchor {
                Some(a) => anchors.push(a),
                None => tracing::error!(signer = %bundle.signer_id,
                    "a root of the mesh's trust bundle does not parse; it trusts no client certificate"),
            }
        }
        if cache.len() >= MAX_CACHED_BUNDLES {
            cache.clear();
        }
        let anchors = Arc::new(anchors);
        cache.insert(key, anchors.clone());
        anchors
    }
}

/// Validates `chain` (leaf first, as TLS presented it, `leaf` parsed from its first
/// certificate) for `node` against `anchors` at `now`, and returns what it authenticates as.
pub(crate) fn verify(
    chain: &[CertificateDer<'static>],
    leaf: Leaf,
    anchors: &[TrustAnchor<'static>],
    node: &NodeId,
    trust_domain: &str,
    now: SystemTime,
) -> Result<Leaf, AuthError> {
    let untrusted = |reason: String| CertError::Untrusted {
        tenant: node.tenant.clone(),
        mesh: node.mesh.clone(),
        reason,
    };
    let Some((der, intermediates)) = chain.split_first() else {
        return Err(AuthError::Unauthenticated);
    };
    leaf.check_time(now)?;
    let end_entity = EndEntityCert::try_from(der).map_err(|_| CertError::Malformed)?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            anchors,
            intermediates,
            UnixTime::since_unix_epoch(since_epoch),
            KeyUsage::required(EKU_CLIENT_AUTH),
            None,
            None,
        )
        .map_err(|e| untrusted(e.to_string()))?;
    let id = &leaf.identity;
    if id.tenant != node.tenant || id.mesh != node.mesh || id.trust_domain != trust_domain {
        return Err(AuthError::IdentityMismatch {
            identity: id.to_uri(),
            node_tenant: node.tenant.clone(),
            node_mesh: node.mesh.clone(),
        });
    }
    Ok(leaf)
}

/// Checks again a chain that admitted a stream, against a mesh's trust bundle now: after a
/// CA rotation completes, a certificate of the old root no longer authenticates its stream.
pub fn reverify(
    chain: &[CertificateDer<'static>],
    roots: &RootsCache,
    bundle: &TrustBundle,
    node: &NodeId,
    trust_domain: &str,
    now: SystemTime,
) -> Result<Leaf, AuthError> {
    let Some(der) = chain.first() else {
        return Err(AuthError::Unauthenticated);
    };
    let leaf = Leaf::parse(der)?;
    verify(chain, leaf, &roots.anchors(bundle), node, trust_domain, now)
}

/// A certificate authenticates one service: a sidecar of another service, or a gateway of
/// another name, may not use it. Proxyless clients claim no service.
pub fn check_claim(identity: &WorkloadId, role: &NodeRole) -> Result<(), AuthError> {
    let claimed = match role {
        NodeRole::Sidecar(p) => &p.service,
        NodeRole::Gateway { name } => name,
        NodeRole::Proxyless => return Ok(()),
    };
    if *claimed == identity.service {
        return Ok(());
    }
    Err(AuthError::ServiceMismatch {
        certificate: identity.service.clone(),
        claimed: claimed.clone(),
    })
}

#[cfg(test)]
mod tests;
