//! Peer certificate checks beyond the chain: SAN matchers (`match_typed_subject_alt_names`,
//! SPIFFE URI SANs above all) for client certificates (wrapping WebPki's client verifier)
//! and for server certificates (the chain verified with webpki against the roots, then the
//! SANs matched, since rustls' default server verifier checks only DNS names).

use std::sync::Arc;

use switchboard_proxy_xds::config::tls::{SanMatcher, SanType};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};

/// The URI and DNS SANs of a DER certificate (none when it cannot be parsed).
pub(crate) fn sans(der: &CertificateDer<'_>) -> (Vec<String>, Vec<String>) {
    use x509_parser::extensions::GeneralName;
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return (uris, dns);
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    (uris, dns)
}

/// Whether `cert` has a SAN that one of `matchers` accepts (Envoy: any matcher, any SAN).
fn san_matches(cert: &CertificateDer<'_>, matchers: &[SanMatcher]) -> bool {
    let (uris, dns) = sans(cert);
    matchers.iter().any(|m| {
        let values = match m.san_type {
            SanType::Uri => &uris,
            SanType::Dns => &dns,
        };
        values.iter().any(|v| m.matches(v))
    })
}

fn san_mismatch() -> Error {
    Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// WebPki's client verifier, then the SAN matchers: a client whose certificate chains to
/// the roots but whose identity does not match fails the handshake, so no byte of its
/// reaches the application.
#[derive(Debug)]
pub(crate) struct SanClientVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) matchers: Vec<SanMatcher>,
}

impl ClientCertVerifier for SanClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.matchers.is_empty() || san_matches(end_entity, &self.matchers) {
            Ok(verified)
        } else {
            Err(san_mismatch())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server certificate verified against `roots`, then by the SAN matchers when there are
/// some (SPIFFE IDs), else by the DNS name the client asked for (`sni`).
#[derive(Debug)]
pub(crate) struct SanServerVerifier {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) matchers: Vec<SanMatcher>,
    pub(crate) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SanServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.matchers.is_empty() {
            verify_server_name(&cert, server_name)?;
        } else if !san_matches(end_entity, &self.matchers) {
            return Err(san_mismatch());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
