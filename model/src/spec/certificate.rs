use crate::ValidationErrors;
use crate::validate::Errors;
use serde::{Deserialize, Serialize};

/// A certificate and key that gateways serve (TLS termination), chosen by SNI from its DNS
/// names. Clients write `certificateChain` and `privateKey` (PEM); the API checks them,
/// seals the key with the control plane's key-encryption key and fills in the read-only
/// facts (`subject`, `dnsNames`, validity, `fingerprint`) before it is stored. The key is
/// never shown again. `Debug` shows no key material.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateSpec {
    /// PEM: the server's certificate first, then its intermediates.
    pub certificate_chain: String,
    /// Written as PEM (PKCS#8); stored sealed; never shown.
    #[schema(value_type = String, write_only)]
    pub private_key: CertificateKey,
    /// Read-only: the subject of the server's certificate.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(read_only)]
    pub subject: String,
    /// Read-only: its DNS names, which gateways match SNI against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(read_only)]
    pub dns_names: Vec<String>,
    /// Read-only, RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(read_only)]
    pub not_before: String,
    /// Read-only, RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(read_only)]
    pub not_after: String,
    /// Read-only: SHA-256 of the server certificate (DER), hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(read_only)]
    pub fingerprint: String,
}

/// The private key of a [`CertificateSpec`]: PEM as a client writes it, sealed as stored.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CertificateKey {
    Pem(String),
    Sealed(SealedKey),
}

/// A key sealed with the key-encryption key (`switchboard_pki::seal_certificate_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SealedKey {
    /// The id of the key-encryption key it was sealed with.
    pub kek_id: String,
    /// Base64 of the sealed bytes.
    pub sealed: String,
}

impl std::fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertificateKey::Pem(_) => f.write_str("Pem(<redacted>)"),
            CertificateKey::Sealed(s) => f.debug_tuple("Sealed").field(&s.kek_id).finish(),
        }
    }
}

impl std::fmt::Debug for CertificateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateSpec")
            .field("private_key", &self.private_key)
            .field("subject", &self.subject)
            .field("dns_names", &self.dns_names)
            .field("not_after", &self.not_after)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl CertificateSpec {
    /// What can be checked without a clock or a PEM parser; the API checks the rest
    /// (`switchboard_pki::validate_certificate`).
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = Errors::default();
        if self.certificate_chain.trim().is_empty() {
            e.push(
                "spec.certificateChain",
                "missing: the PEM certificate chain",
            );
        }
        if let CertificateKey::Pem(k) = &self.private_key
            && k.trim().is_empty()
        {
            e.push("spec.privateKey", "missing: the PEM private key");
        }
        e.into_result()
    }

    /// The sealed key, once the API has sealed it.
    pub fn sealed_key(&self) -> Option<&SealedKey> {
        match &self.private_key {
            CertificateKey::Sealed(s) => Some(s),
            CertificateKey::Pem(_) => None,
        }
    }
}
