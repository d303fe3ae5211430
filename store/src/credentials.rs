//! API keys and proxy tokens. The secret is shown once at creation; only its SHA-256 is
//! stored. Secrets carry 256 random bits, so a fast hash is the right one (there is nothing to
//! brute-force), and lookups stay one indexed query. A proxy token may also be issued as a
//! signed JWT ([`crate::jwt`]): its row is the same, and the JWT names the row's id.

use crate::{Store, StoreError, now_ms};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// For the REST API.
    ApiKey,
    /// For xDS streams.
    ProxyToken,
}

impl CredentialKind {
    /// `api-key` or `proxy-token`, as stored (and as the audit log names it).
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "api-key",
            CredentialKind::ProxyToken => "proxy-token",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "sbk_",
            CredentialKind::ProxyToken => "sbp_",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "api-key" => Some(CredentialKind::ApiKey),
            "proxy-token" => Some(CredentialKind::ProxyToken),
            _ => None,
        }
    }
}

/// A credential's public record (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: String,
    pub tenant: String,
    pub kind: CredentialKind,
    /// Proxy tokens may be limited to one mesh.
    pub mesh: Option<String>,
    pub description: String,
    pub create_time: i64,
}

/// A credential just created, with its secret (shown once).
#[derive(Debug, Clone)]
pub struct NewCredential {
    pub credential: Credential,
    pub secret: String,
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn row_to_credential(r: &AnyRow) -> Result<Credential, StoreError> {
    let kind: String = r.try_get("kind")?;
    Ok(Credential {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        kind: CredentialKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("credential kind {kind:?}")))?,
        mesh: r.try_get("mesh")?,
        description: r.try_get("description")?,
        create_time: r.try_get("create_time")?,
    })
}

fn new_credential(
    tenant: &str,
    kind: CredentialKind,
    mesh: Option<&str>,
    description: &str,
) -> Credential {
    let mut idb = [0u8; 8];
    rand::rng().fill_bytes(&mut idb);
    Credential {
        id: hex::encode(idb),
        tenant: tenant.into(),
        kind,
        mesh: mesh.map(str::to_string),
        description: description.into(),
        create_time: now_ms(),
    }
}

const CRED_COLS: &str = "id, tenant, kind, mesh, description, create_time";

impl Store {
    pub async fn create_credential(
        &self,
        tenant: &str,
        kind: CredentialKind,
        mesh: Option<&str>,
        description: &str,
    ) -> Result<NewCredential, StoreError> {
        self.get_tenant(tenant).await?;
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let secret = format!(
            "{}{}",
            kind.prefix(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let credential = new_credential(tenant, kind, mesh, description);
        self.insert_credential(&credential, &secret).await?;
        Ok(NewCredential { credential, secret })
    }

    /// Issues a proxy token as a JWT valid for `lifetime`, signed with the key given to
    /// [`Store::set_proxy_jwt_key`]. The JWT's `sub` is the credential's id.
    pub async fn create_proxy_jwt(
        &self,
        tenant: &str,
        mesh: Option<&str>,
        description: &str,
        lifetime: std::time::Duration,
    ) -> Result<(NewCredential, i64), StoreError> {
        self.get_tenant(tenant).await?;
        let key = self.proxy_jwt_key().ok_or_else(|| {
            StoreError::Config("no proxy JWT key is configured (proxy_jwt_key_file)".into())
        })?;
        let credential = new_credential(tenant, CredentialKind::ProxyToken, mesh, description);
        let iat = credential.create_time / 1000;
        let exp = iat.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
        let claims = crate::jwt::ProxyClaims {
            iss: crate::jwt::ISSUER.into(),
            sub: credential.id.clone(),
            iat,
            exp,
            tenant: tenant.into(),
            mesh: mesh.map(str::to_owned),
        };
        let secret = key
            .sign(&claims)
            .map_err(|e| StoreError::Config(e.to_string()))?;
        self.insert_credential(&credential, &secret).await?;
        Ok((NewCredential { credential, secret }, exp))
    }

    /// Sets the key that signs and verifies JWT proxy tokens; the first key set stays.
    pub fn set_proxy_jwt_key(&self, key: crate::jwt::ProxyJwtKey) {
        let _ = self.inner.proxy_jwt.set(key);
    }

    /// The key of JWT proxy tokens, if one was set.
    pub fn proxy_jwt_key(&self) -> Option<&crate::jwt::ProxyJwtKey> {
        self.inner.proxy_jwt.get()
    }

    async fn insert_credential(
        &self,
        credential: &Credential,
        secret: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO credentials ({CRED_COLS}, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&credential.id)
        .bind(&credential.tenant)
        .bind(credential.kind.as_str())
        .bind(credential.mesh.as_deref())
        .bind(&credential.description)
        .bind(credential.create_time)
        .bind(hash_secret(secret))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn list_credentials(
        &self,
        tenant: &str,
        kind: CredentialKind,
    ) -> Result<Vec<Credential>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CRED_COLS} FROM credentials WHERE tenant = $1 AND kind = $2 ORDER BY create_time, id"
        ))
        .bind(tenant)
        .bind(kind.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row_to_credential).collect()
    }

    /// Deletes a credential and announces it ([`crate::Notice::Revoked`]) to every replica,
    /// so that streams authenticated with it end.
    pub async fn revoke_credential(
        &self,
        tenant: &str,
        kind: CredentialKind,
        id: &str,
    ) -> Result<(), StoreError> {
        let turn = self.write_turn().await;
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "DELETE FROM credentials WHERE tenant = $1 AND kind = $2 AND id = $3 RETURNING id",
        )
        .bind(tenant)
        .bind(kind.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_none() {
            return Err(StoreError::NotFound {
                what: kind.as_str(),
                name: id.into(),
            });
        }
        let notice = crate::Notice::Revoked {
            tenant: tenant.into(),
            id: id.into(),
        };
        if self.backend() == crate::Backend::Postgres {
            crate::changes::notify_in(&mut tx, &notice).await?;
        }
        tx.commit().await?;
        drop(turn);
        if self.backend() == crate::Backend::Sqlite {
            let _ = self.notices().send(notice);
        }
        Ok(())
    }

    /// The credential `id`, unless it was revoked (or never existed).
    pub async fn get_credential(&self, id: &str) -> Result<Option<Credential>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CRED_COLS} FROM credentials WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(row_to_credential).transpose()
    }

    /// Whether the credential `id` still exists (not revoked).
    pub async fn credential_exists(&self, id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT id FROM credentials WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }

    /// Finds the credential a presented secret belongs to.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Credential>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CRED_COLS} FROM credentials WHERE hash = $1"
        ))
        .bind(hash_secret(secret))
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(row_to_credential).transpose()
    }
}
