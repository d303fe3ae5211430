//! TLS for listeners and clusters: rustls configurations (ring provider) built from a
//! listener's [`DownstreamTls`] or a cluster's [`UpstreamTls`], with ALPN, client
//! certificates, and peer verification against trusted CAs and SAN matchers (`verify`).
//! Certificates and CAs come inline, from files, or from the snapshot's SDS secrets; a
//! configuration built from secrets is rebuilt by its user when they change, so new
//! handshakes use the new material while open connections keep theirs.
//!
//! A listener whose filter chains choose certificates by SNI gets a certificate resolver
//! (`sni`). Key material is read here and handed to rustls; no error message or log line carries it
//! (PEM problems in a private key are reported without the parser's detail).

mod sni;
mod verify;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use switchboard_proxy_xds::config::Secret;
use switchboard_proxy_xds::config::listener::{DataSource, DownstreamTls};
use switchboard_proxy_xds::config::tls::{TrustedCa, UpstreamTls};
use tokio_rustls::rustls;
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::ServerName;
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
    #[error("the secret {0:?} has not arrived over SDS")]
    MissingSecret(String),
    #[error("the secret {name:?} holds no {what} (it is the other kind of secret)")]
    SecretKind { name: String, what: &'static str },
    #[error("the sni {0:?} is not a valid DNS name")]
    Sni(String),
    #[error("the platform's trust store (system_root_certs) is unusable: {0}")]
    SystemRoots(String),
}

/// SDS secrets by name, as the snapshot holds them.
pub type Secrets = BTreeMap<String, Arc<Secret>>;

/// Which part of a certificate secret, or of a validation secret, a source stands for.
#[derive(Debug, Clone, Copy)]
enum Part {
    Chain,
    Key,
    Ca,
}

/// The secrets `names` currently resolve to (`None`: not arrived), to tell when a TLS
/// configuration built from them is stale.
pub fn secrets_in_use(names: &[&str], secrets: &Secrets) -> Vec<Option<Arc<Secret>>> {
    names.iter().map(|n| secrets.get(*n).cloned()).collect()
}

/// Whether two [`secrets_in_use`] results are the same secrets (by identity).
pub fn same_secrets(a: &[Option<Arc<Secret>>], b: &[Option<Arc<Secret>>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            (None, None) => true,
            _ => false,
        })
}

/// The crypto provider every listener and cluster uses, chosen explicitly so that no
/// process-wide default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration of `tls` (without SDS secrets), reading its files now.
pub async fn server_config(tls: &DownstreamTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with(tls, &Secrets::new()).await
}

/// Builds the server configuration of `tls`, reading its files now and its SDS secrets
/// from `secrets`.
pub async fn server_config_with(
    tls: &DownstreamTls,
    secrets: &Secrets,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(
        &read(&tls.certificate_chain, Part::Chain, secrets).await?,
        "certificate chain",
    )?;
    let key_pem = read(&tls.private_key, Part::Key, secrets).await?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::PrivateKey)?;
    drop(key_pem);
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_validation {
        None => builder.with_no_client_auth(),
        Some(v) => {
            let roots = roots(&v.trusted_ca, secrets).await?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let verifier = if v.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::TrustedCa(e.to_string()))?;
            if v.san_matchers.is_empty() {
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_client_cert_verifier(Arc::new(verify::SanClientVerifier {
                    inner: verifier,
                    matchers: v.san_matchers.clone(),
                }))
            }
        }
    };
    let mut config = if tls.sni_certificates.is_empty() {
        builder.with_single_cert(chain, key)?
    } else {
        let mut resolver = sni::SniResolver::new(sni::certified(&provider, chain, key)?);
        for c in &tls.sni_certificates {
            let chain = certificates(
                &read(&c.certificate_chain, Part::Chain, secrets).await?,
                "certificate chain",
            )?;
            let key_pem = read(&c.private_key, Part::Key, secrets).await?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::PrivateKey)?;
            drop(key_pem);
            resolver.add(&c.server_names, sni::certified(&provider, chain, key)?);
        }
        builder.with_cert_resolver(Arc::new(resolver))
    };
    config.alpn_protocols = tls
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(Arc::new(config))
}

/// The client configuration of a cluster's `tls`, and the server name to ask for (`sni`;
/// `None`: the endpoint's IP address, which sends no SNI).
pub async fn client_config(
    tls: &UpstreamTls,
    secrets: &Secrets,
) -> Result<(Arc<rustls::ClientConfig>, Option<ServerName<'static>>), TlsError> {
    let provider = provider();
    let verifier = Arc::new(verify::SanServerVerifier {
        roots: match &tls.validation.trusted_ca {
            TrustedCa::Source(source) => roots(source, secrets).await?,
            TrustedCa::System => system_roots()?,
        },
        matchers: tls.validation.san_matchers.clone(),
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.client_certificate {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain = certificates(
                &read(chain, Part::Chain, secrets).await?,
                "certificate chain",
            )?;
            let key_pem = read(key, Part::Key, secrets).await?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::PrivateKey)?;
            drop(key_pem);
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = tls
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    let sni = match &tls.sni {
        Some(s) => Some(ServerName::try_from(s.clone()).map_err(|_| TlsError::Sni(s.clone()))?),
        None => None,
    };
    Ok((Arc::new(config), sni))
}

/// The platform's trust store, read once (as Envoy reads `system_root_certs`): the
/// certificates of the host's CA bundle (`SSL_CERT_FILE` / `SSL_CERT_DIR` override where).
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: std::sync::OnceLock<Result<Arc<RootCertStore>, String>> =
        std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(why);
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(TlsError::SystemRoots)
}

async fn roots(source: &DataSource, secrets: &Secrets) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    let cas = certificates(&read(source, Part::Ca, secrets).await?, "trusted CA")?;
    for ca in cas {
        roots.add(ca)?;
    }
    Ok(Arc::new(roots))
}

async fn read(source: &DataSource, part: Part, secrets: &Secrets) -> Result<Vec<u8>, TlsError> {
    let what = match part {
        Part::Chain => "certificate chain",
        Part::Key => "private key",
        Part::Ca => "trusted CA",
    };
    let source = match source {
        DataSource::Sds(name) => {
            let secret = secrets
                .get(name)
                .ok_or_else(|| TlsError::MissingSecret(name.clone()))?;
            match (secret.as_ref(), part) {
                (
                    Secret::TlsCertificate {
                        certificate_chain, ..
                    },
                    Part::Chain,
                ) => certificate_chain,
                (Secret::TlsCertificate { private_key, .. }, Part::Key) => private_key,
                (Secret::ValidationContext { trusted_ca }, Part::Ca) => trusted_ca,
                _ => {
                    return Err(TlsError::SecretKind {
                        name: name.clone(),
                        what,
                    });
                }
            }
        }
        other => other,
    };
    match source {
        DataSource::Inline(bytes) => Ok(bytes.clone()),
        DataSource::File(path) => tokio::fs::read(path).await.map_err(|e| TlsError::Read {
            what,
            path: display(path),
            source: e,
        }),
        // Secrets hold inline or file data only (conversion refuses anything else).
        DataSource::Sds(name) => Err(TlsError::SecretKind {
            name: name.clone(),
            what,
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
/// the handshake, and shared by its requests (in their `RequestContext`) for RBAC and
/// `x-forwarded-client-cert`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The URI SANs of the client's leaf certificate (SPIFFE IDs), in certificate order.
    pub uri_sans: Vec<String>,
    /// Its DNS SANs.
    pub dns_sans: Vec<String>,
    /// Its subject, as RFC 4514 text.
    pub subject: String,
    /// The SHA-256 of its DER, lower-case hex (XFCC's `Hash`).
    pub hash: String,
    /// The first URI SAN of the certificate this proxy presented (XFCC's `By`).
    pub local_uri: Option<String>,
}

impl PeerIdentity {
    /// The verified identity of `conn`'s client, `None` when it presented no certificate.
    /// rustls only completes a handshake whose client certificate passed the verifier, so a
    /// present certificate is a verified one.
    pub fn of(conn: &rustls::ServerConnection, local_uri: Option<&str>) -> Option<Self> {
        let leaf = conn.peer_certificates()?.first()?;
        let (uri_sans, dns_sans, subject) = names(leaf);
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
        let hash = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Some(Self {
            uri_sans,
            dns_sans,
            subject,
            hash,
            local_uri: local_uri.map(str::to_owned),
        })
    }
}

/// The first URI SAN of the certificate a listener with `tls` presents, if any.
pub async fn local_uri(tls: &DownstreamTls, secrets: &Secrets) -> Option<String> {
    let chain = read(&tls.certificate_chain, Part::Chain, secrets)
        .await
        .ok()?;
    leaf_uri(&chain)
}

/// The first URI SAN of the leaf of a PEM chain (the proxy's own certificate), if any.
pub fn leaf_uri(chain_pem: &[u8]) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let leaf = CertificateDer::pem_slice_iter(chain_pem).next()?.ok()?;
    names(&leaf).0.into_iter().next()
}

/// The URI SANs, DNS SANs and subject of a DER certificate; empty when it cannot be parsed
/// (rustls verified it, so that does not happen, but then the peer matches no
/// `principal_name`).
fn names(der: &CertificateDer<'_>) -> (Vec<String>, Vec<String>, String) {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Default::default();
    };
    let subject = cert.subject().to_string();
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return (Vec::new(), Vec::new(), subject);
    };
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    for n in &san.value.general_names {
        match n {
            GeneralName::URI(uri) => uris.push((*uri).to_owned()),
            GeneralName::DNSName(d) => dns.push((*d).to_owned()),
            _ => {}
        }
    }
    (uris, dns, subject)
}
