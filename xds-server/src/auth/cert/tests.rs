use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use switchboard_pki::MeshCa;
use switchboard_translator::SidecarParams;
use time::OffsetDateTime;

const TD: &str = "switchboard.local";

fn node(tenant: &str, mesh: &str) -> NodeId {
    NodeId::parse(&format!("tenants/{tenant}/meshes/{mesh}/nodes/n")).unwrap()
}

fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn bundle(roots: &[&MeshCa]) -> TrustBundle {
    TrustBundle {
        signer_id: roots[0].id().to_owned(),
        roots_pem: roots.iter().map(|c| c.root_pem().to_owned()).collect(),
    }
}

fn ca(tenant: &str, mesh: &str) -> MeshCa {
    MeshCa::generate(tenant, mesh, OffsetDateTime::now_utc()).unwrap()
}

/// A certificate of `service` in acme/`mesh` from `ca`, valid for an hour from `at`.
fn issue(
    ca: &MeshCa,
    mesh: &str,
    service: &str,
    at: OffsetDateTime,
) -> Vec<CertificateDer<'static>> {
    let id = switchboard_model::identity::spiffe_id("acme", TD, mesh, service);
    let issued = ca
        .issue(&id, std::time::Duration::from_secs(3600), at)
        .unwrap();
    chain(&issued.chain_pem)
}

fn check(
    chain: &[CertificateDer<'static>],
    trusted: &TrustBundle,
    node: &NodeId,
) -> Result<Leaf, AuthError> {
    let anchors = RootsCache::default().anchors(trusted);
    let leaf = Leaf::parse(&chain[0])?;
    verify(chain, leaf, &anchors, node, TD, SystemTime::now())
}

#[test]
fn a_certificate_of_the_mesh_ca_authenticates_as_its_service() {
    let prod = ca("acme", "prod");
    let cert = issue(&prod, "prod", "pay", OffsetDateTime::now_utc());
    let leaf = check(&cert, &bundle(&[&prod]), &node("acme", "prod")).unwrap();
    assert_eq!(leaf.identity.service, "pay");
    assert_eq!(leaf.identity.mesh, "prod");
    assert!(leaf.expires() > SystemTime::now());
    assert!(leaf.expires() <= SystemTime::now() + Duration::from_secs(3600));
}

#[test]
fn during_a_rotation_both_roots_are_trusted() {
    let (old, new) = (ca("acme", "prod"), ca("acme", "prod"));
    let now = OffsetDateTime::now_utc();
    let both = bundle(&[&new, &old]);
    for signer in [&old, &new] {
        let cert = issue(signer, "prod", "pay", now);
        assert!(check(&cert, &both, &node("acme", "prod")).is_ok());
    }
    // Once the old root is gone, its certificates no longer authenticate.
    let cert = issue(&old, "prod", "pay", now);
    let err = check(&cert, &bundle(&[&new]), &node("acme", "prod")).unwrap_err();
    assert_eq!(err.status().code(), tonic::Code::Unauthenticated, "{err}");
}

#[test]
fn a_certificate_of_another_ca_is_unauthenticated() {
    let (prod, other) = (ca("acme", "prod"), ca("globex", "prod"));
    let cert = issue(&other, "prod", "pay", OffsetDateTime::now_utc());
    let err = check(&cert, &bundle(&[&prod]), &node("acme", "prod")).unwrap_err();
    let status = err.status();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status
            .message()
            .contains("not issued by the CA of mesh \"prod\""),
        "{status:?}"
    );
    assert!(!status.message().contains("BEGIN"), "no PEM in messages");
}

#[test]
fn an_expired_certificate_is_unauthenticated_and_says_so() {
    let prod = ca("acme", "prod");
    let two_hours_ago = OffsetDateTime::now_utc() - time::Duration::hours(2);
    let cert = issue(&prod, "prod", "pay", two_hours_ago);
    let err = check(&cert, &bundle(&[&prod]), &node("acme", "prod")).unwrap_err();
    assert!(
        matches!(err, AuthError::Certificate(CertError::Expired { .. })),
        "{err}"
    );
    assert_eq!(err.status().code(), tonic::Code::Unauthenticated);
    let leaf = Leaf::parse(&cert[0]).unwrap();
    let before = SystemTime::now() - Duration::from_secs(3 * 3600);
    assert!(matches!(
        leaf.check_time(before),
        Err(CertError::NotYetValid { .. })
    ));
}

#[test]
fn a_trusted_certificate_of_another_mesh_is_denied() {
    // The same CA (say, one uploaded intermediate) serving two meshes: authentic, but not
    // for this node's mesh.
    let shared = ca("acme", "prod");
    let cert = issue(&shared, "dev", "pay", OffsetDateTime::now_utc());
    let err = check(&cert, &bundle(&[&shared]), &node("acme", "prod")).unwrap_err();
    assert!(matches!(err, AuthError::IdentityMismatch { .. }), "{err}");
    assert_eq!(err.status().code(), tonic::Code::PermissionDenied);
    assert!(
        err.to_string()
            .contains("spiffe://acme.switchboard.local/mesh/dev/service/pay")
    );
}

/// A rcgen CA and a leaf it signs with `sans` and `ekus`.
fn rcgen_pair(
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
) -> (TrustBundle, Vec<CertificateDer<'static>>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = sans;
    leaf.extended_key_usages = ekus;
    let leaf = leaf
        .signed_by(&KeyPair::generate().unwrap(), &issuer)
        .unwrap();
    let trusted = TrustBundle {
        signer_id: "x".to_owned(),
        roots_pem: vec![issuer.pem()],
    };
    (trusted, vec![leaf.der().clone()])
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.to_owned().try_into().unwrap())
}

fn spiffe() -> SanType {
    uri("spiffe://acme.switchboard.local/mesh/prod/service/pay")
}

#[test]
fn client_auth_usage_is_required() {
    let (trusted, cert) = rcgen_pair(vec![spiffe()], vec![ExtendedKeyUsagePurpose::ClientAuth]);
    assert!(check(&cert, &trusted, &node("acme", "prod")).is_ok());
    for ekus in [vec![ExtendedKeyUsagePurpose::ServerAuth], vec![]] {
        let (trusted, cert) = rcgen_pair(vec![spiffe()], ekus);
        let err = check(&cert, &trusted, &node("acme", "prod")).unwrap_err();
        assert!(
            matches!(err, AuthError::Certificate(CertError::Untrusted { .. })),
            "{err}"
        );
    }
}

#[test]
fn a_certificate_needs_exactly_one_workload_uri() {
    let dns = SanType::DnsName("pay.example".to_owned().try_into().unwrap());
    let other = uri("spiffe://acme.switchboard.local/mesh/prod/service/x");
    let not_workload = uri("spiffe://acme.switchboard.local/ns/a");
    for sans in [vec![], vec![dns], vec![spiffe(), other], vec![not_workload]] {
        let (_, cert) = rcgen_pair(sans, vec![ExtendedKeyUsagePurpose::ClientAuth]);
        assert_eq!(Leaf::parse(&cert[0]), Err(CertError::NoIdentity));
    }
    assert_eq!(Leaf::parse(b"not a certificate"), Err(CertError::Malformed));
}

#[test]
fn the_roots_cache_parses_a_bundle_once() {
    let prod = ca("acme", "prod");
    let cache = RootsCache::default();
    let a = cache.anchors(&bundle(&[&prod]));
    let b = cache.anchors(&bundle(&[&prod]));
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.len(), 1);
    let broken = TrustBundle {
        signer_id: "s".to_owned(),
        roots_pem: vec![
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
        ],
    };
    assert!(cache.anchors(&broken).is_empty());
}

#[test]
fn a_certificate_may_claim_only_its_service() {
    let id = WorkloadId::parse("spiffe://acme.switchboard.local/mesh/prod/service/pay").unwrap();
    let sidecar = |service: &str| {
        NodeRole::Sidecar(SidecarParams {
            service: service.to_owned(),
            inbound_port: 15006,
            app_port: 8080,
            outbound_port: 15001,
        })
    };
    assert_eq!(check_claim(&id, &sidecar("pay")), Ok(()));
    assert_eq!(check_claim(&id, &NodeRole::Proxyless), Ok(()));
    let gw = NodeRole::Gateway {
        name: "pay".to_owned(),
    };
    assert_eq!(check_claim(&id, &gw), Ok(()));
    let err = check_claim(&id, &sidecar("billing")).unwrap_err();
    let status = err.status();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("\"pay\"") && status.message().contains("\"billing\""),
        "names both: {status:?}"
    );
}
