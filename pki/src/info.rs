//! Reading certificates: PEM splitting and what the API shows of a CA certificate.

use crate::PkiError;
use time::OffsetDateTime;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What the API shows of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// RFC 4514 form, e.g. `CN=mesh prod CA, OU=tenant acme, O=Switchboard`.
    pub subject: String,
    /// Hex.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// The subject, serial and validity of the first certificate in `pem`.
pub fn describe(pem: &str) -> Result<CertInfo, PkiError> {
    let first = split_pem(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Corrupt("no certificate".into()))?;
    describe_der(&pem_to_der(&first)?)
}

pub(crate) fn describe_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let cert = parse(der)?;
    Ok(cert_info(&cert))
}

pub(crate) fn cert_info(cert: &X509Certificate<'_>) -> CertInfo {
    let validity = cert.validity();
    CertInfo {
        subject: cert.subject().to_string(),
        serial: hex::encode(cert.raw_serial()),
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
    }
}

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| PkiError::Corrupt(format!("certificate does not parse: {e}")))
}

pub(crate) fn is_self_signed(der: &[u8]) -> Result<bool, PkiError> {
    let c = parse(der)?;
    Ok(c.subject().as_raw() == c.issuer().as_raw())
}

/// The PEM blocks of `text`, each re-encoded on its own (certificates only).
pub(crate) fn split_pem(text: &str) -> Result<Vec<String>, PkiError> {
    let mut out = vec![];
    for block in Pem::iter_from_buffer(text.as_bytes()) {
        let block = block.map_err(|e| PkiError::Corrupt(format!("malformed PEM: {e}")))?;
        if block.label != "CERTIFICATE" {
            return Err(PkiError::Corrupt(format!(
                "a {} block where certificates were expected",
                block.label
            )));
        }
        out.push(der_to_pem(&block.contents));
    }
    Ok(out)
}

pub(crate) fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(line));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

pub(crate) fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::Corrupt(format!("malformed PEM: {e}")))?;
    Ok(block.contents)
}

/// RFC 3339, for messages.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
