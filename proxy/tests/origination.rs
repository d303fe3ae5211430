//! End to end: TLS origination to a service outside the mesh. The app calls its sidecar in
//! plaintext; the sidecar (`switchboard-proxy`, configured by the real control plane) calls
//! the service's endpoint over TLS, sending the service's SNI and verifying the server's
//! certificate against the service's CA, or against the platform's roots
//! (`system_root_certs`; here the proxy's `SSL_CERT_FILE` names a bundle with the test CA).
//!
//! ```text
//! test (app) ──► sidecar :outbound ──TLS, SNI api.test──► TLS server (certificate for api.test)
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{ControlPlane, Proxy, free_port, tail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer, pki_types::pem::PemObject};

/// A TLS server on 127.0.0.1 whose certificate (for `api.test`) is signed by a fresh CA:
/// answers every HTTP/1.1 request with 200 and the SNI the client sent. Returns its port and
/// the CA's PEM.
async fn tls_server() -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["api.test".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = tcp.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let body = format!("sni={sni}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (port, ca.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecars_originate_tls_with_the_services_ca_or_the_platforms_roots() {
    let (port, ca_pem) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca-bundle.pem");
    std::fs::write(&bundle, &ca_pem).unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let token = cp.tenant(dir.path()).await;

    for (name, tls) in [
        (
            "pinned",
            json!({"sni": "api.test", "caCertificates": ca_pem}),
        ),
        ("platform", json!({"sni": "api.test"})),
        (
            "misnamed",
            json!({"sni": "other.test", "caCertificates": ca_pem}),
        ),
    ] {
        cp.put("services", name, json!({"port": 443, "tls": tls}))
            .await;
        cp.put(
            "endpoints",
            &format!("{name}-1"),
            json!({"service": name, "address": "127.0.0.1", "port": port}),
        )
        .await;
        cp.put(
            "routes",
            name,
            json!({"hostnames": [name], "rules": [{"backends": [{"service": name}]}]}),
        )
        .await;
    }
    cp.put("services", "client", json!({"port": 80})).await;
    let outbound = free_port();
    let meta = vec![
        ("role", "sidecar".to_owned()),
        ("service", "client".to_owned()),
        ("app_port", free_port().to_string()),
        ("inbound_port", free_port().to_string()),
        ("outbound_port", outbound.to_string()),
    ];
    let bundle = bundle.to_str().unwrap().to_owned();
    let sidecar = Proxy::start_env(
        &cp,
        dir.path(),
        &token,
        "client-1",
        &meta,
        &[("SSL_CERT_FILE", bundle.as_str())],
    )
    .await;
    let app = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://127.0.0.1:{outbound}")).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let get = |host: &'static str| {
        let app = app.clone();
        async move {
            match app.get(format!("http://{host}/")).send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            }
        }
    };

    // The app speaks plaintext; the server saw TLS with the service's SNI.
    for host in ["pinned", "platform"] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = get(host).await;
            if status == 200 {
                assert_eq!(body, "sni=api.test", "{host}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{host}: {status} {body}\n{}",
                tail(&sidecar.log, 3000)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A certificate that is not for the service's SNI is refused: no response from it.
    let (status, body) = get("misnamed").await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains("sni="), "{body}");
}
