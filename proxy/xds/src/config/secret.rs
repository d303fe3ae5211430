//! Secret (SDS): a certificate chain and its key (`tls_certificate`, Envoy's and Istio's
//! `default`), or trusted CA certificates (`validation_context`, `ROOTCA`). Listeners and
//! clusters name them ([`super::tls::DataSource::Sds`]); the data path builds TLS
//! configurations from the latest ones. `Debug` never shows the key.

use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret as PbSecret, secret,
};

use super::tls::{DataSource, required_source};
use super::{ConfigError, Path, check_fields};

#[derive(Clone, PartialEq)]
pub enum Secret {
    /// A certificate chain (leaf first) and its private key, PEM.
    TlsCertificate {
        certificate_chain: DataSource,
        private_key: DataSource,
    },
    /// Trusted CA certificates, PEM.
    ValidationContext { trusted_ca: DataSource },
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TlsCertificate {
                certificate_chain, ..
            } => f
                .debug_struct("TlsCertificate")
                .field("certificate_chain", certificate_chain)
                .field("private_key", &"<redacted>")
                .finish(),
            Self::ValidationContext { trusted_ca } => f
                .debug_struct("ValidationContext")
                .field("trusted_ca", trusted_ca)
                .finish(),
        }
    }
}

impl TryFrom<PbSecret> for Secret {
    type Error = ConfigError;

    fn try_from(s: PbSecret) -> Result<Self, ConfigError> {
        let path = Path::root("secret", &s.name);
        check_fields(
            &s,
            &["name", "tls_certificate", "validation_context"],
            &path,
        )?;
        match s.r#type {
            Some(secret::Type::TlsCertificate(c)) => {
                let p = path.field("tls_certificate");
                check_fields(&c, &["certificate_chain", "private_key"], &p)?;
                Ok(Self::TlsCertificate {
                    certificate_chain: required_source(
                        c.certificate_chain,
                        &p.field("certificate_chain"),
                    )?,
                    private_key: required_source(c.private_key, &p.field("private_key"))?,
                })
            }
            Some(secret::Type::ValidationContext(v)) => {
                let p = path.field("validation_context");
                check_fields(&v, &["trusted_ca"], &p)?;
                Ok(Self::ValidationContext {
                    trusted_ca: required_source(v.trusted_ca, &p.field("trusted_ca"))?,
                })
            }
            _ => Err(path.err("a tls_certificate or a validation_context is required")),
        }
    }
}

/// The secret as the dump shows it: its private key replaced, so `/config_dump` shows which
/// certificate is in use but never the key.
pub fn redacted(mut s: PbSecret) -> PbSecret {
    use switchboard_xds_proto::pb::envoy::config::core::v3::{
        DataSource as PbDataSource, data_source,
    };
    if let Some(secret::Type::TlsCertificate(c)) = &mut s.r#type
        && c.private_key.is_some()
    {
        c.private_key = Some(PbDataSource {
            specifier: Some(data_source::Specifier::InlineString(
                "[redacted]".to_owned(),
            )),
            ..Default::default()
        });
    }
    s
}
