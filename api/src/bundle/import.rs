//! `POST /v1/tenants/{tenant}/import`: every document checked as a REST write of it would
//! be (its spec parsed and validated, a certificate's key checked and sealed, a mesh's CA
//! generated or restored), then all of them written by one store batch. The first error
//! names `documents[i]` and the field; nothing is written then.

use super::secrets::{self, Opener};
use super::{
    ApiError, AppState, CaSecret, Document, ImportItem, ImportRequest, ImportResult, kind_name,
    passphrase, typed,
};
use crate::auth::Caller;
use crate::body;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeSet, HashMap, HashSet};
use switchboard_model::spec::CertificateKey;
use switchboard_model::{
    FieldError, Kind, MANAGED_BY, MANAGED_BY_APPLY, Spec, ValidationErrors, validate_labels,
    validate_name,
};
use switchboard_pki::{MeshCa, Origin, SealedCa, SealedCaRef};
use switchboard_store::{BatchEffect, BatchOptions, BatchWrite, ResourceKey, StoreError};

/// The largest import accepted: a tenant's whole configuration.
pub(crate) const MAX_IMPORT_BYTES: usize = 32 * 1024 * 1024;

pub(super) async fn import(
    State(s): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let dry_run = crate::resources::dry_run(&q)?;
    let v = body::parse_up_to(&headers, body, MAX_IMPORT_BYTES)
        .await?
        .ok_or_else(|| ApiError::bad_request("body", "the request body is empty"))?;
    let req: ImportRequest = typed(v, "")?;
    s.store.get_tenant(&tenant).await?;
    let mut opener = passphrase(req.passphrase)?.map(Opener::new);
    let mut writes = Vec::with_capacity(req.documents.len());
    let mut restored = Vec::with_capacity(req.documents.len());
    for (i, raw) in req.documents.into_iter().enumerate() {
        let doc: Document = typed(raw, &format!("documents[{i}]"))?;
        let label = format!("{} {:?}", doc.kind, doc.name);
        let (write, ca) = prepare(&s, &tenant, doc, &mut opener)
            .await
            .map_err(|e| at_document(i, &label, e))?;
        writes.push(write);
        restored.push(ca);
    }
    let documents = writes.len();
    if req.prune {
        for write in pruned(&s, &tenant, &writes).await? {
            writes.push(write);
            restored.push(false);
        }
    }
    let labels: Vec<String> = writes
        .iter()
        .map(|w| match w {
            BatchWrite::Put { name, .. } | BatchWrite::Delete { name, .. } => {
                format!("{} {name:?}", kind_name(w.kind()))
            }
        })
        .collect();
    let outcome = s
        .store
        .write_many(
            &tenant,
            writes,
            &BatchOptions {
                dry_run,
                actor: Some(caller.actor()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| match e.at {
            Some(at) if at.index < documents => {
                at_document(at.index, &labels[at.index], store_error(e.error))
            }
            Some(at) => {
                let mut e = ApiError::from(e.error);
                e.detail = format!(
                    "pruning {} (no document names it): {}",
                    labels[at.index], e.detail
                );
                e
            }
            None => ApiError::from(e.error),
        })?;
    let items = outcome
        .items
        .iter()
        .zip(restored)
        .map(|(item, restored)| {
            let r = &item.resource;
            let created = item.effect == BatchEffect::Created;
            ImportItem {
                kind: kind_name(r.key.kind),
                mesh: r.key.mesh.clone(),
                name: r.key.name.clone(),
                effect: item.effect.as_str(),
                ca: match (r.key.kind, created, restored) {
                    (Kind::Mesh, true, true) => Some("restored"),
                    (Kind::Mesh, true, false) => Some("generated"),
                    _ => None,
                },
                labels: (dry_run && item.effect != BatchEffect::Deleted).then(|| r.labels.clone()),
                spec: (dry_run && item.effect != BatchEffect::Deleted).then(|| match r.key.kind {
                    Kind::Certificate => crate::certificates::view(r.spec.clone()),
                    _ => r.spec.clone(),
                }),
            }
        })
        .collect::<Vec<_>>();
    tracing::info!(%tenant, documents = items.len(), revision = outcome.revision, dry_run, "imported");
    Ok(axum::Json(ImportResult {
        dry_run,
        revision: outcome.revision,
        items,
    })
    .into_response())
}

/// A store error about one document: a missing mesh is the document's fault (422 naming
/// `mesh`), not a missing URL.
pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { what: "mesh", name } => ApiError::field(
            "mesh",
            format!("mesh {name:?} does not exist and is not among the documents"),
        ),
        e => ApiError::from(e),
    }
}

/// Names the document in every field and in the detail.
pub(crate) fn at_document(index: usize, label: &str, mut e: ApiError) -> ApiError {
    let at = format!("documents[{index}]");
    if e.errors.is_empty() {
        e.errors.push(FieldError::new(at.clone(), e.detail.clone()));
    } else {
        for f in &mut e.errors {
            f.field = format!("{at}.{}", f.field);
        }
    }
    e.detail = format!("{at} ({label}): {}", e.detail);
    e
}

/// The deletes `prune` adds: in every mesh the writes name, each resource that `apply` wrote
/// (labelled [`MANAGED_BY`]` = `[`MANAGED_BY_APPLY`]) and no write names. Read before the
/// batch's transaction: a resource created meanwhile is left alone, and one deleted meanwhile
/// fails the batch (nothing written), so a retry sees it gone.
async fn pruned(
    s: &AppState,
    tenant: &str,
    writes: &[BatchWrite],
) -> Result<Vec<BatchWrite>, ApiError> {
    let named: HashSet<(&str, Kind, &str)> = writes
        .iter()
        .map(|w| match w {
            BatchWrite::Put { mesh, name, .. } | BatchWrite::Delete { mesh, name, .. } => {
                (mesh.as_str(), w.kind(), name.as_str())
            }
        })
        .collect();
    let meshes: BTreeSet<&str> = named
        .iter()
        .map(|(mesh, kind, name)| if *kind == Kind::Mesh { *name } else { *mesh })
        .collect();
    let mut deletes = vec![];
    for mesh in meshes {
        let owned = s
            .store
            .labeled(tenant, mesh, MANAGED_BY, MANAGED_BY_APPLY)
            .await?;
        deletes.extend(
            owned
                .into_iter()
                .filter(|k| !named.contains(&(mesh, k.kind, k.name.as_str())))
                .map(|k| BatchWrite::delete(mesh, k.kind, &k.name)),
        );
    }
    Ok(deletes)
}

fn name_error(e: FieldError) -> ApiError {
    ApiError::invalid(ValidationErrors(vec![e]))
}

/// The store write of one document, and whether it restores a mesh's CA.
pub(crate) async fn prepare(
    s: &AppState,
    tenant: &str,
    doc: Document,
    opener: &mut Option<Opener>,
) -> Result<(BatchWrite, bool), ApiError> {
    if let Some(v) = &doc.api_version
        && v != super::API_VERSION
    {
        return Err(ApiError::field(
            "apiVersion",
            format!("{v:?} is not {:?}", super::API_VERSION),
        ));
    }
    let kind: Kind =
        serde_json::from_value(serde_json::Value::String(doc.kind.clone())).map_err(|_| {
            ApiError::field(
                "kind",
                format!(
                    "unknown kind {:?}: use mesh, service, endpoint, route, gateway, \
                     authorization-policy or certificate",
                    doc.kind
                ),
            )
        })?;
    validate_name("name", &doc.name).map_err(name_error)?;
    validate_labels("labels", &doc.labels).map_err(|e| ApiError::invalid(ValidationErrors(e)))?;
    let labels = doc.labels;
    match (kind, doc.mesh.is_empty()) {
        (Kind::Mesh, false) => {
            return Err(ApiError::field(
                "mesh",
                "a mesh document names no mesh (its name is `name`)",
            ));
        }
        (Kind::Mesh, true) => {}
        (_, true) => {
            return Err(ApiError::field(
                "mesh",
                "missing: the mesh the resource is in",
            ));
        }
        (_, false) => validate_name("mesh", &doc.mesh).map_err(name_error)?,
    }
    let spec_json = match (doc.spec, kind) {
        (serde_json::Value::Null, Kind::Mesh) => serde_json::json!({}),
        (serde_json::Value::Null, _) => {
            return Err(ApiError::field("spec", "missing: a resource needs a spec"));
        }
        (spec, _) => spec,
    };
    let secret = doc.secret;
    match kind {
        Kind::Mesh => {
            let spec = Spec::parse(kind, spec_json)?;
            spec.validate()?;
            if secret.as_ref().is_some_and(|x| x.private_key.is_some()) {
                return Err(ApiError::field(
                    "secret.privateKey",
                    "a mesh's secret is its `ca`",
                ));
            }
            let (ca, restored) = match secret.and_then(|x| x.ca) {
                Some(ca) => (restore_ca(s, tenant, &doc.name, ca, opener).await?, true),
                None => (crate::cas::generate_sealed(s, tenant, &doc.name)?, false),
            };
            let write = BatchWrite::Put {
                mesh: String::new(),
                name: doc.name,
                spec: Box::new(spec),
                labels,
                ca: Some(Box::new(ca)),
            };
            Ok((write, restored))
        }
        Kind::Certificate => {
            let key = match secret {
                Some(x) if x.ca.is_some() => {
                    return Err(ApiError::field(
                        "secret.ca",
                        "a certificate's secret is its `privateKey`",
                    ));
                }
                Some(x) => x.private_key,
                None => None,
            };
            let spec = certificate(s, tenant, &doc.mesh, &doc.name, spec_json, key, opener).await?;
            Ok((
                BatchWrite::put(&doc.mesh, &doc.name, spec).labeled(labels),
                false,
            ))
        }
        _ => {
            if secret.is_some() {
                return Err(ApiError::field(
                    "secret",
                    "only meshes and certificates carry secrets",
                ));
            }
            let spec = Spec::parse(kind, spec_json)?;
            spec.validate()?;
            Ok((
                BatchWrite::put(&doc.mesh, &doc.name, spec).labeled(labels),
                false,
            ))
        }
    }
}

fn opener_for<'a>(opener: &'a mut Option<Opener>, field: &str) -> Result<&'a mut Opener, ApiError> {
    opener.as_mut().ok_or_else(|| {
        ApiError::field(
            field,
            "encrypted, and the request has no `passphrase`: give the export's passphrase",
        )
    })
}

/// A mesh's CA from its document: the key decrypted, then sealed with this server's KEK for
/// this tenant and mesh, and loaded once to check it.
async fn restore_ca(
    s: &AppState,
    tenant: &str,
    mesh: &str,
    ca: CaSecret,
    opener: &mut Option<Opener>,
) -> Result<SealedCa, ApiError> {
    let field = "secret.ca.privateKey";
    let der = opener_for(opener, field)?
        .open(&ca.private_key, &secrets::ca_aad(&ca.id))
        .await
        .map_err(|e| ApiError::field(field, e.to_string()))?;
    let origin = Origin::parse(&ca.origin)
        .ok_or_else(|| ApiError::field("secret.ca.origin", "expected `generated` or `uploaded`"))?;
    let sealed_key = s
        .kek
        .seal(&der, &switchboard_pki::ca_key_aad(tenant, mesh, &ca.id))
        .map_err(|e| super::internal("sealing a CA key", e))?;
    let mut sealed = SealedCa {
        id: ca.id,
        origin,
        chain_pem: ca.certificate_chain,
        root_pem: String::new(),
        sealed_key,
        kek_id: s.kek.id().to_owned(),
    };
    let loaded = MeshCa::unseal(
        SealedCaRef {
            tenant,
            mesh,
            id: &sealed.id,
            origin,
            chain_pem: &sealed.chain_pem,
            sealed_key: &sealed.sealed_key,
            kek_id: &sealed.kek_id,
        },
        &s.kek,
    )
    .map_err(|e| ApiError::field("secret.ca", format!("the CA does not load: {e}")))?;
    sealed.root_pem = loaded.root_pem().to_owned();
    Ok(sealed)
}

/// A certificate's spec as stored. The target's own copy when it holds this very
/// certificate, as the document shows it (so re-importing changes nothing, and needs no
/// key); otherwise the key comes
/// from `spec.privateKey` (PEM, as a REST write) or the document's encrypted secret, and is
/// checked and sealed as a REST write's.
async fn certificate(
    s: &AppState,
    tenant: &str,
    mesh: &str,
    name: &str,
    mut spec: serde_json::Value,
    encrypted: Option<String>,
    opener: &mut Option<Opener>,
) -> Result<Spec, ApiError> {
    let has_pem = spec.get("privateKey").is_some();
    if !has_pem {
        let key = ResourceKey::new(tenant, mesh, Kind::Certificate, name);
        match s.store.get(&key).await {
            // The document must say exactly what a GET of it shows, else it is checked as
            // a new certificate (and needs its key).
            Ok(stored) if crate::certificates::view(stored.spec.clone()) == spec => {
                return Spec::parse(Kind::Certificate, stored.spec)
                    .map_err(|e| super::internal("reading a stored certificate", e));
            }
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(encrypted) = encrypted else {
            return Err(ApiError::field(
                "secret.privateKey",
                "missing: this certificate's private key is not in the document (an export \
                 without includeSecrets leaves keys out); export with includeSecrets, or put \
                 the PEM key in spec.privateKey",
            ));
        };
        let field = "secret.privateKey";
        let fingerprint = spec
            .get("fingerprint")
            .and_then(|f| f.as_str())
            .unwrap_or_default()
            .to_owned();
        let pem = opener_for(opener, field)?
            .open(&encrypted, &secrets::certificate_aad(&fingerprint))
            .await
            .map_err(|e| ApiError::field(field, e.to_string()))?;
        let pem = std::str::from_utf8(&pem)
            .map_err(|_| ApiError::field(field, "the decrypted key is not PEM text"))?;
        if let Some(o) = spec.as_object_mut() {
            o.insert("privateKey".into(), pem.into());
        }
    } else if encrypted.is_some() {
        return Err(ApiError::field(
            "secret.privateKey",
            "the key is given twice: in spec.privateKey and in secret.privateKey",
        ));
    }
    let parsed = Spec::parse(Kind::Certificate, spec)?;
    parsed.validate()?;
    let Spec::Certificate(written) = parsed else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "a certificate did not parse as one",
        ));
    };
    let sealed = crate::certificates::seal(s, tenant, mesh, name, *written)?;
    Ok(stored_if_same(s, tenant, mesh, name, &sealed)
        .await?
        .unwrap_or(sealed))
}

/// The stored certificate `name` when it is `sealed` but for the sealing: the same spec and
/// the same key, which every write seals anew (a fresh nonce), so that a document written
/// with the same PEM chain and key changes nothing (applying a file twice writes nothing
/// the second time).
async fn stored_if_same(
    s: &AppState,
    tenant: &str,
    mesh: &str,
    name: &str,
    sealed: &Spec,
) -> Result<Option<Spec>, ApiError> {
    let key = ResourceKey::new(tenant, mesh, Kind::Certificate, name);
    let stored = match s.store.get(&key).await {
        Ok(stored) => stored,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let view = crate::certificates::view;
    if view(stored.spec.clone()) != view(sealed.to_json()) {
        return Ok(None);
    }
    let stored = Spec::parse(Kind::Certificate, stored.spec)
        .map_err(|e| super::internal("reading a stored certificate", e))?;
    // A key that does not open (sealed with another KEK) is replaced, as a new write would.
    let open = |spec: &Spec| match spec {
        Spec::Certificate(c) => match &c.private_key {
            CertificateKey::Sealed(k) => switchboard_pki::open_certificate_key(
                &s.kek, tenant, mesh, name, &k.kek_id, &k.sealed,
            )
            .ok(),
            CertificateKey::Pem(_) => None,
        },
        _ => None,
    };
    match (open(&stored), open(sealed)) {
        (Some(a), Some(b)) if a == b => Ok(Some(stored)),
        _ => Ok(None),
    }
}
