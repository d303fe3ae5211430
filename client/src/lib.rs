//! A client of Switchboard's REST API, for the `switchboard` CLI's verbs: one [`Client`]
//! (base URL, API key, and for `https://` the platform's roots or a CA file), errors that
//! carry the API's problem+json, the tenant export and import (`bundle`: the calls, and
//! their YAML files of several documents), and reads and deletes of resources, proxies and
//! rollouts (`resources`), and history, rollbacks and the audit log (`history`).

pub mod bundle;
mod history;
pub mod plan;
pub mod resources;

use serde::Deserialize;
use zeroize::Zeroizing;

/// One offending field of a problem.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ProblemField {
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem as the API writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub errors: Vec<ProblemField>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad API URL {url:?}: {why}")]
    Url { url: String, why: &'static str },
    #[error("bad CA file: {0}")]
    Ca(String),
    /// No answer: `why` is the whole chain of causes on one line (reqwest's own message
    /// names only the first).
    #[error("cannot reach the API at {url}: {why}")]
    Connect { url: String, why: String },
    /// The API refused the request; `detail` says why, `errors` name the fields.
    #[error("{} ({})", problem.detail, problem.status)]
    Problem { problem: Problem },
    #[error("unexpected answer from the API ({status}): {body}")]
    Unexpected { status: u16, body: String },
}

/// The REST API at `base` (e.g. `http://127.0.0.1:8080`), called with one API key or the
/// admin token. No `Debug`: it holds the token.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
}

impl Client {
    /// A client of the API at `api_url` (`http://` or `https://`, with or without `/v1`).
    /// `ca_pem`: the certificates to trust for `https://`, instead of the platform's roots.
    pub fn new(api_url: &str, token: &str, ca_pem: Option<&[u8]>) -> Result<Client, ClientError> {
        let base = api_url.trim().trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(ClientError::Url {
                url: api_url.to_owned(),
                why: "expected http://host:port or https://host:port",
            });
        }
        let base = base.strip_suffix("/v1").unwrap_or(&base).to_owned();
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::Ca(causes(&e)))?;
            if certs.is_empty() {
                return Err(ClientError::Ca("no PEM certificate in it".into()));
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| ClientError::Ca(causes(&e)))?;
        Ok(Client {
            http,
            base,
            token: Zeroizing::new(token.trim().to_owned()),
        })
    }

    /// POSTs `body` as JSON to `path` (under `/v1`) and reads the JSON answer; a problem
    /// answer becomes [`ClientError::Problem`].
    pub async fn post(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.send(reqwest::Method::POST, path, query, Some(body))
            .await
    }

    /// One call of `method` on `path` (under `/v1`): the JSON answer (`Null` for an empty
    /// one, as a delete's 204), or the API's problem as [`ClientError::Problem`].
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .query(query)
            .bearer_auth(self.token.as_str());
        if let Some(body) = body {
            req = req.json(body);
        }
        let unreachable = |e: reqwest::Error| ClientError::Connect {
            url: self.base.clone(),
            why: causes(&e),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let text = resp.text().await.map_err(unreachable)?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_str(&text).map_err(|_| ClientError::Unexpected {
                status: status.as_u16(),
                body: one_line(&text),
            });
        }
        match serde_json::from_str::<Problem>(&text) {
            Ok(problem) if !problem.detail.is_empty() => Err(ClientError::Problem { problem }),
            _ => Err(ClientError::Unexpected {
                status: status.as_u16(),
                body: one_line(&text),
            }),
        }
    }
}

/// An error and its sources on one line (`a: b: c`), each said once.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    one_line(&out)
}

/// At most 200 characters of `text`, on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect()
}

/// `tenant` as one path segment (names are DNS labels; anything else is escaped so it
/// cannot change the path).
pub(crate) fn segment(tenant: &str) -> String {
    tenant
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
