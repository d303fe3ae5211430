//! A mesh CA for tests: one P-256 root per mesh, generated in memory with rcgen, issuing
//! certificates whose only SAN is the SPIFFE ID URI. Implements the xDS server's
//! [`WorkloadIssuer`] port the way the store-backed CA does, with knobs tests need: a CA
//! rotation, a cap on validity (as a CA close to its own expiry has), and refusals.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use switchboard_model::TrustBundle;
use switchboard_model::spec::SealedKey;
use zeroize::Zeroizing;

use crate::sds::{IssueError, IssuedCertificate, WorkloadIssuer};

/// One CA: its id, root certificate and signing key.
struct TestCa {
    id: String,
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A mesh's CAs: every root trusted now, the last one signing.
#[derive(Default)]
struct MeshCas {
    trusted: Vec<TestCa>,
}

/// The test mesh CA. Meshes get their root on first use.
pub struct TestIssuer {
    /// The key-encryption key uploaded certificates' keys are sealed with
    /// ([`TestIssuer::seal_certificate_key`]).
    kek: switchboard_pki::Kek,
    meshes: Mutex<BTreeMap<(String, String), MeshCas>>,
    /// Issued certificates are valid at most this long.
    max_validity: Mutex<Option<Duration>>,
    /// Meshes whose issuance fails.
    refusing: Mutex<Vec<(String, String)>>,
    issued: AtomicU64,
    next_ca: AtomicU64,
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer")
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

fn failed(e: rcgen::Error) -> IssueError {
    IssueError::Failed(e.to_string())
}

impl TestIssuer {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            kek: switchboard_pki::Kek::parse(&"42".repeat(32)).unwrap_or_else(|_| unreachable!()),
            meshes: Mutex::new(BTreeMap::new()),
            max_validity: Mutex::new(None),
            refusing: Mutex::new(Vec::new()),
            issued: AtomicU64::new(0),
            next_ca: AtomicU64::new(1),
        })
    }

    /// Caps the validity of the certificates issued from now on (as a CA near its own expiry
    /// does), so that renewal comes within a test's patience.
    pub fn cap_validity(&self, max: Duration) {
        *self
            .max_validity
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(max);
    }

    /// Makes issuance for `tenant`/`mesh` fail (or work again).
    pub fn refuse(&self, tenant: &str, mesh: &str, refuse: bool) {
        let mut r = self.refusing.lock().unwrap_or_else(PoisonError::into_inner);
        r.retain(|k| k != &(tenant.to_owned(), mesh.to_owned()));
        if refuse {
            r.push((tenant.to_owned(), mesh.to_owned()));
        }
    }

    /// `key_pem` sealed as the API seals an uploaded certificate's key, for a spec written
    /// to the store by a test.
    pub fn seal_certificate_key(
        &self,
        tenant: &str,
        mesh: &str,
        name: &str,
        key_pem: &str,
    ) -> SealedKey {
        let (kek_id, sealed) =
            switchboard_pki::seal_certificate_key(&self.kek, tenant, mesh, name, key_pem)
                .unwrap_or_else(|e| panic!("sealing failed: {e}"));
        SealedKey { kek_id, sealed }
    }

    /// How many certificates were issued.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::SeqCst)
    }

    fn new_ca(&self, tenant: &str, mesh: &str) -> Result<TestCa, IssueError> {
        let id = format!("test-ca-{}", self.next_ca.fetch_add(1, Ordering::SeqCst));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{tenant}/{mesh} {id}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        let root_pem = params.self_signed(&key).map_err(failed)?.pem();
        Ok(TestCa {
            id,
            root_pem,
            issuer: Issuer::new(params, key),
        })
    }

    fn with_mesh<T>(
        &self,
        tenant: &str,
        mesh: &str,
        f: impl FnOnce(&mut MeshCas) -> Result<T, IssueError>,
    ) -> Result<T, IssueError> {
        let mut meshes = self.meshes.lock().unwrap_or_else(PoisonError::into_inner);
        let cas = meshes
            .entry((tenant.to_owned(), mesh.to_owned()))
            .or_default();
        if cas.trusted.is_empty() {
            cas.trusted.push(self.new_ca(tenant, mesh)?);
        }
        f(cas)
    }

    /// Starts a rotation: a new root, trusted beside the old one, signs from now on. Returns
    /// the new signer id. (The caller then writes to the store, as a real rotation does, so
    /// that the mesh is rebuilt.)
    pub fn rotate(&self, tenant: &str, mesh: &str) -> Result<String, IssueError> {
        let ca = self.new_ca(tenant, mesh)?;
        let id = ca.id.clone();
        self.with_mesh(tenant, mesh, |cas| {
            cas.trusted.push(ca);
            Ok(())
        })?;
        Ok(id)
    }

    /// The mesh's trust bundle now (also what [`WorkloadIssuer::trust_bundle`] answers).
    pub fn bundle(&self, tenant: &str, mesh: &str) -> Result<TrustBundle, IssueError> {
        self.with_mesh(tenant, mesh, |cas| {
            Ok(TrustBundle {
                signer_id: cas.trusted.last().map(|c| c.id.clone()).unwrap_or_default(),
                roots_pem: cas.trusted.iter().map(|c| c.root_pem.clone()).collect(),
            })
        })
    }

    fn issue_now(
        &self,
        tenant: &str,
        mesh: &str,
        spiffe_id: &str,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, IssueError> {
        if self
            .refusing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(tenant.to_owned(), mesh.to_owned()))
        {
            return Err(IssueError::Unavailable("refused by the test".to_owned()));
        }
        let cap = *self
            .max_validity
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let validity = cap.map_or(lifetime, |c| c.min(lifetime));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        let uri = Ia5String::try_from(spiffe_id).map_err(|e| IssueError::Failed(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut serial);
        // Positive, and no leading zero byte (DER would drop it from the serial).
        serial[0] = (serial[0] & 0x7f) | 0x01;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
        params.not_before = now - time::Duration::minutes(1);
        let validity =
            time::Duration::try_from(validity).map_err(|e| IssueError::Failed(e.to_string()))?;
        params.not_after = now + validity;
        let not_after = SystemTime::from(params.not_after);
        let (chain_pem, signer_id) = self.with_mesh(tenant, mesh, |cas| {
            let signer = cas.trusted.last().ok_or_else(|| IssueError::NoCa {
                tenant: tenant.to_owned(),
                mesh: mesh.to_owned(),
            })?;
            let cert = params.signed_by(&key, &signer.issuer).map_err(failed)?;
            Ok((cert.pem(), signer.id.clone()))
        })?;
        self.issued.fetch_add(1, Ordering::SeqCst);
        Ok(IssuedCertificate {
            chain_pem,
            private_key_pem: Zeroizing::new(key.serialize_pem()),
            serial: hex::encode(serial),
            not_after,
            signer_id,
        })
    }
}

impl WorkloadIssuer for TestIssuer {
    fn issue<'a>(
        &'a self,
        tenant: &'a str,
        mesh: &'a str,
        spiffe_id: &'a str,
        lifetime: Duration,
    ) -> BoxFuture<'a, Result<IssuedCertificate, IssueError>> {
        Box::pin(async move { self.issue_now(tenant, mesh, spiffe_id, lifetime) })
    }

    fn trust_bundle<'a>(
        &'a self,
        tenant: &'a str,
        mesh: &'a str,
    ) -> BoxFuture<'a, Result<TrustBundle, IssueError>> {
        Box::pin(async move { self.bundle(tenant, mesh) })
    }

    fn open_certificate_key(
        &self,
        tenant: &str,
        mesh: &str,
        name: &str,
        sealed: &SealedKey,
    ) -> Result<Zeroizing<String>, IssueError> {
        switchboard_pki::open_certificate_key(
            &self.kek,
            tenant,
            mesh,
            name,
            &sealed.kek_id,
            &sealed.sealed,
        )
        .map_err(|e| IssueError::Failed(e.to_string()))
    }
}
