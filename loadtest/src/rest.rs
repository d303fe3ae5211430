//! A REST client authenticated as the platform admin.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Client, Method};

/// Requests to the control plane's REST API as the platform admin; any non-2xx answer is an
/// error carrying the problem document.
#[derive(Debug, Clone)]
pub struct Rest {
    base: String,
    client: Client,
}

impl Rest {
    /// `base` is `http://host:port`; every request times out after `timeout`.
    pub fn new(base: &str, admin_token: &str, timeout: Duration) -> Result<Rest> {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {admin_token}"))?,
        );
        let client = Client::builder()
            .default_headers(headers)
            .tcp_nodelay(true)
            .timeout(timeout)
            .build()
            .context("building the REST client")?;
        Ok(Rest {
            base: base.trim_end_matches('/').to_owned(),
            client,
        })
    }

    /// Sends `body` as JSON to `path` (`/v1/...`); returns the response body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Vec<u8>> {
        let what = format!("{method} {path}");
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?)
            .send()
            .await
            .with_context(|| what.clone())?;
        let status = response.status();
        let body = response.bytes().await.with_context(|| what.clone())?;
        if !status.is_success() {
            bail!("{what}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body.to_vec())
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> Result<Vec<u8>> {
        self.send(Method::PUT, path, body).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<Vec<u8>> {
        self.send(Method::POST, path, body).await
    }

    /// GET `url` (absolute, e.g. the admin port's `/metrics`) as text.
    pub async fn get_text(&self, url: &str) -> Result<String> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {text}");
        }
        Ok(text)
    }
}
