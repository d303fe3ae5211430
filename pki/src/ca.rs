//! A mesh's certificate authority: generated (a self-signed root) or uploaded (a user's
//! intermediate), sealed for storage and unsealed to issue workload certificates.

use crate::info::{self, CertInfo};
use crate::kek::{Kek, ca_key_aad};
use crate::{PkiError, random_serial};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// How long a generated root is valid.
pub const ROOT_VALIDITY: time::Duration = time::Duration::days(3650);
/// How far an issued certificate's `not_before` is back-dated, for clocks running behind.
pub const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// Where a CA came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Generated,
    Uploaded,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Generated => "generated",
            Origin::Uploaded => "uploaded",
        }
    }
    pub fn parse(s: &str) -> Option<Origin> {
        match s {
            "generated" => Some(Origin::Generated),
            "uploaded" => Some(Origin::Uploaded),
            _ => None,
        }
    }
}

/// A CA that can issue: its certificate chain and its private key (in memory only).
pub struct MeshCa {
    id: String,
    origin: Origin,
    /// PEM certificates: the CA's own first, then its issuers up to the chain's end.
    chain_pem: Vec<String>,
    /// What issued certificates carry after the leaf: the CA's certificate and its issuers,
    /// except a self-signed root at the end (the peer already trusts that one).
    signer_chain_pem: String,
    info: CertInfo,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .field("subject", &self.info.subject)
            .finish_non_exhaustive()
    }
}

/// A CA as stored: everything public, and the private key sealed with a [`Kek`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCa {
    pub id: String,
    pub origin: Origin,
    /// The CA's certificate chain (PEM, the CA's own certificate first).
    pub chain_pem: String,
    /// The certificate proxies trust: the chain's last.
    pub root_pem: String,
    /// The PKCS#8 private key, sealed with the KEK `kek_id` and bound to tenant, mesh and id.
    pub sealed_key: Vec<u8>,
    pub kek_id: String,
}

/// A stored CA's parts, borrowed from wherever they were read.
#[derive(Debug, Clone, Copy)]
pub struct SealedCaRef<'a> {
    pub tenant: &'a str,
    pub mesh: &'a str,
    pub id: &'a str,
    pub origin: Origin,
    pub chain_pem: &'a str,
    pub sealed_key: &'a [u8],
    pub kek_id: &'a str,
}

/// A workload certificate with its fresh private key (which is never stored).
pub struct IssuedCertificate {
    /// The leaf, then the signer chain up to (not including) a self-signed root.
    pub chain_pem: String,
    pub private_key_pem: Zeroizing<String>,
    /// Hex, as in the certificate.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl MeshCa {
    /// A new self-signed root for `mesh` of `tenant`: ECDSA P-256, CA with path length 1,
    /// key usage keyCertSign and cRLSign, valid from `now` (back-dated by [`CLOCK_SKEW`]) for
    /// [`ROOT_VALIDITY`].
    pub fn generate(tenant: &str, mesh: &str, now: OffsetDateTime) -> Result<MeshCa, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Switchboard");
        dn.push(DnType::OrganizationalUnitName, format!("tenant {tenant}"));
        dn.push(DnType::CommonName, format!("mesh {mesh} CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ROOT_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        MeshCa::assemble(Origin::Generated, vec![cert.pem()], key)
    }

    /// Builds a CA from its chain (its own certificate first) and key, already checked to
    /// belong together.
    pub(crate) fn assemble(
        origin: Origin,
        chain_pem: Vec<String>,
        key: KeyPair,
    ) -> Result<MeshCa, PkiError> {
        let ders = chain_pem
            .iter()
            .map(|p| info::pem_to_der(p))
            .collect::<Result<Vec<_>, _>>()?;
        let first = ders
            .first()
            .ok_or_else(|| PkiError::Corrupt("empty certificate chain".into()))?;
        let info = info::describe_der(first)?;
        let mut signer = chain_pem.clone();
        if let Some(last) = ders.last()
            && info::is_self_signed(last)?
        {
            signer.pop();
        }
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(first.as_slice()), key)?;
        let id = {
            let d = ring::digest::digest(&ring::digest::SHA256, first);
            hex::encode(&d.as_ref()[..8])
        };
        Ok(MeshCa {
            id,
            origin,
            signer_chain_pem: signer.concat(),
            chain_pem,
            info,
            issuer,
        })
    }

    /// Re-creates a stored CA: opens its sealed key with `kek`.
    pub fn unseal(parts: SealedCaRef<'_>, kek: &Kek) -> Result<MeshCa, PkiError> {
        if parts.kek_id != kek.id() {
            return Err(PkiError::WrongKek {
                stored: parts.kek_id.to_owned(),
                configured: kek.id().to_owned(),
            });
        }
        let der = kek.open(
            parts.sealed_key,
            &ca_key_aad(parts.tenant, parts.mesh, parts.id),
        )?;
        let key = KeyPair::try_from(der.as_slice())
            .map_err(|_| PkiError::Corrupt("the unsealed CA key does not parse".into()))?;
        let chain = info::split_pem(parts.chain_pem)?;
        let ca = MeshCa::assemble(parts.origin, chain, key)?;
        if ca.id != parts.id {
            return Err(PkiError::Corrupt(format!(
                "stored CA {} holds the certificate of CA {}",
                parts.id, ca.id
            )));
        }
        Ok(ca)
    }

    /// The CA's parts for storage, its key sealed with `kek` for `tenant` and `mesh`.
    pub fn seal(&self, tenant: &str, mesh: &str, kek: &Kek) -> Result<SealedCa, PkiError> {
        let der = Zeroizing::new(self.issuer.key().serialize_der());
        let sealed_key = kek.seal(&der, &ca_key_aad(tenant, mesh, &self.id))?;
        Ok(SealedCa {
            id: self.id.clone(),
            origin: self.origin,
            chain_pem: self.chain_pem.concat(),
            root_pem: self.root_pem().to_owned(),
            sealed_key,
            kek_id: kek.id().to_owned(),
        })
    }

    /// Identifies this CA: a hash of its certificate (16 hex characters).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The CA's own certificate's subject, serial and validity.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// The certificate peers trust: the last of the chain.
    pub fn root_pem(&self) -> &str {
        self.chain_pem.last().map_or("", String::as_str)
    }

    /// Issues a workload certificate for `spiffe_id` (its only SAN) with a fresh P-256 key,
    /// for client and server authentication, valid from `now` (back-dated by [`CLOCK_SKEW`],
    /// never before the CA's own start) for `lifetime`, capped at the CA's own end.
    pub fn issue(
        &self,
        spiffe_id: &str,
        lifetime: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, PkiError> {
        if now >= self.info.not_after {
            return Err(PkiError::CaExpired(info::rfc3339(self.info.not_after)));
        }
        if !spiffe_id.starts_with("spiffe://") {
            return Err(PkiError::SpiffeId(format!(
                "{spiffe_id:?} does not start with spiffe://"
            )));
        }
        let uri = spiffe_id
            .to_owned()
            .try_into()
            .map_err(|_| PkiError::SpiffeId(format!("{spiffe_id:?} is not an IA5 string")))?;
        let lifetime = time::Duration::try_from(lifetime)
            .map_err(|_| PkiError::Lifetime("too long".into()))?;
        if lifetime <= time::Duration::ZERO {
            return Err(PkiError::Lifetime("must be positive".into()));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - CLOCK_SKEW).max(self.info.not_before);
        params.not_after = now.saturating_add(lifetime).min(self.info.not_after);
        let serial = random_serial()?;
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            chain_pem: format!("{}{}", cert.pem(), self.signer_chain_pem),
            private_key_pem: Zeroizing::new(key.serialize_pem()),
            serial: serial_hex,
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }
}
