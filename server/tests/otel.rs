//! OpenTelemetry end to end: the real `switchboard serve` exports over OTLP/gRPC to a
//! collector in this test (a tonic `TraceService` on 127.0.0.1), a real xDS client follows
//! the mesh, and one REST write made with a `traceparent` must come back as one trace: the
//! request, the store commit, the snapshot build, the push to the client and its ACK, each
//! the parent of the next, with tenant, mesh and revision, and no secret in any attribute.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{call, start};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as OtlpValue;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use reqwest::Method as M;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_xds_proto::type_url::CLUSTER;
use switchboard_xds_server::testing::{AdsClient, node};

/// An OTLP/gRPC trace collector on 127.0.0.1 keeping every span it receives.
async fn collector(spans: Arc<Mutex<Vec<OtlpSpan>>>) -> SocketAddr {
    switchboard_runtime::collector::start(spans).await.unwrap()
}

fn text(v: &KeyValue) -> String {
    match v.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(OtlpValue::StringValue(s)) => s.clone(),
        Some(OtlpValue::IntValue(i)) => i.to_string(),
        Some(OtlpValue::BoolValue(b)) => b.to_string(),
        Some(OtlpValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &OtlpSpan, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).map(text)
}

/// Every attribute value of a span and of its events and links.
fn all_values(span: &OtlpSpan) -> Vec<String> {
    let mut out: Vec<String> = span.attributes.iter().map(text).collect();
    out.push(span.name.clone());
    for e in &span.events {
        out.push(e.name.clone());
        out.extend(e.attributes.iter().map(text));
    }
    for l in &span.links {
        out.extend(l.attributes.iter().map(text));
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rest_write_is_one_trace_from_the_request_to_the_proxys_ack() {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let otlp = collector(Arc::clone(&spans)).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = "otel-test-admin-token-0123456789";
    let endpoint = format!("http://{otlp}");
    let server = start(
        dir.path(),
        &["--admin-token", admin, "--otlp-endpoint", &endpoint],
        None,
    )
    .await;
    let c = reqwest::Client::new();
    let api = format!("{}/v1/tenants", server.rest);
    let (status, _) = call(
        &c,
        M::POST,
        &api,
        admin,
        Some(json!({"name": "acme"})),
        None,
    )
    .await;
    assert_eq!(status, 201);
    let (status, key) = call(
        &c,
        M::POST,
        &format!("{api}/acme/api-keys"),
        admin,
        Some(json!({"description": "otel"})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let key = key["secret"].as_str().unwrap().to_owned();
    let mesh = format!("{api}/acme/meshes/prod");
    let (status, _) = call(&c, M::PUT, &mesh, &key, Some(json!({"spec": {}})), None).await;
    assert_eq!(status, 200);
    let pay = format!("{mesh}/services/pay");
    let spec = |port| Some(json!({"spec": {"port": port, "protocol": "grpc"}}));
    assert_eq!(call(&c, M::PUT, &pay, &key, spec(8080), None).await.0, 200);
    let (status, proxy_token) = call(
        &c,
        M::POST,
        &format!("{api}/acme/proxy-tokens"),
        &key,
        Some(json!({"mesh": "prod"})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{proxy_token}");
    let proxy_token = proxy_token["secret"].as_str().unwrap().to_owned();

    // A real xDS client, current with the mesh.
    let mut client = AdsClient::connect(
        &server.xds_url(),
        node("acme", "prod", "otel-1"),
        Some(&proxy_token),
    )
    .await
    .unwrap();
    client.subscribe(CLUSTER, &[]).await.unwrap();
    client.recv_and_ack(&[]).await.unwrap();

    // The write, in the caller's trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let resp = c
        .put(format!("{mesh}/services/pay2"))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"spec": {"port": 9090, "protocol": "grpc"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let written: serde_json::Value = resp.json().await.unwrap();
    let revision = written["revision"].as_i64().unwrap().to_string();
    // The client gets the change and ACKs it.
    let update = client.recv().await.unwrap();
    assert_eq!(update.type_url, CLUSTER);
    client.ack(&update, &[]).await.unwrap();

    let names = [
        "request",
        "store.commit",
        "xds.snapshot_build",
        "xds.push",
        "xds.ack",
    ];
    let trace: Vec<OtlpSpan> = switchboard_runtime::eventually_within(
        Duration::from_secs(30),
        "the write's spans, through the ACK, at the collector",
        || {
            let got: Vec<OtlpSpan> = spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| hex(&s.trace_id) == trace_id)
                .cloned()
                .collect();
            let all = names.iter().all(|n| got.iter().any(|s| s.name == *n));
            std::future::ready(all.then_some(got))
        },
    )
    .await;
    let one = |name: &str| {
        let found: Vec<&OtlpSpan> = trace.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "{name} spans: {trace:#?}");
        found[0]
    };
    let (request, commit, build, push, ack) = (
        one("request"),
        one("store.commit"),
        one("xds.snapshot_build"),
        one("xds.push"),
        one("xds.ack"),
    );
    // Each step is the child of the one before; the request, of the caller's span.
    assert_eq!(hex(&request.parent_span_id), caller_span);
    assert_eq!(commit.parent_span_id, request.span_id);
    assert_eq!(build.parent_span_id, commit.span_id);
    assert_eq!(push.parent_span_id, build.span_id);
    assert_eq!(ack.parent_span_id, push.span_id);
    for s in [commit, build, push] {
        assert_eq!(attr(s, "tenant").as_deref(), Some("acme"), "{}", s.name);
        assert_eq!(attr(s, "mesh").as_deref(), Some("prod"), "{}", s.name);
        assert_eq!(
            attr(s, "revision").as_deref(),
            Some(revision.as_str()),
            "{}",
            s.name
        );
    }
    assert_eq!(attr(request, "tenant").as_deref(), Some("acme"));
    assert_eq!(attr(request, "mesh").as_deref(), Some("prod"));
    assert_eq!(attr(push, "type").as_deref(), Some("CDS"));
    assert_eq!(
        attr(push, "node").as_deref(),
        Some("tenants/acme/meshes/prod/nodes/otel-1")
    );
    assert_eq!(attr(ack, "type").as_deref(), Some("CDS"));

    // No secret in any span the process exported: not the caller's key, the admin token,
    // the proxy token, a key or a certificate.
    let everything = spans.lock().unwrap().clone();
    assert!(!everything.is_empty());
    for s in &everything {
        for v in all_values(s) {
            for secret in [key.as_str(), admin, proxy_token.as_str()] {
                assert!(!v.contains(secret), "span {} carries a secret: {v}", s.name);
            }
            for marker in ["-----BEGIN", "PRIVATE KEY", "Bearer "] {
                assert!(
                    !v.contains(marker),
                    "span {} carries {marker:?}: {v}",
                    s.name
                );
            }
        }
    }
    drop(client);
    drop(server);
}
