//! The SDS resources, built without IO: `ROOTCA` from a mesh's trust bundle, `default` from
//! an issued certificate, and the redacted copy that status reporting keeps instead.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use switchboard_model::TrustBundle;
use switchboard_translator::XdsResource;
use switchboard_xds_proto::pb::envoy::config::core::v3::{DataSource, data_source};
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};

use super::ca::IssuedCertificate;

/// The proxy's own certificate and key (the name Envoy and Istio use).
pub const DEFAULT: &str = "default";
/// The roots of the mesh's trust bundle.
pub const ROOTCA: &str = "ROOTCA";

/// What replaces a private key in anything but the response to its proxy.
const REDACTED: &str = "[redacted]";

/// The public facts of a workload certificate: what status pages show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub serial: String,
    pub spiffe_id: String,
    pub not_after: SystemTime,
    pub signer_id: String,
}

/// A node's `default` secret: the resource sent to its proxy (with the key) and its public
/// facts. `Debug` leaves the resource out.
pub struct NodeSecret {
    pub resource: Arc<XdsResource>,
    pub info: CertificateInfo,
}

impl fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSecret")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

pub(crate) fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    })
}

/// `ROOTCA`: every root of the bundle, concatenated; `None` for an empty bundle (no CA yet).
pub fn root_ca(trust: &TrustBundle) -> Option<Arc<XdsResource>> {
    if trust.is_empty() {
        return None;
    }
    let mut pem = String::new();
    for root in &trust.roots_pem {
        pem.push_str(root.trim_end());
        pem.push('\n');
    }
    let secret = Secret {
        name: ROOTCA.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(pem.as_bytes()),
                ..Default::default()
            },
        )),
    };
    Some(Arc::new(XdsResource::new(ROOTCA, &secret)))
}

/// `default` for `spiffe_id` from a fresh certificate. The version is the serial, not a hash
/// of the bytes, so that nothing derived from the key leaves the process.
pub fn node_secret(spiffe_id: &str, cert: &IssuedCertificate) -> NodeSecret {
    let secret = Secret {
        name: DEFAULT.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(cert.chain_pem.as_bytes()),
            private_key: inline(cert.private_key_pem.as_bytes()),
            ..Default::default()
        })),
    };
    NodeSecret {
        resource: Arc::new(XdsResource::with_version(
            DEFAULT,
            format!("{}/{}", cert.signer_id, cert.serial),
            &secret,
        )),
        info: CertificateInfo {
            serial: cert.serial.clone(),
            spiffe_id: spiffe_id.to_owned(),
            not_after: cert.not_after,
            signer_id: cert.signer_id.clone(),
        },
    }
}

/// `resource` without a private key: a Secret holding one gets `[redacted]` in its place
/// (same name and version); anything else is returned as is.
pub fn redact(resource: &Arc<XdsResource>) -> Arc<XdsResource> {
    let Ok(mut secret) = resource.decode::<Secret>() else {
        return Arc::clone(resource);
    };
    let Some(secret::Type::TlsCertificate(tls)) = &mut secret.r#type else {
        return Arc::clone(resource);
    };
    if tls.private_key.is_none() {
        return Arc::clone(resource);
    }
    tls.private_key = Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(REDACTED.to_owned())),
        ..Default::default()
    });
    Arc::new(XdsResource::with_version(
        resource.name.clone(),
        resource.version.clone(),
        &secret,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use zeroize::Zeroizing;

    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";

    fn cert() -> IssuedCertificate {
        IssuedCertificate {
            chain_pem: "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n"
                .to_owned(),
            private_key_pem: Zeroizing::new(KEY.to_owned()),
            serial: "0a0b".to_owned(),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(3600),
            signer_id: "ca-1".to_owned(),
        }
    }

    #[test]
    fn an_empty_bundle_has_no_rootca() {
        assert!(root_ca(&TrustBundle::default()).is_none());
        let two = TrustBundle {
            signer_id: "b".to_owned(),
            roots_pem: vec!["A".to_owned(), "B\n".to_owned()],
        };
        let r = root_ca(&two).unwrap();
        let s: Secret = r.decode().unwrap();
        let Some(secret::Type::ValidationContext(v)) = s.r#type else {
            panic!("not a validation context");
        };
        let Some(data_source::Specifier::InlineBytes(b)) = v.trusted_ca.unwrap().specifier else {
            panic!("not inline");
        };
        assert_eq!(b, b"A\nB\n");
    }

    #[test]
    fn redaction_removes_the_key_and_keeps_the_rest() {
        let s = node_secret("spiffe://acme.x/mesh/m/service/pay", &cert());
        assert_eq!(s.resource.version, "ca-1/0a0b");
        assert!(
            s.resource
                .value()
                .windows(KEY.len())
                .any(|w| w == KEY.as_bytes())
        );
        let red = redact(&s.resource);
        assert_eq!(
            (red.name.as_str(), red.version.as_str()),
            (DEFAULT, "ca-1/0a0b")
        );
        assert!(
            !red.value()
                .windows(6)
                .any(|w| w == b"c2VjcmV0"[..6].as_ref())
        );
        let Some(secret::Type::TlsCertificate(tls)) = red.decode::<Secret>().unwrap().r#type else {
            panic!("not a certificate");
        };
        assert!(tls.certificate_chain.is_some());
        assert!(!format!("{s:?}").contains("PRIVATE"));
        // Nothing to redact in ROOTCA.
        let root = root_ca(&TrustBundle {
            signer_id: "a".to_owned(),
            roots_pem: vec!["A".to_owned()],
        })
        .unwrap();
        assert!(Arc::ptr_eq(&redact(&root), &root));
    }
}
