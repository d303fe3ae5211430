//! A mesh's certificate authority: `GET …/meshes/{mesh}/ca` shows it (never a key), `PUT`
//! uploads an intermediate CA, and `…/ca/rotation` rotates to a new CA with an overlap during
//! which both roots are trusted.
//!
//! Keys are generated or validated here, sealed with the KEK in [`AppState`], and only then
//! handed to the store. A mesh created before CAs existed gets its CA the first time one of
//! these operations needs it ([`ensure_ca`]; idempotent across replicas).

use crate::auth::Caller;
use crate::openapi::{Route, op, param, tenant_param};
use crate::{ApiError, AppState, body, rfc3339};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use switchboard_model::{Kind, Spec};
use switchboard_pki::{MeshCa, SealedCa, UploadError, validate_upload};
use switchboard_store::{CaState, ResourceKey, StoredCa};
use time::OffsetDateTime;
use utoipa::openapi::path::{HttpMethod, ParameterIn};
use zeroize::Zeroizing;

/// The longest rotation overlap accepted.
const MAX_OVERLAP: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

type Tm = Path<(String, String)>;

pub(crate) fn routes() -> Vec<Route> {
    let base = "/v1/tenants/{tenant}/meshes/{mesh}/ca";
    let tm = [
        tenant_param(),
        param("mesh", ParameterIn::Path, "mesh name"),
    ];
    vec![
        Route::new(
            HttpMethod::Get,
            base,
            op(
                "The mesh's CA: the active CA, the trusted roots and any rotation (never a key)"
                    .into(),
                &tm,
                None,
                ("200", Some("CaView")),
            ),
            get,
        )
        .schema::<CaView>(),
        Route::new(
            HttpMethod::Put,
            base,
            op(
                "Upload an intermediate CA to replace the mesh's CA (409 during a rotation; \
                 422 naming certificateChain or privateKey when they are unusable)"
                    .into(),
                &tm,
                Some("CaUpload"),
                ("200", Some("CaView")),
            ),
            upload,
        )
        .schema::<CaUpload>()
        .schema::<CaView>(),
        Route::new(
            HttpMethod::Post,
            format!("{base}/rotation"),
            op(
                "Start a rotation: a new CA (generated, or uploaded) signs from now on; the old \
                 root stays trusted until the rotation completes"
                    .into(),
                &tm,
                Some("RotationRequest"),
                ("200", Some("CaView")),
            ),
            start_rotation,
        )
        .schema::<RotationRequest>()
        .schema::<CaView>(),
        Route::new(
            HttpMethod::Post,
            format!("{base}/rotation/complete"),
            op(
                "Complete the rotation: stop trusting the old root (409 before the overlap ends \
                 unless ?force=true)"
                    .into(),
                &[
                    tm[0].clone(),
                    tm[1].clone(),
                    param(
                        "force",
                        ParameterIn::Query,
                        "true to complete before the overlap ends",
                    ),
                ],
                None,
                ("200", Some("CaView")),
            ),
            complete_rotation,
        )
        .schema::<CaView>(),
        Route::new(
            HttpMethod::Delete,
            format!("{base}/rotation"),
            op(
                "Abort the rotation: back to the old CA alone".into(),
                &tm,
                None,
                ("200", Some("CaView")),
            ),
            abort_rotation,
        )
        .schema::<CaView>(),
    ]
}

/// An intermediate CA to upload (PEM). No `Debug`: it holds a private key.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaUpload {
    /// The CA's certificate first, then its issuers (at most 5); the last is what workloads
    /// trust.
    #[schema(required = true)]
    certificate_chain: Option<String>,
    /// Its unencrypted PKCS#8 private key (ECDSA P-256/P-384 or RSA ≥ 2048 bits).
    #[schema(required = true)]
    private_key: Option<String>,
}

/// A rotation: how long both roots stay trusted, and optionally the new CA (an upload);
/// without one a CA is generated. No `Debug`: it may hold a private key.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotationRequest {
    /// e.g. `1h`; default the mesh's certificate lifetime, so that every certificate of the
    /// old CA has been renewed before its root goes.
    overlap: Option<String>,
    certificate_chain: Option<String>,
    private_key: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaView {
    active: CaInfoView,
    trust_bundle: TrustBundleView,
    /// Absent when no rotation is in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation: Option<RotationView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaInfoView {
    id: String,
    /// `generated` or `uploaded`.
    origin: String,
    subject: String,
    serial: String,
    not_before: String,
    not_after: String,
    /// The root workloads trust for this CA (PEM).
    root_pem: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustBundleView {
    /// The CA that signs new workload certificates.
    signer_id: String,
    /// Every root trusted now (PEM): two during a rotation.
    roots_pem: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationView {
    /// `overlap` until `overlapUntil`, then `ready-to-complete`.
    phase: String,
    new_ca_id: String,
    /// The CA being retired, still trusted.
    previous: CaInfoView,
    overlap_until: String,
    next_step: String,
}

fn info_view(ca: &StoredCa) -> Result<CaInfoView, ApiError> {
    let info = switchboard_pki::describe(&ca.ca.chain_pem).map_err(|e| {
        tracing::error!(error = %e, ca = %ca.ca.id, "stored CA certificate does not parse");
        ApiError::from(switchboard_store::StoreError::Corrupt(e.to_string()))
    })?;
    let t = |t: OffsetDateTime| rfc3339((t.unix_timestamp_nanos() / 1_000_000) as i64);
    Ok(CaInfoView {
        id: ca.ca.id.clone(),
        origin: ca.ca.origin.as_str().to_owned(),
        subject: info.subject,
        serial: info.serial,
        not_before: t(info.not_before),
        not_after: t(info.not_after),
        root_pem: ca.ca.root_pem.clone(),
    })
}

fn view(tenant: &str, mesh: &str, cas: &[StoredCa]) -> Result<CaView, ApiError> {
    let active = cas
        .iter()
        .find(|c| c.state == CaState::Active)
        .ok_or_else(|| {
            ApiError::from(switchboard_store::StoreError::Corrupt(format!(
                "mesh {mesh:?} has no active CA"
            )))
        })?;
    let rotation = match cas.iter().find(|c| c.state == CaState::Retiring) {
        None => None,
        Some(old) => {
            let until = old.overlap_until.unwrap_or(0);
            let path = format!("/v1/tenants/{tenant}/meshes/{mesh}/ca/rotation");
            let over = now_ms() >= until;
            Some(RotationView {
                phase: if over { "ready-to-complete" } else { "overlap" }.into(),
                new_ca_id: active.ca.id.clone(),
                previous: info_view(old)?,
                overlap_until: rfc3339(until),
                next_step: if over {
                    format!(
                        "POST {path}/complete to stop trusting the previous root, or DELETE \
                         {path} to go back to the previous CA"
                    )
                } else {
                    format!(
                        "wait until {} while workloads get certificates of the new CA, then \
                         POST {path}/complete (or add ?force=true now); DELETE {path} aborts",
                        rfc3339(until)
                    )
                },
            })
        }
    };
    let bundle_roots = cas.iter().map(|c| c.ca.root_pem.clone()).collect();
    Ok(CaView {
        active: info_view(active)?,
        trust_bundle: TrustBundleView {
            signer_id: active.ca.id.clone(),
            roots_pem: bundle_roots,
        },
        rotation,
    })
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A new generated CA for the mesh, sealed with the configured KEK.
pub(crate) fn generate_sealed(
    s: &AppState,
    tenant: &str,
    mesh: &str,
) -> Result<SealedCa, ApiError> {
    MeshCa::generate(tenant, mesh, OffsetDateTime::now_utc())
        .and_then(|ca| ca.seal(tenant, mesh, &s.kek))
        .map_err(internal)
}

fn internal(e: switchboard_pki::PkiError) -> ApiError {
    tracing::error!(error = %e, "CA operation failed");
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        "the CA operation failed; see the server log",
    )
}

/// The mesh's CAs, generating its first CA if it has none (a mesh older than CAs). 404 when
/// the mesh does not exist.
pub(crate) async fn ensure_ca(
    s: &AppState,
    tenant: &str,
    mesh: &str,
) -> Result<Vec<StoredCa>, ApiError> {
    let cas = s.store.list_cas(tenant, mesh).await?;
    if !cas.is_empty() {
        return Ok(cas);
    }
    s.store.get(&ResourceKey::mesh(tenant, mesh)).await?;
    let ca = generate_sealed(s, tenant, mesh)?;
    s.store.create_ca_if_missing(tenant, mesh, &ca).await?;
    Ok(s.store.list_cas(tenant, mesh).await?)
}

async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path((t, m)): Tm,
) -> Result<Response, ApiError> {
    caller.check_tenant(&t)?;
    let cas = ensure_ca(&s, &t, &m).await?;
    Ok(axum::Json(view(&t, &m, &cas)?).into_response())
}

/// The body as `T`, errors naming the field (serde's messages quote no values of strings).
async fn request<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    b: Body,
) -> Result<T, ApiError> {
    let v = body::parse(headers, b).await?;
    serde_path_to_error::deserialize(v).map_err(|e| {
        let p = e.path().to_string();
        ApiError::field(if p == "." { "body" } else { &p }, e.inner().to_string())
    })
}

/// Validates an uploaded chain and key and seals the key: 422 naming the field otherwise.
fn sealed_upload(
    s: &AppState,
    tenant: &str,
    mesh: &str,
    chain: Option<String>,
    key: Option<String>,
) -> Result<SealedCa, ApiError> {
    let chain = chain.ok_or_else(|| ApiError::field(switchboard_pki::CHAIN_FIELD, "missing"))?;
    let key =
        Zeroizing::new(key.ok_or_else(|| ApiError::field(switchboard_pki::KEY_FIELD, "missing"))?);
    let ca = validate_upload(&chain, &key, OffsetDateTime::now_utc())
        .map_err(|e: UploadError| ApiError::field(e.field(), e.to_string()))?;
    ca.seal(tenant, mesh, &s.kek).map_err(internal)
}

async fn upload(
    State(s): State<AppState>,
    caller: Caller,
    Path((t, m)): Tm,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&t)?;
    s.store.get(&ResourceKey::mesh(&t, &m)).await?;
    let req: CaUpload = request(&headers, b).await?;
    let ca = sealed_upload(&s, &t, &m, req.certificate_chain, req.private_key)?;
    s.store.replace_ca(&t, &m, &ca).await?;
    tracing::info!(tenant = %t, mesh = %m, ca = %ca.id, "mesh CA replaced by an uploaded CA");
    let cas = s.store.list_cas(&t, &m).await?;
    Ok(axum::Json(view(&t, &m, &cas)?).into_response())
}

async fn start_rotation(
    State(s): State<AppState>,
    caller: Caller,
    Path((t, m)): Tm,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&t)?;
    let mesh = s.store.get(&ResourceKey::mesh(&t, &m)).await?;
    let has_body = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .is_none_or(|v| v != "0");
    let req: RotationRequest = if has_body {
        request(&headers, b).await?
    } else {
        RotationRequest::default()
    };
    let overlap = match &req.overlap {
        Some(v) => {
            let d = switchboard_model::duration::parse(v)
                .map_err(|e| ApiError::field("overlap", e))?
                .as_std();
            if d > MAX_OVERLAP {
                return Err(ApiError::field("overlap", "must be at most 365d"));
            }
            d
        }
        None => match Spec::parse(Kind::Mesh, mesh.spec.clone()) {
            Ok(Spec::Mesh(spec)) => spec.mtls.certificate_lifetime.as_std(),
            _ => switchboard_model::spec::DEFAULT_CERTIFICATE_LIFETIME.as_std(),
        },
    };
    let ca = match (req.certificate_chain, req.private_key) {
        (None, None) => generate_sealed(&s, &t, &m)?,
        (chain, key) => sealed_upload(&s, &t, &m, chain, key)?,
    };
    ensure_ca(&s, &t, &m).await?;
    let until = now_ms().saturating_add(overlap.as_millis().min(i64::MAX as u128) as i64);
    s.store.start_ca_rotation(&t, &m, &ca, until).await?;
    tracing::info!(tenant = %t, mesh = %m, ca = %ca.id, "mesh CA rotation started");
    let cas = s.store.list_cas(&t, &m).await?;
    Ok(axum::Json(view(&t, &m, &cas)?).into_response())
}

async fn complete_rotation(
    State(s): State<AppState>,
    caller: Caller,
    Path((t, m)): Tm,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&t)?;
    let force = match q.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(v) => {
            return Err(ApiError::bad_request(
                "force",
                format!("{v:?} is neither true nor false"),
            ));
        }
    };
    let old = s.store.complete_ca_rotation(&t, &m, force).await?;
    tracing::info!(tenant = %t, mesh = %m, ca = %old.ca.id, force, "mesh CA rotation completed");
    let cas = s.store.list_cas(&t, &m).await?;
    Ok(axum::Json(view(&t, &m, &cas)?).into_response())
}

async fn abort_rotation(
    State(s): State<AppState>,
    caller: Caller,
    Path((t, m)): Tm,
) -> Result<Response, ApiError> {
    caller.check_tenant(&t)?;
    let active = s.store.abort_ca_rotation(&t, &m).await?;
    tracing::info!(tenant = %t, mesh = %m, ca = %active.ca.id, "mesh CA rotation aborted");
    let cas = s.store.list_cas(&t, &m).await?;
    Ok(axum::Json(view(&t, &m, &cas)?).into_response())
}
