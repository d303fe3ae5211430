//! The `certificates` kind: gateway certificates that users upload. A write is checked with
//! `switchboard_pki::validate_certificate` (422 naming `spec.certificateChain` or
//! `spec.privateKey`), its key sealed with the KEK in [`AppState`] (bound to tenant, mesh and
//! name), and the facts the API shows filled in; only then does the store see it. Reads
//! never show the key, not even sealed.

use switchboard_model::Spec;
use switchboard_model::spec::{CertificateKey, CertificateSpec, SealedKey};
use switchboard_pki::{UploadError, seal_certificate_key, validate_certificate};
use time::OffsetDateTime;

use crate::{ApiError, AppState};

/// The certificate as it is stored: validated, key sealed, facts filled in.
pub(crate) fn seal(
    state: &AppState,
    tenant: &str,
    mesh: &str,
    name: &str,
    written: CertificateSpec,
) -> Result<Spec, ApiError> {
    let CertificateKey::Pem(key_pem) = &written.private_key else {
        return Err(ApiError::field(
            "spec.privateKey",
            "expected the PEM private key (PKCS#8) as a string",
        ));
    };
    let checked = validate_certificate(
        &written.certificate_chain,
        key_pem,
        OffsetDateTime::now_utc(),
    )
    .map_err(|e: UploadError| ApiError::field(&format!("spec.{}", e.field()), e.to_string()))?;
    let (kek_id, sealed) = seal_certificate_key(&state.kek, tenant, mesh, name, &checked.key_pem)
        .map_err(|e| {
        tracing::error!(error = %e, "sealing a certificate key failed");
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the key could not be sealed; see the server log",
        )
    })?;
    Ok(Spec::Certificate(Box::new(CertificateSpec {
        certificate_chain: checked.chain_pem,
        private_key: CertificateKey::Sealed(SealedKey { kek_id, sealed }),
        subject: checked.subject,
        dns_names: checked.dns_names,
        not_before: seconds(checked.not_before),
        not_after: seconds(checked.not_after),
        fingerprint: checked.fingerprint,
    })))
}

/// A stored certificate's spec as the API shows it: everything but the key.
pub(crate) fn view(mut spec: serde_json::Value) -> serde_json::Value {
    if let Some(o) = spec.as_object_mut() {
        o.remove("privateKey");
    }
    spec
}

/// RFC 3339 in whole seconds, UTC (certificate validity has no finer grain).
fn seconds(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}
