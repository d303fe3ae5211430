//! Proxy tokens as signed JWTs, for proxyless gRPC clients: gRPC's `jwt_token_file` call
//! credentials (gRFC A97) read a JWT from a file, send it as `authorization: Bearer`, and use
//! its `exp` to know when to read the file again.
//!
//! HS256 with one secret per deployment: the control plane is both the only issuer and the
//! only verifier, so a public key buys nothing, and an HMAC keeps verification a hash (ring,
//! the crypto the TLS stack already uses). A JWT stands for a credential row (`sub` is its
//! id), so revoking that row revokes the JWT, as with opaque tokens.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The `iss` of every proxy JWT.
pub const ISSUER: &str = "switchboard";

/// The claims of a proxy JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyClaims {
    pub iss: String,
    /// The credential id (revoking it revokes the JWT).
    pub sub: String,
    /// Seconds since the Unix epoch.
    pub iat: i64,
    pub exp: i64,
    pub tenant: String,
    /// Set when the token is limited to one mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
}

/// Why a JWT is refused. No variant carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the proxy token JWT has expired (exp is past): issue a new one")]
    Expired,
    #[error(
        "the proxy token JWT's signature does not verify: it was not issued by this deployment's proxy_jwt_key_file"
    )]
    BadSignature,
    #[error(
        "the proxy token JWT is malformed or lacks the claims iss=switchboard, sub, exp and tenant"
    )]
    Malformed,
    #[error("the proxy JWT key must be at least {min} bytes", min = ProxyJwtKey::MIN_LEN)]
    KeyTooShort,
    #[error("cannot sign the proxy token JWT")]
    Sign,
}

/// The deployment's signing key for proxy JWTs (HS256).
#[derive(Clone)]
pub struct ProxyJwtKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for ProxyJwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyJwtKey(redacted)")
    }
}

impl ProxyJwtKey {
    /// The shortest secret accepted: HS256's own strength, 256 bits.
    pub const MIN_LEN: usize = 32;

    pub fn new(secret: &[u8]) -> Result<Self, JwtError> {
        if secret.len() < Self::MIN_LEN {
            return Err(JwtError::KeyTooShort);
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &ProxyClaims) -> Result<String, JwtError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|_| JwtError::Sign)
    }

    /// The claims of `token` if its signature verifies, it is ours (`iss`) and `exp` is in
    /// the future (no leeway: the issuer's clock is the verifier's). A JWT is expired from the
    /// second of its `exp` on (RFC 7519 4.1.4: "on or after"), when the xDS server also ends
    /// its streams; jsonwebtoken alone would still accept it during that second.
    pub fn verify(&self, token: &str) -> Result<ProxyClaims, JwtError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<ProxyClaims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::InvalidSignature => JwtError::BadSignature,
                _ => JwtError::Malformed,
            })
            .and_then(|claims| {
                if claims.exp <= crate::now_ms() / 1000 {
                    return Err(JwtError::Expired);
                }
                Ok(claims)
            })
    }
}

/// Whether a bearer token is a JWT (three dot-separated parts) rather than an opaque token
/// (`sbp_…`, which never contains a dot).
pub fn is_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> ProxyClaims {
        ProxyClaims {
            iss: ISSUER.into(),
            sub: "c0ffee".into(),
            iat: 0,
            exp,
            tenant: "acme".into(),
            mesh: Some("prod".into()),
        }
    }

    #[test]
    fn signs_and_verifies() {
        let key = ProxyJwtKey::new(&[7; 32]).unwrap();
        let future = crate::now_ms() / 1000 + 3600;
        let token = key.sign(&claims(future)).unwrap();
        assert!(is_jwt(&token));
        assert!(!is_jwt("sbp_abc"));
        assert_eq!(key.verify(&token).unwrap(), claims(future));
        let past = crate::now_ms() / 1000 - 5;
        let expired = key.sign(&claims(past)).unwrap();
        assert_eq!(key.verify(&expired), Err(JwtError::Expired));
        // Expired from the second of its exp on.
        let now = key.sign(&claims(crate::now_ms() / 1000)).unwrap();
        assert_eq!(key.verify(&now), Err(JwtError::Expired));
        let other = ProxyJwtKey::new(&[8; 32]).unwrap();
        assert_eq!(other.verify(&token), Err(JwtError::BadSignature));
        assert_eq!(key.verify("a.b.c"), Err(JwtError::Malformed));
        let mut foreign = claims(future);
        foreign.iss = "someone-else".into();
        assert_eq!(
            key.verify(&key.sign(&foreign).unwrap()),
            Err(JwtError::Malformed)
        );
        assert_eq!(
            ProxyJwtKey::new(&[1; 31]).err(),
            Some(JwtError::KeyTooShort)
        );
        assert_eq!(format!("{key:?}"), "ProxyJwtKey(redacted)");
    }
}
