//! Who may open an xDS stream for a node.
//!
//! A client sends a proxy token as `authorization: Bearer <token>`: opaque (`sbp_…`), or a
//! JWT (gRFC A97's `jwt_token_file` call credentials) whose signature and `exp` verify and
//! whose `sub` is a proxy token not revoked. The token must be a proxy
//! token of the tenant the node id names and, if the token is limited to a mesh, of that mesh;
//! else PERMISSION_DENIED. Without a token, only a mesh with `allowUnauthenticatedXds: true`
//! admits the stream; else UNAUTHENTICATED. Whether a mesh exists is revealed (NOT_FOUND) only
//! to a client whose token passed: a token of tenant A naming a node of tenant B is refused
//! the same way whether B exists or not, and so is an anonymous client naming a mesh that
//! does not exist.
//!
//! Instead of a token, a client may present a TLS client certificate issued by the CA of the
//! node's mesh ([`cert`]): it authenticates as that mesh's service named by its SPIFFE ID.
//! A client that sends a token AND a certificate is judged by the token alone (the
//! certificate is then not even parsed): the token is the explicit choice, and a proxy that
//! always presents its workload certificate can still be given a token's broader reach.
//! A stream lives no longer than its credential: a JWT's `exp`, a certificate's notAfter
//! ([`Admitted::expires`]), or the trust of the root its certificate chains to
//! ([`cert::reverify`] when the mesh's bundle changes).
//!
//! While the store is unreachable, a proxy token this replica verified within the last hour
//! is still admitted ([`known`]); any other token is refused with UNAVAILABLE (retry), as
//! soon as the store's bounded connection wait gives up.

pub mod cert;
pub mod known;

use std::time::{Instant, SystemTime};

use rustls_pki_types::CertificateDer;
use switchboard_model::identity::WorkloadId;

use switchboard_store::jwt::{self, JwtError};
use switchboard_store::{Credential, CredentialKind, Store};
use tonic::metadata::MetadataMap;

use crate::cache::{CacheError, MeshHandle, MeshState, SnapshotCache};
use crate::expiry::{Deadline, Expiring};
use crate::node::NodeId;
use cert::{CertError, Leaf, RootsCache};
use known::KnownCredentials;

/// The hint every refusal of an anonymous client carries.
const SEND_A_TOKEN: &str = "send a proxy token in the authorization metadata \
    (authorization: Bearer <token>), present a client certificate issued by the mesh CA, or \
    enable allowUnauthenticatedXds on the mesh";

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: {SEND_A_TOKEN}")]
    Unauthenticated,
    #[error("the authorization metadata must be \"Bearer <token>\"")]
    MalformedHeader,
    #[error(
        "the token in the authorization metadata is not valid (revoked or mistyped): create a \
         proxy token for the tenant and send it as authorization: Bearer <token>"
    )]
    UnknownToken,
    #[error("{0}")]
    Jwt(JwtError),
    #[error(
        "the credential is an API key, not a proxy token: xDS clients authenticate with a proxy \
         token of the tenant their node id names"
    )]
    NotProxyToken,
    #[error(
        "tenant mismatch: the proxy token does not belong to tenant {node_tenant:?} that the \
         node id names; use a proxy token of that tenant"
    )]
    TenantMismatch { node_tenant: String },
    #[error(
        "mesh mismatch: the proxy token is limited to mesh {token_mesh:?}, but the node id names \
         mesh {node_mesh:?}; use a token of that mesh or one not limited to a mesh"
    )]
    MeshMismatch {
        token_mesh: String,
        node_mesh: String,
    },
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error(
        "identity mismatch: the client certificate is for {identity:?}, not a workload of mesh \
         {node_mesh:?} of tenant {node_tenant:?} that the node id names"
    )]
    IdentityMismatch {
        identity: String,
        node_tenant: String,
        node_mesh: String,
    },
    #[error(
        "service mismatch: the client certificate authenticates service {certificate:?}, but \
         the node claims {claimed:?} (node metadata service/gateway); use a certificate of \
         {claimed:?} or fix the node metadata"
    )]
    ServiceMismatch {
        certificate: String,
        claimed: String,
    },
    #[error(transparent)]
    Mesh(#[from] CacheError),
    #[error(
        "cannot check the proxy token: the configuration store is unreachable ({0}); retry \
         later (hint: is the database reachable?)"
    )]
    Store(String),
}

impl AuthError {
    /// The gRPC status that ends the stream.
    pub fn status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            AuthError::Unauthenticated
            | AuthError::MalformedHeader
            | AuthError::UnknownToken
            | AuthError::Jwt(_)
            | AuthError::Certificate(_) => tonic::Status::unauthenticated(msg),
            AuthError::NotProxyToken
            | AuthError::TenantMismatch { .. }
            | AuthError::MeshMismatch { .. }
            | AuthError::IdentityMismatch { .. }
            | AuthError::ServiceMismatch { .. } => tonic::Status::permission_denied(msg),
            AuthError::Mesh(CacheError::NotFound { .. }) => tonic::Status::not_found(msg),
            AuthError::Mesh(CacheError::Unavailable(_)) | AuthError::Store(_) => {
                tonic::Status::unavailable(msg)
            }
            AuthError::Mesh(CacheError::Busy { .. }) => tonic::Status::resource_exhausted(msg),
        }
    }
}

/// The token of an `authorization: Bearer <token>` header, if any.
pub fn bearer(metadata: &MetadataMap) -> Result<Option<String>, AuthError> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(AuthError::MalformedHeader)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::MalformedHeader);
    }
    Ok(Some(token.to_owned()))
}

/// The credential a bearer token stands for: an opaque token by its hash, a JWT by its
/// verified `sub` (so revoking the credential revokes the JWT). With a JWT, also its `exp`.
/// With `known`, a token the store verified is remembered, and recalled when the store
/// cannot answer.
async fn credential(
    store: &Store,
    known: Option<&KnownCredentials>,
    token: &str,
) -> Result<(Credential, Option<i64>), AuthError> {
    let (looked_up, claims) = if !jwt::is_jwt(token) {
        (store.authenticate(token).await, None)
    } else {
        // Without a key this deployment issued no JWT, so none can be ours.
        let key = store
            .proxy_jwt_key()
            .ok_or(AuthError::Jwt(JwtError::BadSignature))?;
        let claims = key.verify(token).map_err(AuthError::Jwt)?;
        (store.get_credential(&claims.sub).await, Some(claims))
    };
    let exp = claims.as_ref().map(|c| c.exp);
    let found = match looked_up {
        Ok(found) => found,
        Err(e) => {
            let recalled = e
                .is_unavailable()
                .then(|| known.and_then(|k| k.recall(token, Instant::now())))
                .flatten();
            let Some(credential) = recalled else {
                return Err(AuthError::Store(e.to_string()));
            };
            tracing::info!(
                credential = %credential.id, error = %e,
                "the store is unreachable: admitting a proxy token this replica verified \
                 within the last hour"
            );
            return Ok((credential, exp));
        }
    };
    let credential = found.ok_or(AuthError::UnknownToken)?;
    // Signed by us, so these agree; checked anyway, as the row is what revocation edits.
    if let Some(claims) = &claims
        && (credential.tenant != claims.tenant || credential.mesh != claims.mesh)
    {
        return Err(AuthError::UnknownToken);
    }
    if let Some(known) = known {
        known.remember(token, &credential, Instant::now());
    }
    Ok((credential, exp))
}

/// Checks a proxy token against a node id (pure part of [`authorize`]).
pub fn check_proxy_token(credential: &Credential, node: &NodeId) -> Result<(), AuthError> {
    if credential.kind != CredentialKind::ProxyToken {
        return Err(AuthError::NotProxyToken);
    }
    if credential.tenant != node.tenant {
        return Err(AuthError::TenantMismatch {
            node_tenant: node.tenant.clone(),
        });
    }
    match &credential.mesh {
        Some(mesh) if *mesh != node.mesh => Err(AuthError::MeshMismatch {
            token_mesh: mesh.clone(),
            node_mesh: node.mesh.clone(),
        }),
        _ => Ok(()),
    }
}

/// What a client presented: a bearer token, and the certificate chain of its TLS
/// connection (leaf first; `None` over plaintext or when it sent none).
#[derive(Debug, Default, Clone, Copy)]
pub struct Presented<'a> {
    pub token: Option<&'a str>,
    pub certificates: Option<&'a [CertificateDer<'static>]>,
}

/// An admitted stream: its mesh, kept loaded, and what authenticated it.
#[derive(Debug)]
pub struct Admitted {
    pub mesh: MeshHandle,
    pub authenticated: bool,
    /// The id of the proxy token presented, if any (to end the stream when it is revoked).
    pub credential: Option<String>,
    /// The workload identity of the client certificate that admitted the stream: the node may
    /// claim only its service ([`cert::check_claim`]).
    pub identity: Option<WorkloadId>,
    /// When the credential expires (a JWT's `exp`, a certificate's notAfter), which ends the
    /// stream.
    pub expires: Option<Deadline>,
}

/// Admits or refuses a stream for `node` presenting `presented`, at `now`; `known` holds
/// the proxy tokens verified here, for when the store is unreachable.
pub async fn authorize(
    store: &Store,
    cache: &SnapshotCache,
    roots: &RootsCache,
    known: &KnownCredentials,
    presented: Presented<'_>,
    node: &NodeId,
    now: SystemTime,
) -> Result<Admitted, AuthError> {
    let chain = presented.certificates.filter(|c| !c.is_empty());
    match (presented.token, chain) {
        (Some(token), _) => {
            let (credential, exp) = credential(store, Some(known), token).await?;
            check_proxy_token(&credential, node)?;
            let mesh = cache.acquire(&node.tenant, &node.mesh).await?;
            Ok(Admitted {
                mesh,
                authenticated: true,
                credential: Some(credential.id),
                identity: None,
                expires: exp.map(|exp| Deadline {
                    at: SystemTime::UNIX_EPOCH
                        + std::time::Duration::from_secs(u64::try_from(exp).unwrap_or(0)),
                    what: Expiring::Jwt,
                }),
            })
        }
        (None, Some(chain)) => certificate(cache, roots, chain, node, now).await,
        (None, None) => {
            let mut mesh = match cache.acquire_unverified(&node.tenant, &node.mesh).await {
                Ok(mesh) => mesh,
                // Do not tell an anonymous client which meshes exist.
                Err(CacheError::NotFound { .. }) => return Err(AuthError::Unauthenticated),
                Err(e) => return Err(e.into()),
            };
            match mesh.current() {
                MeshState::Ready(s) if s.spec.allow_unauthenticated_xds => Ok(Admitted {
                    mesh,
                    authenticated: false,
                    credential: None,
                    identity: None,
                    expires: None,
                }),
                _ => Err(AuthError::Unauthenticated),
            }
        }
    }
}

/// Admits a stream by its client certificate: valid now, chaining to the current trust
/// bundle of the node's mesh, and naming a workload of that mesh.
async fn certificate(
    cache: &SnapshotCache,
    roots: &RootsCache,
    chain: &[CertificateDer<'static>],
    node: &NodeId,
    now: SystemTime,
) -> Result<Admitted, AuthError> {
    let Some(leaf) = chain.first() else {
        return Err(AuthError::Unauthenticated);
    };
    // Shape and dates first: their errors say nothing about which meshes exist.
    let leaf = Leaf::parse(leaf)?;
    leaf.check_time(now)?;
    let untrusted = |reason: &str| CertError::Untrusted {
        tenant: node.tenant.clone(),
        mesh: node.mesh.clone(),
        reason: reason.to_owned(),
    };
    let mut mesh = match cache.acquire_unverified(&node.tenant, &node.mesh).await {
        Ok(mesh) => mesh,
        // As for anonymous clients: a missing mesh looks like a CA that did not issue it.
        Err(CacheError::NotFound { .. }) => return Err(untrusted("UnknownIssuer").into()),
        Err(e) => return Err(e.into()),
    };
    let MeshState::Ready(snapshot) = mesh.current() else {
        return Err(CacheError::Unavailable("the mesh is not loaded; retry".to_owned()).into());
    };
    let anchors = roots.anchors(&snapshot.trust);
    let leaf = cert::verify(chain, leaf, &anchors, node, &snapshot.trust_domain, now)?;
    Ok(Admitted {
        mesh,
        authenticated: true,
        credential: None,
        expires: Some(Deadline {
            at: leaf.expires(),
            what: Expiring::ClientCertificate,
        }),
        identity: Some(leaf.identity),
    })
}

/// Who may read proxy status through CSDS: any API key or proxy token, limited to its tenant
/// (and mesh, for a mesh-limited token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusScope {
    pub tenant: String,
    pub mesh: Option<String>,
}

/// Checks the credential of a CSDS call.
pub async fn status_scope(store: &Store, metadata: &MetadataMap) -> Result<StatusScope, AuthError> {
    let token = bearer(metadata)?.ok_or(AuthError::Unauthenticated)?;
    let (credential, _) = credential(store, None, &token).await?;
    Ok(StatusScope {
        tenant: credential.tenant,
        mesh: credential.mesh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(kind: CredentialKind, tenant: &str, mesh: Option<&str>) -> Credential {
        Credential {
            id: "id".to_owned(),
            tenant: tenant.to_owned(),
            kind,
            mesh: mesh.map(str::to_owned),
            description: String::new(),
            create_time: 0,
        }
    }

    fn node() -> NodeId {
        NodeId::parse("tenants/acme/meshes/prod/nodes/n").unwrap()
    }

    #[test]
    fn proxy_token_rules() {
        let ok = credential(CredentialKind::ProxyToken, "acme", None);
        assert_eq!(check_proxy_token(&ok, &node()), Ok(()));
        let scoped = credential(CredentialKind::ProxyToken, "acme", Some("prod"));
        assert_eq!(check_proxy_token(&scoped, &node()), Ok(()));
        let other_mesh = credential(CredentialKind::ProxyToken, "acme", Some("dev"));
        let err = check_proxy_token(&other_mesh, &node()).unwrap_err();
        assert!(err.to_string().starts_with("mesh mismatch"), "{err}");
        assert_eq!(err.status().code(), tonic::Code::PermissionDenied);
        let other_tenant = credential(CredentialKind::ProxyToken, "globex", None);
        let err = check_proxy_token(&other_tenant, &node()).unwrap_err();
        assert!(err.to_string().starts_with("tenant mismatch"), "{err}");
        assert!(
            !err.to_string().contains("globex"),
            "names only what the client sent"
        );
        assert_eq!(err.status().code(), tonic::Code::PermissionDenied);
        let api_key = credential(CredentialKind::ApiKey, "acme", None);
        assert_eq!(
            check_proxy_token(&api_key, &node()),
            Err(AuthError::NotProxyToken)
        );
    }

    #[test]
    fn bearer_header() {
        let mut md = MetadataMap::new();
        assert_eq!(bearer(&md), Ok(None));
        md.insert("authorization", "Bearer sbp_abc".parse().unwrap());
        assert_eq!(bearer(&md), Ok(Some("sbp_abc".to_owned())));
        md.insert("authorization", "bearer  sbp_abc ".parse().unwrap());
        assert_eq!(bearer(&md), Ok(Some("sbp_abc".to_owned())));
        for bad in ["sbp_abc", "Basic abc", "Bearer "] {
            md.insert("authorization", bad.parse().unwrap());
            assert_eq!(bearer(&md), Err(AuthError::MalformedHeader), "{bad}");
        }
    }

    #[test]
    fn anonymous_refusal_says_what_to_do() {
        let status = AuthError::Unauthenticated.status();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("authorization metadata"));
        assert!(status.message().contains("allowUnauthenticatedXds"));
    }
}
