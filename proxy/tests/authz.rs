//! End to end: authorization policies and caller identity between sidecars over mesh mTLS.
//! The real control plane, three sidecars (`switchboard-proxy` processes) and an app, on
//! 127.0.0.1, the mesh in `strict` mode.
//!
//! ```text
//! test as app a ──► sidecar a :outbound ──┐
//!                                         ├─ mTLS ─► sidecar b :inbound ──► app b (echoes XFCC)
//! test as app c ──► sidecar c :outbound ──┘
//! ```
//!
//! App b learns its caller's SPIFFE ID from `x-forwarded-client-cert`, set by sidecar b
//! from the verified client certificate. A deny policy from a to b, written over REST,
//! reaches sidecar b and turns a's requests into 403s naming the policy while c still gets
//! through; the test prints how long that took after the write returned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{ControlPlane, Protocol, Proxy, backend, free_port, tail};

const ID: &str = "spiffe://acme.switchboard.local/mesh/prod/service/";

fn app(outbound: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://127.0.0.1:{outbound}")).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Status, the policy header and what app b saw as its caller.
async fn call(app: &reqwest::Client) -> (u16, String, String) {
    match app.get("http://b/").send().await {
        Ok(r) => {
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let out = (
                r.status().as_u16(),
                header("x-switchboard-denied-by"),
                header("x-seen-client-cert"),
            );
            let _ = r.bytes().await;
            out
        }
        Err(e) => (0, String::new(), e.to_string()),
    }
}

fn sidecar(service: &str, app: u16, inbound: u16, outbound: u16) -> Vec<(&'static str, String)> {
    vec![
        ("role", "sidecar".to_owned()),
        ("service", service.to_owned()),
        ("app_port", app.to_string()),
        ("inbound_port", inbound.to_string()),
        ("outbound_port", outbound.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deny_policy_stops_a_and_not_c_and_b_sees_who_called() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let token = cp.tenant(dir.path()).await;
    let (s, b) = cp
        .call(
            reqwest::Method::PUT,
            "/v1/tenants/acme/meshes/prod",
            Some(json!({"spec": {"mtls": {"mode": "strict"}}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    for service in ["a", "b", "c"] {
        cp.put("services", service, json!({"protocol": "http", "port": 80}))
            .await;
    }
    cp.put(
        "routes",
        "b",
        json!({"hostnames": ["b"], "rules": [{"backends": [{"service": "b"}]}]}),
    )
    .await;

    let app_b = backend("app-b", Protocol::Http1).await;
    let _b = Proxy::start(
        &cp,
        dir.path(),
        &token,
        "b-1",
        &sidecar("b", app_b.port(), free_port(), free_port()),
    )
    .await;
    let (a_out, c_out) = (free_port(), free_port());
    let a = Proxy::start(
        &cp,
        dir.path(),
        &token,
        "a-1",
        &sidecar("a", free_port(), free_port(), a_out),
    )
    .await;
    let _c = Proxy::start(
        &cp,
        dir.path(),
        &token,
        "c-1",
        &sidecar("c", free_port(), free_port(), c_out),
    )
    .await;
    let logs = || {
        [&cp.log, &a.log]
            .iter()
            .map(|p| tail(p, 3000))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (app_a, app_c) = (app(a_out), app(c_out));

    // Until b has registered and every sidecar holds its certificate, calls fail; then both
    // get through, and app b is told who called, by sidecar b (By) from the certificate.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (name, client) in [("a", &app_a), ("c", &app_c)] {
        let seen = loop {
            let (status, _, seen) = call(client).await;
            if status == 200 {
                break seen;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never got through: {status} {seen}\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(seen.starts_with(&format!("By={ID}b;Hash=")), "{seen}");
        assert!(seen.ends_with(&format!(";URI={ID}{name}")), "{seen}");
    }
    // A caller cannot forge the header: sidecar b replaces it.
    let forged = app_a
        .get("http://b/")
        .header("x-forwarded-client-cert", format!("URI={ID}c"))
        .send()
        .await
        .unwrap();
    let seen = forged.headers()["x-seen-client-cert"].to_str().unwrap();
    assert!(seen.ends_with(&format!(";URI={ID}a")), "{seen}");

    // Deny a → b.
    cp.put(
        "authorization-policies",
        "deny-a",
        json!({"service": "b", "action": "deny", "from": [{"services": ["a"]}]}),
    )
    .await;
    let written = Instant::now();
    let applied = loop {
        let (status, denied_by, _) = call(&app_a).await;
        if status == 403 {
            assert_eq!(denied_by, "deny-a", "the 403 names the policy");
            break written.elapsed();
        }
        assert_eq!(status, 200, "{}", logs());
        assert!(
            written.elapsed() < Duration::from_secs(10),
            "the policy never applied\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "deny policy applied {} ms after the REST write returned",
        applied.as_millis()
    );
    for _ in 0..5 {
        assert_eq!(call(&app_a).await.0, 403);
        let (status, denied_by, seen) = call(&app_c).await;
        assert_eq!(
            (status, denied_by.as_str()),
            (200, ""),
            "c still gets through"
        );
        assert!(seen.ends_with(&format!(";URI={ID}c")), "{seen}");
    }

    // Deleting the policy lets a back in.
    let (s, body) = cp
        .call(
            reqwest::Method::DELETE,
            "/v1/tenants/acme/meshes/prod/authorization-policies/deny-a",
            None,
        )
        .await;
    assert!(s == 200 || s == 204, "{s} {body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&app_a).await.0 != 200 {
        assert!(Instant::now() < deadline, "a never got back in\n{}", logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
