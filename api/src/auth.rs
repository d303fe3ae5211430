//! Who is calling: the platform admin, or an API key of one tenant.
//!
//! A tenant's key asking about any other tenant gets the same 404 as for a tenant that does
//! not exist, so keys reveal nothing about other tenants.

use crate::{ApiError, AppState};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchboard_store::{Actor, CredentialKind};

/// The platform admin token, kept only as its SHA-256.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    pub fn new(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }
    fn matches(&self, presented: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        h.ct_eq(&self.0).into()
    }
}

#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    /// An API key of `tenant`: its id and description name it in history and audit.
    Tenant {
        tenant: String,
        key: Actor,
    },
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin)
    }

    /// Who the history says wrote: the key, or the platform admin.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::Admin => Actor::admin(),
            Caller::Tenant { key, .. } => key.clone(),
        }
    }
    /// 404 unless the caller may see `tenant`.
    pub fn check_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { tenant: t, .. } if t == tenant => Ok(()),
            Caller::Tenant { .. } => {
                Err(ApiError::not_found(format!("tenant {tenant:?} not found")))
            }
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Already resolved by the write limit (`quotas::limit_writes`).
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let value = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("send `Authorization: Bearer <api key>`"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthenticated("the Authorization header must be `Bearer <api key>`")
            })?;
        if state.admin.matches(token) {
            return Ok(Caller::Admin);
        }
        match state.store.authenticate(token).await? {
            Some(c) if c.kind == CredentialKind::ApiKey => Ok(Caller::Tenant {
                tenant: c.tenant,
                key: Actor {
                    id: c.id,
                    description: c.description,
                },
            }),
            Some(_) => Err(ApiError::unauthenticated(
                "a proxy token is for xDS only; use an API key",
            )),
            None => Err(ApiError::unauthenticated("unknown or revoked API key")),
        }
    }
}
