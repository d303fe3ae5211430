//! TLS on the REST and xDS ports: one certificate chain and key from files (rustls, ring
//! provider, TLS 1.2 and 1.3), re-read when the files change.
//!
//! Every handshake asks [`ReloadingCert`] for the certificate, so a replaced certificate
//! applies to the next connection while open ones carry on with theirs. A file that does not
//! load keeps the previous certificate in service and is logged (never with key material).
//! `serve` accepts connections and runs their handshakes concurrently under a timeout.
//! The xDS port also asks for a client certificate (optional; see [`client_cert`]).

mod client_cert;
mod serve;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

pub use serve::{serve_rest, serve_xds};

/// How often the certificate files are checked for a change.
pub const POLL_INTERVAL: Duration = Duration::from_secs(3);

/// ALPN of the REST port: HTTP/2 preferred, HTTP/1.1 accepted.
pub const REST_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN of the xDS port: gRPC is HTTP/2 only.
pub const XDS_ALPN: &[&[u8]] = &[b"h2"];

/// The certificate chain and private key files of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the certificate files cannot be used. Messages name the files, never their contents.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} holds no PEM certificate (tls_cert_file takes a PEM certificate chain, leaf first)"
    )]
    NoCertificate { path: PathBuf },
    #[error("{path} is not valid PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    /// Deliberately without the parser's detail, which could quote the key.
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    Key { path: PathBuf },
    #[error("the private key in {key} cannot be used: {reason}")]
    UnusableKey { key: PathBuf, reason: String },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// The crypto provider of both ports, chosen explicitly (no process-wide default).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The files' contents: their digest (to notice a change) and the key they make, or why
/// they make none. Unreadable files are the outer error.
type Loaded = ([u8; 32], Result<CertifiedKey, CertError>);

fn load(files: &TlsFiles) -> Result<Loaded, CertError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read("tls_cert_file", &files.cert)?;
    let key_pem = read("tls_key_file", &files.key)?;
    let mut digest = Sha256::new();
    digest.update(Sha256::digest(&cert_pem));
    digest.update(Sha256::digest(&key_pem));
    Ok((digest.finalize().into(), parse(files, &cert_pem, &key_pem)))
}

fn parse(files: &TlsFiles, cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CertError::Key {
        path: files.key.clone(),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        // rustls' key errors name the problem (unsupported algorithm), not the key bytes.
        other => CertError::UnusableKey {
            key: files.key.clone(),
            reason: other.to_string(),
        },
    })
}

/// The outcome of the latest look at the files (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Changes of the files seen so far (a successful load or a failed one).
    pub changes: u64,
    /// Why the latest change did not load, if it did not (the previous certificate serves).
    pub error: Option<String>,
}

/// The certificate the ports serve: what the files held at their last good load.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    /// Digest of the file contents last looked at, loaded or not.
    seen: RwLock<[u8; 32]>,
    status: watch::Sender<ReloadStatus>,
}

impl ReloadingCert {
    /// Loads the files; an error here stops `serve` from starting.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, CertError> {
        let (digest, key) = load(&files)?;
        let key = key?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(key)),
            seen: RwLock::new(digest),
            status: watch::Sender::new(ReloadStatus::default()),
        }))
    }

    /// The certificate handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Follows the outcome of reloads (tests wait on it; the logs say the same).
    #[cfg(test)]
    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.subscribe()
    }

    /// Looks at the files once: a change loads, or is logged and leaves the certificate as
    /// it was. Unreadable files (being replaced, say) are retried at the next look.
    pub fn check(&self) {
        let (digest, key) = match load(&self.files) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::debug!(error = %e, "TLS certificate files unreadable; keeping the current certificate");
                return;
            }
        };
        {
            let mut seen = self.seen.write().unwrap_or_else(|p| p.into_inner());
            if *seen == digest {
                return;
            }
            *seen = digest;
        }
        let error = match key {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "the changed TLS certificate files do not load; still serving the previous certificate");
                Some(e.to_string())
            }
        };
        self.status.send_modify(|s| {
            s.changes += 1;
            s.error = error;
        });
    }

    /// Checks the files every `interval`, forever (abort the task to stop).
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let this = self.clone();
            // File reads block; keep them off the runtime's workers.
            if tokio::task::spawn_blocking(move || this.check())
                .await
                .is_err()
            {
                tracing::error!("checking the TLS certificate files panicked");
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Whether a port asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// The REST port: API keys only.
    None,
    /// The xDS port: an optional certificate, validated per mesh when a stream is admitted.
    Deferred,
}

/// A server configuration presenting `cert` with the given ALPN protocols.
pub fn server_config(
    cert: Arc<ReloadingCert>,
    alpn: &[&[u8]],
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Deferred => builder
            .with_client_cert_verifier(Arc::new(client_cert::DeferredClientCert::new(provider))),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Whether a port on `addr` without TLS deserves a warning: credentials would cross a
/// network in plaintext. Loopback stays quiet (the default, for development).
pub fn plaintext_is_exposed(addr: std::net::SocketAddr, tls: bool) -> bool {
    !tls && !addr.ip().is_loopback()
}

#[cfg(test)]
mod tests;
