//! What the API's HTTP tests share: the router served on 127.0.0.1:0 over a fresh store (on
//! the backend under test), called with reqwest as a client would.

// Each test binary uses a part of it.
#![allow(dead_code)]

pub mod xds_plan;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use switchboard_api::{AdminToken, AppState, NodeConfigFuture, NodeConfigs, router};
use switchboard_store::testing::{TestDb, store};
use switchboard_store::{Backend, Store};

pub const ADMIN: &str = "test-admin-token-0123456789";

/// No proxy is connected in these tests.
struct NoStreams;

impl NodeConfigs for NoStreams {
    fn node_config<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> NodeConfigFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub store: Store,
    /// The key that seals the mesh CAs' private keys, as the server holds it.
    pub kek: switchboard_pki::Kek,
    server: tokio::task::JoinHandle<()>,
    _db: TestDb,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Api {
    /// The API on a fresh store of backend `b` with the CA key-encryption key `kek` (64 hex
    /// characters); `None` when the backend is not available here.
    pub async fn serve(b: Backend, kek: &str) -> Option<Api> {
        Self::serve_with(b, kek, Arc::new(NoStreams)).await
    }

    /// As [`Api::serve`], with `node_configs` as the xDS side.
    pub async fn serve_with(
        b: Backend,
        kek: &str,
        node_configs: Arc<dyn NodeConfigs>,
    ) -> Option<Api> {
        let (store, db) = store(b).await?;
        let app = router(AppState {
            store: store.clone(),
            admin: AdminToken::new(ADMIN),
            node_configs,
            kek: Arc::new(switchboard_pki::Kek::parse(kek).unwrap()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Some(Api {
            base,
            http: reqwest::Client::new(),
            store,
            kek: switchboard_pki::Kek::parse(kek).unwrap(),
            server,
            _db: db,
        })
    }

    /// A request with `token`; the status and the JSON answer (`Null` when it is not JSON).
    /// No answer may hold a private key.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("PRIVATE KEY"),
            "a response holds a key: {text}"
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A tenant, created by the admin, and an API key for it.
    pub async fn tenant_key(&self, name: &str) -> String {
        let (s, b) = self
            .call(
                Method::POST,
                "/v1/tenants",
                ADMIN,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, k) = self
            .call(
                Method::POST,
                &format!("/v1/tenants/{name}/api-keys"),
                ADMIN,
                Some(json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        k["secret"].as_str().unwrap().to_owned()
    }
}
