//! The router and the OpenAPI document are built from one route table: they must agree both
//! ways, and the document must be whole (every schema it names is in it).

use super::*;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use std::collections::BTreeSet;
use switchboard_store::{Backend, testing};
use tower::ServiceExt;

struct NoStreams;

impl NodeConfigs for NoStreams {
    fn node_config<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> NodeConfigFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `(path, method)` of every operation in the document.
fn documented() -> BTreeSet<(String, String)> {
    let doc = serde_json::to_value(openapi()).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.as_str()) {
                out.insert((path.clone(), method.clone()));
            }
        }
    }
    out
}

#[test]
fn every_route_is_in_the_document() {
    let table = routes();
    let served: BTreeSet<(String, String)> = table
        .iter()
        .map(|r| {
            let method = serde_json::to_value(&r.method).unwrap();
            (r.path.clone(), method.as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(served.len(), table.len(), "an operation is declared twice");
    let documented = documented();
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(missing.is_empty(), "served but not documented: {missing:?}");
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(extra.is_empty(), "documented but not served: {extra:?}");
    // What the document used to miss.
    for (path, method) in [
        ("/v1/openapi.json", "get"),
        ("/v1/tenants/{tenant}/meshes/{mesh}/proxies", "get"),
        ("/v1/tenants/{tenant}/meshes/{mesh}/proxies/{node}", "get"),
        (
            "/v1/tenants/{tenant}/meshes/{mesh}/proxies/{node}/config",
            "get",
        ),
    ] {
        assert!(
            served.contains(&(path.into(), method.into())),
            "{method} {path}"
        );
    }
}

/// Each documented operation reaches a handler: with no credentials that is a 401 (the
/// document itself is public), never the fallback's 404 or a 405.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let (store, _db) = testing::store(Backend::Sqlite).await.unwrap();
    let app = router(AppState {
        store,
        admin: AdminToken::new("test-admin-token-0123456789"),
        node_configs: Arc::new(NoStreams),
        kek: Arc::new(switchboard_pki::Kek::parse(&"11".repeat(32)).unwrap()),
    });
    for (path, method) in documented() {
        let uri = path.replace(['{', '}'], "");
        let req = Request::builder()
            .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
            .uri(&uri)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let expected = if path == "/v1/openapi.json" {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(resp.status(), expected, "{method} {uri}");
    }
}

#[test]
fn every_schema_named_is_in_the_document() {
    fn refs(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.insert(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let doc = serde_json::to_value(openapi()).unwrap();
    let mut named = BTreeSet::new();
    refs(&doc, &mut named);
    assert!(named.contains("#/components/schemas/RouteSpec"));
    for r in named {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} is named but not defined"
        );
    }
}
