//! TLS termination for listeners: a rustls server configuration (ring provider) built from a
//! listener's [`DownstreamTls`], with ALPN and optional client certificate verification.
//!
//! Key material is read here and handed to rustls; no error message or log line carries it
//! (PEM problems in a private key are reported without the parser's detail).

use std::path::Path;
use std::sync::Arc;

use switchboard_proxy_xds::config::listener::{DataSource, DownstreamTls};
use tokio_rustls::rustls;
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;

/// Why a listener's TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the {what} from {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the {what} holds no PEM certificate")]
    NoCertificate { what: &'static str },
    #[error("the {what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    /// Deliberately without detail: the parser's message could quote the key.
    #[error("the private key is not a PEM PKCS#8, PKCS#1 or SEC1 key")]
    PrivateKey,
    #[error("the trusted CA certificates: {0}")]
    TrustedCa(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every listener uses, chosen explicitly so that no process-wide
/// default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration of `tls`, reading its files now.
pub async fn server_config(tls: &DownstreamTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(
        &read(&tls.certificate_chain, "certificate chain").await?,
        "certificate chain",
    )?;
    let key_pem = read(&tls.private_key, "private key").await?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::PrivateKey)?;
    drop(key_pem);
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_validation {
        None => builder.with_no_client_auth(),
        Some(v) => {
            let mut roots = RootCertStore::empty();
            let cas = certificates(&read(&v.trusted_ca, "trusted CA").await?, "trusted CA")?;
            for ca in cas {
                roots.add(ca)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if v.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::TrustedCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = tls
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(Arc::new(config))
}

async fn read(source: &DataSource, what: &'static str) -> Result<Vec<u8>, TlsError> {
    match source {
        DataSource::Inline(bytes) => Ok(bytes.clone()),
        DataSource::File(path) => tokio::fs::read(path).await.map_err(|e| TlsError::Read {
            what,
            path: display(path),
            source: e,
        }),
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn certificates(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

/// Who is at the other end of a TLS connection: known only when the client presented a
/// certificate the listener verified (`client_validation`). Read once per connection, after
/// the handshake, and shared by its requests (as a request extension) for RBAC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The URI SANs of the client's leaf certificate (SPIFFE IDs), in certificate order.
    pub uri_sans: Vec<String>,
}

impl PeerIdentity {
    /// The verified identity of `conn`'s client, `None` when it presented no certificate.
    /// rustls only completes a handshake whose client certificate passed the verifier, so a
    /// present certificate is a verified one.
    pub fn of(conn: &rustls::ServerConnection) -> Option<Self> {
        let leaf = conn.peer_certificates()?.first()?;
        Some(Self {
            uri_sans: uri_sans(leaf),
        })
    }
}

/// The URI SANs of a DER certificate; none when it cannot be parsed (rustls verified it, so
/// that does not happen, but then the peer matches no `principal_name`).
fn uri_sans(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}
