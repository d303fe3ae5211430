//! Backup and restore of a tenant: `POST /v1/tenants/{tenant}/export` returns its meshes and
//! every resource in them as documents (`{apiVersion, kind, mesh, name, spec}`, each spec as
//! a GET shows it), and `POST /v1/tenants/{tenant}/import` applies such documents in one
//! store transaction ([`Store::write_many`](switchboard_store::Store::write_many)): all of
//! them at one revision, or nothing, with the error naming `documents[i]` and the field.
//!
//! Secrets (the meshes' CA keys, the certificates' private keys) are left out unless the
//! caller asks (`includeSecrets` with a passphrase): then each goes in its document's
//! `secret`, encrypted with a key derived from the passphrase (`secrets`), and an import
//! with the same passphrase seals them again with this server's KEK. Without its CA, an
//! imported mesh gets a new one, as creating a mesh does. Export answers JSON; the CLI
//! (`switchboard export`) writes it as YAML documents, and `switchboard apply` and `diff`
//! send their files here (a dry run's items carry the specs as they would be stored).

mod import;
mod secrets;

/// What `plan` shares with the import: a document's checks and write, and its errors.
pub(crate) use import::{MAX_IMPORT_BYTES, at_document, prepare, store_error};

use crate::auth::Caller;
use crate::openapi::{Route, dry_run_param, op, tenant_param};
use crate::{ApiError, AppState, MAX_BODY_BYTES, body};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use switchboard_model::spec::{CertificateKey, CertificateSpec};
use switchboard_model::{Kind, Labels};
use switchboard_store::{CaState, StoredCa, StoredResource};
use utoipa::openapi::path::HttpMethod;

/// What every document of an export says it is.
pub const API_VERSION: &str = "switchboard/v1";

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(
            HttpMethod::Post,
            "/v1/tenants/{tenant}/export",
            op(
                "Export the tenant: its meshes and every resource in them as documents; \
                 private keys only with includeSecrets, encrypted with the passphrase"
                    .into(),
                &[tenant_param()],
                Some("ExportRequest"),
                ("200", Some("ExportBundle")),
            ),
            export,
        )
        .schema::<ExportRequest>()
        .schema::<ExportBundle>(),
        Route::new(
            HttpMethod::Post,
            "/v1/tenants/{tenant}/import",
            op(
                "Import documents (as an export writes them) in one transaction: every \
                 resource is created or replaced at one revision, or nothing is written \
                 (the error names documents[i] and the field)"
                    .into(),
                &[tenant_param(), dry_run_param()],
                Some("ImportRequest"),
                ("200", Some("ImportResult")),
            ),
            import::import,
        )
        .schema::<ImportRequest>()
        .schema::<ImportResult>(),
    ]
}

/// What to export. An empty body exports without secrets. No `Debug`: it holds the
/// passphrase.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportRequest {
    /// Include the meshes' CA keys and the certificates' private keys, encrypted with
    /// `passphrase`.
    #[serde(default)]
    include_secrets: bool,
    /// At least 12 characters; required with `includeSecrets`. Keep it: the import needs it.
    #[serde(default)]
    passphrase: Option<String>,
}

/// A tenant's configuration as documents.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportBundle {
    api_version: &'static str,
    tenant: String,
    /// The tenant revision the export is of (one consistent read).
    revision: i64,
    export_time: String,
    /// `omitted` or `encrypted`.
    secrets: &'static str,
    /// What an import of these documents will and will not restore.
    notes: Vec<String>,
    documents: Vec<Document>,
}

/// One resource: what the REST API takes for it, with its kind and place.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Document {
    /// `switchboard/v1` when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// mesh, service, endpoint, route, gateway, authorization-policy or certificate.
    pub kind: String,
    /// The mesh the resource is in (none for a mesh).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mesh: String,
    pub name: String,
    /// The resource's labels (a write replaces them).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The kind's spec, as a GET shows it (a certificate's without its key).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// Private keys, encrypted with the export's passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<DocumentSecret>,
}

/// The secret parts of a mesh (its CA) or a certificate (its key). No `Debug`.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentSecret {
    /// A mesh's active CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSecret>,
    /// A certificate's PKCS#8 PEM key, encrypted (`sbx1:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

/// A mesh CA with its key encrypted. No `Debug`.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaSecret {
    pub id: String,
    /// `generated` or `uploaded`.
    pub origin: String,
    /// PEM, the CA's own certificate first.
    pub certificate_chain: String,
    /// Its PKCS#8 key (DER), encrypted (`sbx1:…`).
    pub private_key: String,
}

/// Documents to import. No `Debug`: it holds the passphrase.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportRequest {
    /// The export's passphrase, when documents carry secrets.
    #[serde(default)]
    passphrase: Option<String>,
    #[schema(value_type = Vec<Document>)]
    documents: Vec<serde_json::Value>,
    /// Also delete, in every mesh the documents name (a mesh document, or the `mesh` of
    /// another), each resource labelled `switchboard.dev/managed-by: apply` that no document
    /// names: what `switchboard apply --prune` sends. In the same transaction; listed after
    /// the documents' items as `deleted`.
    #[serde(default)]
    prune: bool,
}

/// What an import did (or, with `dryRun`, would do).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportResult {
    dry_run: bool,
    /// The revision it committed at; absent when nothing changed or for a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    /// One per document, in the order given, then one per resource pruned.
    items: Vec<ImportItem>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportItem {
    kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    mesh: String,
    name: String,
    /// created, updated, unchanged; deleted for a resource pruned.
    effect: &'static str,
    /// For a mesh created: whether its CA was `restored` from the document or `generated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<&'static str>,
    /// For a dry run: the spec as it would be stored, as a GET would show it (defaults
    /// filled in, a certificate without its key), so a client can show what would change
    /// (`switchboard diff`) without knowing how the server normalizes specs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    spec: Option<serde_json::Value>,
    /// For a dry run: the labels it would have.
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<Labels>,
}

/// A kind as documents name it (`authorization-policy`).
pub(crate) fn kind_name(kind: Kind) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(s)) => s,
        _ => kind.plural().to_owned(),
    }
}

/// Typed from a JSON value, a serde error naming the field it is at under `prefix`.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
    prefix: &str,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = match (prefix.is_empty(), path == ".") {
            (true, true) => "body".to_owned(),
            (true, false) => path,
            (false, true) => prefix.to_owned(),
            (false, false) => format!("{prefix}.{path}"),
        };
        ApiError::field(&field, e.inner().to_string())
    })
}

pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what} failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        format!("{what} failed; see the server log"),
    )
}

/// The passphrase, checked; None without one.
pub(crate) fn passphrase(
    p: Option<String>,
) -> Result<Option<zeroize::Zeroizing<String>>, ApiError> {
    match p.map(zeroize::Zeroizing::new) {
        Some(p) if p.chars().count() < secrets::MIN_PASSPHRASE => Err(ApiError::field(
            "passphrase",
            format!("too short: at least {} characters", secrets::MIN_PASSPHRASE),
        )),
        p => Ok(p),
    }
}

async fn export(
    State(s): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let req: ExportRequest = match body::parse_up_to(&headers, body, MAX_BODY_BYTES).await? {
        None => ExportRequest::default(),
        Some(v) => typed(v, "")?,
    };
    let sealer = match (req.include_secrets, passphrase(req.passphrase)?) {
        (true, Some(p)) => Some(
            secrets::Sealer::new(p)
                .await
                .map_err(|e| internal("encrypting the export", e))?,
        ),
        (true, None) => {
            return Err(ApiError::field(
                "passphrase",
                "missing: includeSecrets encrypts the keys with a passphrase you give",
            ));
        }
        (false, Some(_)) => {
            return Err(ApiError::field(
                "passphrase",
                "given without includeSecrets: set includeSecrets to export the keys",
            ));
        }
        (false, None) => None,
    };
    let dump = s.store.tenant_dump(&tenant).await?;
    let active: HashMap<&str, &StoredCa> = dump
        .cas
        .iter()
        .filter(|c| c.state == CaState::Active)
        .map(|c| (c.mesh.as_str(), c))
        .collect();
    let mut documents = Vec::with_capacity(dump.resources.len());
    for r in &dump.resources {
        let secret = match &sealer {
            Some(sealer) => secret_of(&s, r, &active, sealer)?,
            None => None,
        };
        documents.push(Document {
            api_version: Some(API_VERSION.to_owned()),
            kind: kind_name(r.key.kind),
            mesh: r.key.mesh.clone(),
            name: r.key.name.clone(),
            labels: r.labels.clone(),
            spec: match r.key.kind {
                Kind::Certificate => crate::certificates::view(r.spec.clone()),
                _ => r.spec.clone(),
            },
            secret,
        });
    }
    let mut notes = vec![];
    if sealer.is_some() {
        notes.push(
            "secrets encrypted with your passphrase: the meshes' active CAs and the \
             certificates' private keys; an import with the same passphrase restores them"
                .to_owned(),
        );
        let mut rotating: Vec<&str> = dump
            .cas
            .iter()
            .filter(|c| c.state == CaState::Retiring)
            .map(|c| c.mesh.as_str())
            .collect();
        rotating.dedup();
        for mesh in rotating {
            notes.push(format!(
                "mesh {mesh:?} is in a CA rotation: only its active CA is exported, not the \
                 retiring one"
            ));
        }
    } else {
        notes.push(
            "secrets omitted: no mesh CA and no certificate private key is in this export. \
             An import gives each new mesh a new CA; a certificate imports only where the \
             target already holds that very certificate (else export with includeSecrets)"
                .to_owned(),
        );
    }
    tracing::info!(%tenant, documents = documents.len(), revision = dump.revision, secrets = sealer.is_some(), "exported");
    Ok(axum::Json(ExportBundle {
        api_version: API_VERSION,
        tenant,
        revision: dump.revision,
        export_time: crate::rfc3339(now_ms()),
        secrets: if sealer.is_some() {
            "encrypted"
        } else {
            "omitted"
        },
        notes,
        documents,
    })
    .into_response())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The encrypted secret of a stored mesh (its active CA) or certificate (its key).
fn secret_of(
    s: &AppState,
    r: &StoredResource,
    active: &HashMap<&str, &StoredCa>,
    sealer: &secrets::Sealer,
) -> Result<Option<DocumentSecret>, ApiError> {
    match r.key.kind {
        Kind::Mesh => {
            let Some(ca) = active.get(r.key.name.as_str()) else {
                return Ok(None);
            };
            if ca.ca.kek_id != s.kek.id() {
                return Err(internal(
                    "opening a CA key",
                    format!("CA {} is sealed with another key-encryption key", ca.ca.id),
                ));
            }
            let aad = switchboard_pki::ca_key_aad(&ca.tenant, &ca.mesh, &ca.ca.id);
            let der = s
                .kek
                .open(&ca.ca.sealed_key, &aad)
                .map_err(|e| internal("opening a CA key", e))?;
            let private_key = sealer
                .seal(&der, &secrets::ca_aad(&ca.ca.id))
                .map_err(|e| internal("encrypting a CA key", e))?;
            Ok(Some(DocumentSecret {
                ca: Some(CaSecret {
                    id: ca.ca.id.clone(),
                    origin: ca.ca.origin.as_str().to_owned(),
                    certificate_chain: ca.ca.chain_pem.clone(),
                    private_key,
                }),
                private_key: None,
            }))
        }
        Kind::Certificate => {
            let spec: CertificateSpec = serde_json::from_value(r.spec.clone())
                .map_err(|e| internal("reading a stored certificate", e))?;
            let CertificateKey::Sealed(sealed) = &spec.private_key else {
                return Err(internal(
                    "reading a stored certificate",
                    "its key is not sealed",
                ));
            };
            let pem = switchboard_pki::open_certificate_key(
                &s.kek,
                &r.key.tenant,
                &r.key.mesh,
                &r.key.name,
                &sealed.kek_id,
                &sealed.sealed,
            )
            .map_err(|e| internal("opening a certificate key", e))?;
            let private_key = sealer
                .seal(pem.as_bytes(), &secrets::certificate_aad(&spec.fingerprint))
                .map_err(|e| internal("encrypting a certificate key", e))?;
            Ok(Some(DocumentSecret {
                ca: None,
                private_key: Some(private_key),
            }))
        }
        _ => Ok(None),
    }
}
