//! End to end: a gateway (`switchboard-proxy` with `role=gateway`) configured by the real
//! control plane terminates TLS with two uploaded certificates (the `certificates` kind),
//! chosen by SNI, in front of a real HTTP/1.1 backend. A rustls client checks which
//! certificate it got per server name, and that a replaced certificate reaches new
//! connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{ControlPlane, Protocol, Proxy, backend, free_port, tail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};

/// A CA, and server certificates it signs.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`: (chain PEM, key PEM, leaf DER).
    fn server(&self, names: &[&str]) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
        (
            format!("{}{}", leaf.pem(), self.cert.pem()),
            key.serialize_pem(),
            leaf.der().to_vec(),
        )
    }
}

/// Connects to `port` with `sni`, sends a GET for `sni`, and returns the leaf certificate the
/// gateway presented and the response's first line.
async fn fetch(roots: &RootCertStore, port: u16, sni: &str) -> (Vec<u8>, String) {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    let leaf: CertificateDer<'_> = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.ok();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.lines().next().unwrap_or_default().to_owned();
    (leaf.to_vec(), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_the_certificate_each_sni_names() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let token = cp.tenant(dir.path()).await;
    let web = backend("web", Protocol::Http1).await;
    cp.put("services", "web", json!({"protocol": "http", "port": 80}))
        .await;
    cp.put(
        "endpoints",
        "web-1",
        json!({"service": "web", "address": "127.0.0.1", "port": web.port()}),
    )
    .await;
    cp.put(
        "routes",
        "web",
        json!({"hostnames": ["shop.example.com", "blog.example.com"],
               "rules": [{"backends": [{"service": "web"}]}]}),
    )
    .await;
    let ca = Ca::new();
    let (shop_chain, shop_key, shop_der) = ca.server(&["shop.example.com"]);
    let (blog_chain, blog_key, blog_der) = ca.server(&["blog.example.com", "*.blog.example.com"]);
    cp.put(
        "certificates",
        "shop",
        json!({"certificateChain": shop_chain, "privateKey": shop_key}),
    )
    .await;
    cp.put(
        "certificates",
        "blog",
        json!({"certificateChain": blog_chain, "privateKey": blog_key}),
    )
    .await;
    let port = free_port();
    cp.put(
        "gateways",
        "edge",
        json!({"port": port, "routes": ["web"], "tls": {"certificates": ["shop", "blog"]}}),
    )
    .await;
    // Ready only once the listener is warm: its certificates arrived over SDS.
    let gateway = Proxy::start(
        &cp,
        dir.path(),
        &token,
        "edge-1",
        &[
            ("role", "gateway".to_owned()),
            ("gateway", "edge".to_owned()),
        ],
    )
    .await;
    let logs = || format!("{}\n{}", tail(&cp.log, 3000), tail(&gateway.log, 3000));
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();

    // Each name gets its certificate; a name neither has gets the default (the first listed).
    let (leaf, status) = fetch(&roots, port, "shop.example.com").await;
    assert!(
        leaf == shop_der,
        "shop.example.com got another certificate\n{}",
        logs()
    );
    assert!(status.contains("200"), "{status}\n{}", logs());
    let (leaf, status) = fetch(&roots, port, "blog.example.com").await;
    assert!(
        leaf == blog_der,
        "blog.example.com got another certificate\n{}",
        logs()
    );
    assert!(status.contains("200"), "{status}");
    let (leaf, _) = fetch(&roots, port, "www.blog.example.com").await;
    assert!(leaf == blog_der, "the wildcard chooses blog's certificate");

    // A replaced certificate reaches new connections.
    let (new_chain, new_key, new_der) = ca.server(&["shop.example.com"]);
    cp.put(
        "certificates",
        "shop",
        json!({"certificateChain": new_chain, "privateKey": new_key}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (leaf, _) = fetch(&roots, port, "shop.example.com").await;
        if leaf == new_der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate never arrived\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The gateway's logs and the control plane's never show a key.
    assert!(!logs().contains("PRIVATE KEY"));
}
