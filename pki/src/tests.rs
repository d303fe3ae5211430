//! Tests of generation, issuance, sealing and upload validation. Bad uploads are built with
//! rcgen; the RSA fixtures in `tests/fixtures` were made once with `openssl req -x509`.

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::time::Duration;
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn kek(b: u8) -> Kek {
    Kek::parse(&hex::encode([b; 32])).unwrap()
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| p.unwrap().contents)
        .collect()
}

/// Verifies `chain_pem` (leaf first) against `root_pem` at `at`, for client and server use.
fn verify(chain_pem: &str, root_pem: &str, at: OffsetDateTime) -> Result<(), webpki::Error> {
    let chain = ders(chain_pem);
    let root = CertificateDer::from(ders(root_pem).remove(0));
    let anchors = [webpki::anchor_from_trusted_cert(&root).unwrap().to_owned()];
    let leaf = CertificateDer::from(chain[0].clone());
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let inter: Vec<CertificateDer> = chain[1..]
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let t = UnixTime::since_unix_epoch(Duration::from_secs(at.unix_timestamp() as u64));
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &inter,
            t,
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

const SPIFFE: &str = "spiffe://acme.switchboard.local/mesh/prod/service/pay";

#[test]
fn generated_root_is_a_constrained_ca_naming_tenant_and_mesh() {
    let ca = MeshCa::generate("acme", "prod", now()).unwrap();
    assert_eq!(ca.origin(), Origin::Generated);
    let der = ders(ca.root_pem()).remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let subject = cert.subject().to_string();
    assert!(
        subject.contains("tenant acme") && subject.contains("mesh prod"),
        "{subject}"
    );
    assert_eq!(cert.subject(), cert.issuer());
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(1));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    assert_eq!(ca.info().not_after, now() + ROOT_VALIDITY);
    assert_eq!(ca.info().not_before, now() - CLOCK_SKEW);
    assert_eq!(ca.id().len(), 16);
    // Each generated CA is its own.
    assert_ne!(
        MeshCa::generate("acme", "prod", now()).unwrap().id(),
        ca.id()
    );
}

#[test]
fn issued_certificate_carries_only_the_spiffe_id_and_verifies_against_the_root() {
    let ca = MeshCa::generate("acme", "prod", now()).unwrap();
    let at = now() + time::Duration::hours(1);
    let issued = ca
        .issue(SPIFFE, Duration::from_secs(24 * 3600), at)
        .unwrap();
    assert!(
        issued
            .private_key_pem
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert_eq!(
        ders(&issued.chain_pem).len(),
        1,
        "a generated root is not sent"
    );
    assert_eq!(issued.not_before, at - CLOCK_SKEW);
    assert_eq!(issued.not_after, at + time::Duration::hours(24));
    let der = ders(&issued.chain_pem).remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(hex::encode(cert.raw_serial()), issued.serial);
    assert_eq!(cert.validity().not_before.to_datetime(), issued.not_before);
    assert!(!cert.is_ca());
    let mut sans = vec![];
    let mut eku = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                assert!(ext.critical, "an empty subject makes the SAN critical");
                sans.extend(san.general_names.iter().map(|n| format!("{n:?}")));
                assert!(matches!(san.general_names[..], [GeneralName::URI(u)] if u == SPIFFE));
            }
            ParsedExtension::ExtendedKeyUsage(e) => eku = Some((e.server_auth, e.client_auth)),
            _ => {}
        }
    }
    assert_eq!(sans.len(), 1);
    assert_eq!(eku, Some((true, true)));
    verify(&issued.chain_pem, ca.root_pem(), at).unwrap();
    // Another CA's root does not vouch for it.
    let other = MeshCa::generate("acme", "prod", now()).unwrap();
    assert!(verify(&issued.chain_pem, other.root_pem(), at).is_err());
    // A fresh key each time.
    let again = ca.issue(SPIFFE, Duration::from_secs(3600), at).unwrap();
    assert_ne!(*again.private_key_pem, *issued.private_key_pem);
    assert_ne!(again.serial, issued.serial);
}

#[test]
fn validity_stays_inside_the_cas_own() {
    let ca = MeshCa::generate("acme", "prod", now()).unwrap();
    // Issued right at the CA's start: not back-dated before it.
    let early = ca.issue(SPIFFE, Duration::from_secs(3600), now()).unwrap();
    assert_eq!(early.not_before, ca.info().not_before);
    // Near the CA's end: capped.
    let late = ca.info().not_after - time::Duration::hours(1);
    let capped = ca.issue(SPIFFE, Duration::from_secs(86400), late).unwrap();
    assert_eq!(capped.not_after, ca.info().not_after);
    assert!(matches!(
        ca.issue(SPIFFE, Duration::from_secs(60), ca.info().not_after),
        Err(PkiError::CaExpired(_))
    ));
    assert!(matches!(
        ca.issue("https://x", Duration::from_secs(60), now()),
        Err(PkiError::SpiffeId(_))
    ));
    assert!(matches!(
        ca.issue(SPIFFE, Duration::ZERO, now()),
        Err(PkiError::Lifetime(_))
    ));
}

#[test]
fn sealed_cas_unseal_only_with_their_key_and_binding() {
    let ca = MeshCa::generate("acme", "prod", now()).unwrap();
    let k = kek(1);
    let sealed = ca.seal("acme", "prod", &k).unwrap();
    assert_eq!(sealed.kek_id, k.id());
    assert_eq!(sealed.root_pem, ca.root_pem());
    let parts = |tenant: &'static str, mesh: &'static str, s: &SealedCa| {
        let s = s.clone();
        move |kek: &Kek| {
            MeshCa::unseal(
                SealedCaRef {
                    tenant,
                    mesh,
                    id: &s.id,
                    origin: s.origin,
                    chain_pem: &s.chain_pem,
                    sealed_key: &s.sealed_key,
                    kek_id: &s.kek_id,
                },
                kek,
            )
        }
    };
    let back = parts("acme", "prod", &sealed)(&k).unwrap();
    assert_eq!(back.id(), ca.id());
    let issued = back
        .issue(SPIFFE, Duration::from_secs(3600), now())
        .unwrap();
    verify(&issued.chain_pem, ca.root_pem(), now()).unwrap();
    assert!(matches!(
        parts("acme", "prod", &sealed)(&kek(2)),
        Err(PkiError::WrongKek { .. })
    ));
    assert!(matches!(
        parts("acme", "staging", &sealed)(&k),
        Err(PkiError::Kek(KekError::Open))
    ));
    assert!(matches!(
        parts("other", "prod", &sealed)(&k),
        Err(PkiError::Kek(KekError::Open))
    ));
    let mut tampered = sealed.clone();
    let n = tampered.sealed_key.len();
    tampered.sealed_key[n - 1] ^= 1;
    assert!(matches!(
        parts("acme", "prod", &tampered)(&k),
        Err(PkiError::Kek(KekError::Open))
    ));
}

/// A root and an intermediate CA signed by it (P-256 unless `alg` says otherwise).
struct Upload {
    root_pem: String,
    chain_pem: String,
    key_pem: String,
}

fn ca_params(cn: &str, from: OffsetDateTime, to: OffsetDateTime, ca: bool) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = if ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = from;
    p.not_after = to;
    p
}

fn upload_with(
    alg: &'static rcgen::SignatureAlgorithm,
    from: OffsetDateTime,
    to: OffsetDateTime,
    ca: bool,
) -> Upload {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params(
        "test root",
        now() - time::Duration::days(30),
        now() + time::Duration::days(3650),
        true,
    );
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let key = KeyPair::generate_for(alg).unwrap();
    let inter = ca_params("test intermediate", from, to, ca)
        .signed_by(&key, &issuer)
        .unwrap();
    Upload {
        root_pem: root.pem(),
        chain_pem: format!("{}{}", inter.pem(), root.pem()),
        key_pem: key.serialize_pem(),
    }
}

fn upload() -> Upload {
    upload_with(
        &PKCS_ECDSA_P256_SHA256,
        now() - time::Duration::days(1),
        now() + time::Duration::days(365),
        true,
    )
}

fn rejected(chain: &str, key: &str) -> UploadError {
    let e = validate_upload(chain, key, now()).unwrap_err();
    let text = e.to_string();
    assert!(
        !text.contains("PRIVATE KEY-----") && !text.contains("MII"),
        "{text}"
    );
    e
}

#[test]
fn an_intermediate_is_accepted_and_issues_with_its_chain() {
    let u = upload();
    let ca = validate_upload(&u.chain_pem, &u.key_pem, now()).unwrap();
    assert_eq!(ca.origin(), Origin::Uploaded);
    assert_eq!(ca.root_pem(), u.root_pem);
    assert!(ca.info().subject.contains("test intermediate"));
    let issued = ca.issue(SPIFFE, Duration::from_secs(3600), now()).unwrap();
    assert_eq!(
        ders(&issued.chain_pem).len(),
        2,
        "leaf and intermediate, no root"
    );
    verify(&issued.chain_pem, &u.root_pem, now()).unwrap();
    // It survives sealing.
    let k = kek(3);
    let s = ca.seal("acme", "prod", &k).unwrap();
    assert_eq!(s.origin, Origin::Uploaded);
    let back = MeshCa::unseal(
        SealedCaRef {
            tenant: "acme",
            mesh: "prod",
            id: &s.id,
            origin: s.origin,
            chain_pem: &s.chain_pem,
            sealed_key: &s.sealed_key,
            kek_id: &s.kek_id,
        },
        &k,
    )
    .unwrap();
    let issued = back
        .issue(SPIFFE, Duration::from_secs(3600), now())
        .unwrap();
    verify(&issued.chain_pem, &u.root_pem, now()).unwrap();
}

#[test]
fn p384_and_rsa_2048_are_accepted() {
    let u = upload_with(
        &PKCS_ECDSA_P384_SHA384,
        now() - time::Duration::days(1),
        now() + time::Duration::days(365),
        true,
    );
    validate_upload(&u.chain_pem, &u.key_pem, now()).unwrap();
    let chain = include_str!("../tests/fixtures/rsa2048.crt");
    let key = include_str!("../tests/fixtures/rsa2048.key");
    let ca = validate_upload(chain, key, now()).unwrap();
    let issued = ca.issue(SPIFFE, Duration::from_secs(3600), now()).unwrap();
    verify(&issued.chain_pem, chain, now()).unwrap();
}

#[test]
fn malformed_pem_names_the_field() {
    let u = upload();
    for chain in [
        "",
        "not pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        let e = rejected(chain, &u.key_pem);
        assert!(
            matches!(e, UploadError::MalformedChain(_)),
            "{chain:?}: {e}"
        );
        assert_eq!(e.field(), CHAIN_FIELD);
    }
    // A key pasted into the chain is refused without quoting it.
    let e = rejected(&format!("{}{}", u.chain_pem, u.key_pem), &u.key_pem);
    assert!(e.to_string().contains("not a CERTIFICATE"), "{e}");
    for key in [
        "",
        "garbage",
        &u.chain_pem,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ] {
        let e = rejected(&u.chain_pem, key);
        assert_eq!(e, UploadError::MalformedKey);
        assert_eq!(e.field(), KEY_FIELD);
    }
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let u = upload();
    let e = rejected(&u.chain_pem, &upload().key_pem);
    assert_eq!(e, UploadError::KeyMismatch);
    assert_eq!(e.field(), KEY_FIELD);
}

#[test]
fn expired_and_not_yet_valid_are_refused() {
    let u = upload_with(
        &PKCS_ECDSA_P256_SHA256,
        now() - time::Duration::days(30),
        now() - time::Duration::days(1),
        true,
    );
    let e = rejected(&u.chain_pem, &u.key_pem);
    assert!(matches!(e, UploadError::Expired { index: 1, .. }), "{e}");
    assert!(e.to_string().contains("expired at"), "{e}");
    let u = upload_with(
        &PKCS_ECDSA_P256_SHA256,
        now() + time::Duration::days(1),
        now() + time::Duration::days(30),
        true,
    );
    let e = rejected(&u.chain_pem, &u.key_pem);
    assert!(
        matches!(e, UploadError::NotYetValid { index: 1, .. }),
        "{e}"
    );
    assert_eq!(e.field(), CHAIN_FIELD);
}

#[test]
fn a_certificate_without_ca_true_is_refused() {
    let u = upload_with(
        &PKCS_ECDSA_P256_SHA256,
        now() - time::Duration::days(1),
        now() + time::Duration::days(30),
        false,
    );
    let e = rejected(&u.chain_pem, &u.key_pem);
    assert!(matches!(e, UploadError::NotCa(_)), "{e}");
    assert!(e.to_string().contains("CA:true"));
    assert_eq!(e.field(), CHAIN_FIELD);
}

#[test]
fn long_and_broken_chains_are_refused() {
    let u = upload();
    let root = u.root_pem.clone();
    let long = format!("{}{}", u.chain_pem, root.repeat(4));
    let e = rejected(&long, &u.key_pem);
    assert_eq!(e, UploadError::ChainTooLong(6));
    assert_eq!(e.field(), CHAIN_FIELD);
    // The intermediate followed by a root that did not sign it.
    let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let other = ca_params("another root", now(), now() + time::Duration::days(9), true)
        .self_signed(&other_key)
        .unwrap();
    let first = u.chain_pem.replace(&root, "");
    let e = rejected(&format!("{first}{}", other.pem()), &u.key_pem);
    assert_eq!(e, UploadError::BrokenChain(1));
}

#[test]
fn rsa_under_2048_bits_is_refused() {
    let chain = include_str!("../tests/fixtures/rsa1024.crt");
    let key = include_str!("../tests/fixtures/rsa1024.key");
    let e = rejected(chain, key);
    assert_eq!(e, UploadError::WeakRsa(1024));
    assert_eq!(e.field(), KEY_FIELD);
}

#[test]
fn describe_reads_subject_serial_and_validity() {
    let ca = MeshCa::generate("acme", "prod", now()).unwrap();
    let info = describe(ca.root_pem()).unwrap();
    assert_eq!(&info, ca.info());
    assert_eq!(info.serial.len(), 32);
    assert!(describe("nothing").is_err());
}

/// A server certificate for `names` signed by a fresh root: (chain PEM, key PEM).
fn serving(names: &[&str], from: OffsetDateTime, to: OffsetDateTime) -> (String, String) {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params("web root", from, to, true);
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.not_before = from;
    p.not_after = to;
    let leaf = p.signed_by(&key, &issuer).unwrap();
    (format!("{}{}", leaf.pem(), root.pem()), key.serialize_pem())
}

#[test]
fn a_gateway_certificate_is_described_and_its_key_sealed_to_its_name() {
    let (chain, key) = serving(
        &["Shop.example.com", "*.shop.example.com"],
        now() - time::Duration::days(1),
        now() + time::Duration::days(90),
    );
    let c = validate_certificate(&chain, &key, now()).unwrap();
    assert_eq!(c.dns_names, ["shop.example.com", "*.shop.example.com"]);
    assert_eq!(c.fingerprint.len(), 64);
    assert_eq!(ders(&c.chain_pem).len(), 2);
    assert!(!format!("{c:?}").contains("PRIVATE"));
    let k = kek(1);
    let (id, sealed) = seal_certificate_key(&k, "acme", "prod", "shop", &c.key_pem).unwrap();
    assert!(!sealed.contains(&c.key_pem[40..50]));
    let opened = open_certificate_key(&k, "acme", "prod", "shop", &id, &sealed).unwrap();
    assert_eq!(opened.as_str(), c.key_pem.as_str());
    // Bound to its name, and to the key it was sealed with.
    assert!(open_certificate_key(&k, "acme", "prod", "other", &id, &sealed).is_err());
    assert!(open_certificate_key(&k, "evil", "prod", "shop", &id, &sealed).is_err());
    assert!(matches!(
        open_certificate_key(&kek(2), "acme", "prod", "shop", &id, &sealed),
        Err(OpenKeyError::WrongKek { .. })
    ));
}

#[test]
fn a_bad_gateway_certificate_names_its_field() {
    let valid = || {
        serving(
            &["a.example.com"],
            now() - time::Duration::days(1),
            now() + time::Duration::days(90),
        )
    };
    let (chain, key) = valid();
    let (_, other_key) = valid();
    let check = |chain: &str, key: &str, field: &str| {
        let e = validate_certificate(chain, key, now()).unwrap_err();
        assert_eq!(e.field(), field, "{e}");
        assert!(!e.to_string().contains("MII"), "{e}");
        e
    };
    check("not pem", &key, CHAIN_FIELD);
    check(&chain, "not a key", KEY_FIELD);
    assert_eq!(
        check(&chain, &other_key, KEY_FIELD),
        UploadError::KeyMismatch
    );
    let (old, old_key) = serving(
        &["a.example.com"],
        now() - time::Duration::days(30),
        now() - time::Duration::days(1),
    );
    assert!(matches!(
        check(&old, &old_key, CHAIN_FIELD),
        UploadError::Expired { .. }
    ));
    let (future, future_key) = serving(
        &["a.example.com"],
        now() + time::Duration::days(1),
        now() + time::Duration::days(30),
    );
    assert!(matches!(
        check(&future, &future_key, CHAIN_FIELD),
        UploadError::NotYetValid { .. }
    ));
    let weak = check(
        include_str!("../tests/fixtures/rsa1024.crt"),
        include_str!("../tests/fixtures/rsa1024.key"),
        KEY_FIELD,
    );
    assert!(matches!(weak, UploadError::WeakRsa(1024)), "{weak}");
    // A CA certificate is not refused as a server certificate, and RSA 2048 is accepted.
    validate_certificate(
        include_str!("../tests/fixtures/rsa2048.crt"),
        include_str!("../tests/fixtures/rsa2048.key"),
        now(),
    )
    .unwrap();
}
