//! TLS termination on gateways with uploaded certificates, chosen by SNI.

use serde_json::json;
use switchboard_model::spec::CertificateSpec;
use switchboard_translator::names;
use switchboard_translator::pb::envoy::config::core::v3::transport_socket;
use switchboard_translator::pb::envoy::config::listener::v3::Listener;
use switchboard_translator::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;

use crate::common::*;

fn certificate(dns: &[&str]) -> CertificateSpec {
    spec(
        json!({"certificateChain": "CHAIN", "privateKey": {"kekId": "k", "sealed": "S"},
                "dnsNames": dns}),
    )
}

fn with_certificates(mut m: Mesh) -> Mesh {
    let c = &mut m.config.certificates;
    c.insert(
        "shop".into(),
        certificate(&["shop.example.com", "*.shop.example.com"]),
    );
    c.insert(
        "blog".into(),
        certificate(&["blog.example.com", "shop.example.com"]),
    );
    c.insert("bare".into(), certificate(&[]));
    m
}

/// Each chain's (server_names, secret, ALPN).
fn chains(l: &Listener) -> Vec<(Vec<String>, String, Vec<String>)> {
    l.filter_chains
        .iter()
        .map(|c| {
            let names = c
                .filter_chain_match
                .as_ref()
                .map(|m| m.server_names.clone())
                .unwrap_or_default();
            let socket = c.transport_socket.as_ref().unwrap();
            assert_eq!(socket.name, names::TLS_TRANSPORT_SOCKET);
            let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
                panic!("no typed config");
            };
            let ctx: DownstreamTlsContext = unpack(
                any,
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            );
            let common = ctx.common_tls_context.unwrap();
            let sds = &common.tls_certificate_sds_secret_configs;
            assert_eq!(sds.len(), 1);
            assert!(sds[0].sds_config.is_some(), "over ADS");
            assert_eq!(c.filters.len(), 1);
            (names, sds[0].name.clone(), common.alpn_protocols)
        })
        .collect()
}

#[test]
fn one_filter_chain_per_certificate_by_sni_and_a_default() {
    let m = with_certificates(
        base()
            .route_to("web", &["shop.example.com"], "a")
            .gateway(
                "edge",
                json!({"port": 8443, "routes": ["web"], "tls": {"certificates": ["shop", "blog"]}}),
            )
            .gateway(
                "db",
                json!({"port": 5433, "protocol": "tcp", "service": "a",
                       "tls": {"certificates": ["shop", "bare"]}}),
            ),
    );
    let res = m.translate();
    let edge = listener(&res, "gateway/edge");
    assert_eq!(edge.listener_filters.len(), 1);
    assert_eq!(edge.listener_filters[0].name, names::TLS_INSPECTOR);
    let h = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        chains(&edge),
        [
            (
                h(&["shop.example.com", "*.shop.example.com"]),
                "certificate/shop".to_owned(),
                h(&["h2", "http/1.1"])
            ),
            // shop.example.com stays with the first certificate listed.
            (
                h(&["blog.example.com"]),
                "certificate/blog".to_owned(),
                h(&["h2", "http/1.1"])
            ),
            // No certificate without DNS names: the first listed is the default.
            (
                vec![],
                "certificate/shop".to_owned(),
                h(&["h2", "http/1.1"])
            ),
        ]
    );
    assert!(
        res.warnings
            .iter()
            .any(|w| w.contains("blog") && w.contains("shares")),
        "{:?}",
        res.warnings
    );
    // The HTTP filter chain is the one a plaintext gateway has.
    assert_eq!(
        filter_names(&chain_hcm(&edge)),
        ["envoy.filters.http.router"]
    );
    // TCP: no ALPN, and the certificate without DNS names is the default.
    let db = listener(&res, "gateway/db");
    assert_eq!(
        chains(&db),
        [
            (
                h(&["shop.example.com", "*.shop.example.com"]),
                "certificate/shop".to_owned(),
                vec![]
            ),
            (vec![], "certificate/bare".to_owned(), vec![]),
        ]
    );
}

#[test]
fn certificate_changes_reach_the_gateways_naming_them() {
    use switchboard_translator::{Change, Translator};
    let m = with_certificates(base().route_to("web", &["shop.example.com"], "a").gateway(
        "edge",
        json!({"port": 8443, "routes": ["web"], "tls": {"certificates": ["shop", "blog"]}}),
    ));
    let mut t = Translator::new(m.config.clone());
    let before = t.resources().listeners["gateway/edge"].clone();
    // A certificate no gateway names: nothing changes.
    t.apply([Change::Certificate(
        "bare".into(),
        Some(certificate(&["x.example.com"])),
    )]);
    assert!(std::sync::Arc::ptr_eq(
        &before,
        &t.resources().listeners["gateway/edge"]
    ));
    t.apply([Change::Certificate(
        "blog".into(),
        Some(certificate(&["news.example.com"])),
    )]);
    let after = listener(t.resources(), "gateway/edge");
    assert_eq!(chains(&after)[1].0, ["news.example.com"]);
    // Every certificate gone: the gateway is not served (the store prevents this; the
    // translator still never serves TLS without a certificate).
    t.apply([
        Change::Certificate("blog".into(), None),
        Change::Certificate("shop".into(), None),
    ]);
    assert!(!t.resources().listeners.contains_key("gateway/edge"));
    assert!(
        t.resources()
            .warnings
            .iter()
            .any(|w| w.contains("none of its certificates"))
    );
}

#[test]
fn a_gateway_without_tls_is_unchanged_by_certificates() {
    let plain = base()
        .route_to("web", &["shop.example.com"], "a")
        .gateway("edge", json!({"port": 8080, "routes": ["web"]}));
    let a = plain.translate();
    let b = with_certificates(plain).translate();
    assert_eq!(a.listeners["gateway/edge"], b.listeners["gateway/edge"]);
    assert!(listener(&a, "gateway/edge").listener_filters.is_empty());
}
