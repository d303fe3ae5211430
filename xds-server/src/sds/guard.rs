//! The last check on every Secret response before it leaves the server, whatever built it:
//! the view ([`crate::view::NodeView`]) decides what a node gets, and this re-checks the
//! result against the stream's credentials from the bytes about to be sent, so that a bug
//! anywhere upstream cannot hand a secret to the wrong stream.
//!
//! The rules: an anonymous stream gets no secret at all; `ROOTCA` is the trust bundle of the
//! stream's own mesh (the caller checks that the snapshot is of the node's tenant and mesh);
//! `default` must be a certificate whose SPIFFE ID is exactly the node's identity;
//! `certificate/{name}` only to a gateway whose spec names certificate `name`; nothing else
//! is served.

use std::sync::Arc;

use switchboard_translator::XdsResource;
use switchboard_xds_proto::ResourceType;
use switchboard_xds_proto::pb::envoy::config::core::v3::{DataSource, data_source};
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};

use crate::wire::{DeltaResponse, SotwResponse};

use super::{DEFAULT, ROOTCA};

/// Why a Secret response may not be sent. Names no secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("a secret ({0}) for a stream that may receive none")]
    NotEntitled(String),
    #[error("secret {0:?} is not one this server serves")]
    UnknownName(String),
    #[error("secret `default` is not a certificate this server can read")]
    Unreadable,
    #[error("a delta resource named {declared:?} carries secret {found:?}")]
    NameMismatch { declared: String, found: String },
    #[error("secret `default` is for {found:?}, not for the node's identity {expected:?}")]
    WrongIdentity {
        found: String,
        expected: Option<String>,
    },
}

/// What the stream may receive: whether secrets at all, and its identity (for `default`).
#[derive(Debug, Clone, Copy)]
pub struct Entitlement<'a> {
    pub secrets: bool,
    pub identity: Option<&'a str>,
    /// The uploaded certificates the node's gateway names (none for other nodes).
    pub gateway_certificates: &'a [&'a str],
}

/// Checks every Secret resource of `response`; other responses pass untouched.
pub fn check(response: &SotwResponse, may: Entitlement<'_>) -> Result<(), Violation> {
    check_resources(&response.type_url, &response.resources, may)
}

/// [`check`] for a delta response. `removed_resources` carry no secret material and pass.
pub fn check_delta(response: &DeltaResponse, may: Entitlement<'_>) -> Result<(), Violation> {
    check_resources(&response.type_url, &response.resources, may)
}

/// Checks `resources` about to be sent as `type_url` (any response shape). A resource's name
/// (which a delta response also writes outside the secret, and a client files the secret
/// under) must be the secret's own.
pub fn check_resources(
    type_url: &str,
    resources: &[Arc<XdsResource>],
    may: Entitlement<'_>,
) -> Result<(), Violation> {
    if type_url != ResourceType::Secret.type_url() {
        return Ok(());
    }
    for r in resources {
        let secret: Secret = r.decode().map_err(|_| Violation::Unreadable)?;
        if r.name != secret.name {
            return Err(Violation::NameMismatch {
                declared: r.name.clone(),
                found: secret.name,
            });
        }
        if !may.secrets {
            return Err(Violation::NotEntitled(secret.name));
        }
        match secret.name.as_str() {
            ROOTCA => {}
            DEFAULT => {
                let found = leaf_uri(&secret).ok_or(Violation::Unreadable)?;
                if may.identity != Some(found.as_str()) {
                    return Err(Violation::WrongIdentity {
                        found,
                        expected: may.identity.map(str::to_owned),
                    });
                }
            }
            name => {
                match name.strip_prefix(switchboard_translator::names::CERTIFICATE_SECRET_PREFIX) {
                    Some(c) if may.gateway_certificates.contains(&c) => {}
                    Some(_) => return Err(Violation::NotEntitled(secret.name)),
                    None => return Err(Violation::UnknownName(secret.name)),
                }
            }
        }
    }
    Ok(())
}

/// The first URI SAN of the leaf of a TLS certificate secret's chain.
fn leaf_uri(secret: &Secret) -> Option<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
        return None;
    };
    let pem: &[u8] = match tls.certificate_chain.as_ref()? {
        DataSource {
            specifier: Some(data_source::Specifier::InlineBytes(b)),
            ..
        } => b,
        DataSource {
            specifier: Some(data_source::Specifier::InlineString(s)),
            ..
        } => s.as_bytes(),
        _ => return None,
    };
    let leaf = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, TlsCertificate,
    };

    const PAY: &str = "spiffe://acme.mesh.local/mesh/prod/service/pay";

    fn cert_for(uri: &str) -> Secret {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Secret {
            name: DEFAULT.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(cert.pem())),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    fn root() -> Secret {
        Secret {
            name: ROOTCA.into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext::default(),
            )),
        }
    }

    fn response(secrets: &[Secret]) -> SotwResponse {
        SotwResponse {
            type_url: ResourceType::Secret.type_url().into(),
            resources: secrets
                .iter()
                .map(|s| Arc::new(XdsResource::new(s.name.clone(), s)))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_gets_its_own_certificate_and_its_mesh_root() {
        let may = Entitlement {
            secrets: true,
            identity: Some(PAY),
            gateway_certificates: &[],
        };
        assert_eq!(check(&response(&[root(), cert_for(PAY)]), may), Ok(()));
    }

    #[test]
    fn anything_else_is_refused() {
        let anonymous = Entitlement {
            secrets: false,
            identity: None,
            gateway_certificates: &[],
        };
        assert_eq!(
            check(&response(&[root()]), anonymous),
            Err(Violation::NotEntitled(ROOTCA.into()))
        );
        let pay = Entitlement {
            secrets: true,
            identity: Some(PAY),
            gateway_certificates: &[],
        };
        let other = "spiffe://acme.mesh.local/mesh/prod/service/other";
        assert_eq!(
            check(&response(&[cert_for(other)]), pay),
            Err(Violation::WrongIdentity {
                found: other.into(),
                expected: Some(PAY.into())
            })
        );
        let no_identity = Entitlement {
            secrets: true,
            identity: None,
            gateway_certificates: &[],
        };
        assert!(check(&response(&[cert_for(PAY)]), no_identity).is_err());
        let mut odd = root();
        odd.name = "kubernetes://other".into();
        assert_eq!(
            check(&response(&[odd]), pay),
            Err(Violation::UnknownName("kubernetes://other".into()))
        );
        // An uploaded certificate: only to the gateway naming it.
        let mut web = root();
        web.name = "certificate/web".into();
        let edge = Entitlement {
            secrets: true,
            identity: None,
            gateway_certificates: &["web"],
        };
        assert_eq!(check(&response(&[web.clone()]), edge), Ok(()));
        assert_eq!(
            check(&response(&[web]), pay),
            Err(Violation::NotEntitled("certificate/web".into()))
        );
        // Other types pass untouched.
        let mut listeners = response(&[cert_for(PAY)]);
        listeners.type_url = ResourceType::Listener.type_url().into();
        assert_eq!(check(&listeners, anonymous), Ok(()));
    }

    fn delta(secrets: &[(&str, Secret)]) -> DeltaResponse {
        DeltaResponse::new(
            ResourceType::Secret.type_url(),
            "1",
            secrets
                .iter()
                .map(|(name, s)| Arc::new(XdsResource::new((*name).to_owned(), s)))
                .collect(),
            vec!["certificate/gone".into()],
        )
    }

    #[test]
    fn delta_responses_get_the_same_rules_and_their_names_must_match() {
        let pay = Entitlement {
            secrets: true,
            identity: Some(PAY),
            gateway_certificates: &[],
        };
        let ok = delta(&[(ROOTCA, root()), (DEFAULT, cert_for(PAY))]);
        assert_eq!(check_delta(&ok, pay), Ok(()));
        let anonymous = Entitlement {
            secrets: false,
            identity: None,
            gateway_certificates: &[],
        };
        assert_eq!(
            check_delta(&delta(&[(ROOTCA, root())]), anonymous),
            Err(Violation::NotEntitled(ROOTCA.into()))
        );
        let other = "spiffe://acme.mesh.local/mesh/prod/service/other";
        assert!(matches!(
            check_delta(&delta(&[(DEFAULT, cert_for(other))]), pay),
            Err(Violation::WrongIdentity { .. })
        ));
        // A root filed under `default` would replace the node's certificate.
        assert_eq!(
            check_delta(&delta(&[(DEFAULT, root())]), pay),
            Err(Violation::NameMismatch {
                declared: DEFAULT.into(),
                found: ROOTCA.into()
            })
        );
    }
}
