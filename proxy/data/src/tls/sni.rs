//! Choosing a listener's certificate by the client's SNI (filter chains with
//! `server_names`, merged by the configuration into [`SniCertificate`]s): an exact name
//! first, then the `*.` wildcard of the longest suffix (Envoy's order), else the default
//! chain's certificate. Chosen per handshake, so a connection keeps what it got.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use super::TlsError;

/// Certificates by SNI, with a default.
#[derive(Debug)]
pub(super) struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    pub(super) fn new(default: Arc<CertifiedKey>) -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        }
    }

    /// Serves `key` for `server_names` (lowercase; the configuration refuses a name two
    /// chains share).
    pub(super) fn add(&mut self, server_names: &[String], key: Arc<CertifiedKey>) {
        for name in server_names {
            match name.strip_prefix("*.") {
                Some(suffix) => self.wildcard.insert(suffix.to_owned(), Arc::clone(&key)),
                None => self.exact.insert(name.clone(), Arc::clone(&key)),
            };
        }
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(sni) = sni else {
            return Arc::clone(&self.default);
        };
        let sni = sni.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&sni) {
            return Arc::clone(k);
        }
        let mut rest = sni.as_str();
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(k) = self.wildcard.get(suffix) {
                return Arc::clone(k);
            }
            rest = suffix;
        }
        Arc::clone(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// A certificate chain and its key, ready to serve; refused when the key is not the chain's.
pub(super) fn certified(
    provider: &CryptoProvider,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| TlsError::PrivateKey)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(TlsError::Rustls)?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<CertifiedKey> {
        let k = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&k)
            .unwrap();
        let provider = tokio_rustls::rustls::crypto::ring::default_provider();
        let der = PrivateKeyDer::try_from(k.serialize_der()).unwrap();
        certified(&provider, vec![cert.der().clone()], der).unwrap()
    }

    #[test]
    fn exact_then_longest_wildcard_then_default() {
        let (default, shop, any, deep) = (key("d"), key("shop"), key("any"), key("deep"));
        let mut r = SniResolver::new(Arc::clone(&default));
        r.add(&["shop.example.com".into()], Arc::clone(&shop));
        r.add(&["*.example.com".into()], Arc::clone(&any));
        r.add(&["*.eu.example.com".into()], Arc::clone(&deep));
        let is = |sni: Option<&str>, want: &Arc<CertifiedKey>| {
            assert!(Arc::ptr_eq(&r.pick(sni), want), "{sni:?}");
        };
        is(Some("shop.example.com"), &shop);
        is(Some("SHOP.Example.com"), &shop);
        is(Some("blog.example.com"), &any);
        is(Some("a.b.example.com"), &any);
        is(Some("x.eu.example.com"), &deep);
        is(Some("example.com"), &default);
        is(Some("other.org"), &default);
        is(None, &default);
    }
}
