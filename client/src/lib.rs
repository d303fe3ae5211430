//! A client of Switchboard's REST API, for the `switchboard` CLI's verbs: one [`Client`]
//! (base URL and API key), errors that carry the API's problem+json, and the tenant
//! export and import (`bundle`: the calls, and their YAML files of several documents).
//!
//! It speaks plain HTTP; an `https://` API URL is refused with a clear error (this build of
//! reqwest has no TLS).

pub mod bundle;

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
    #[error("cannot reach the API at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
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
    pub fn new(api_url: &str, token: &str) -> Result<Client, ClientError> {
        let base = api_url.trim().trim_end_matches('/').to_owned();
        let bad = |why| ClientError::Url {
            url: api_url.to_owned(),
            why,
        };
        if base.starts_with("https://") {
            return Err(bad(
                "https is not supported by this client yet; use http://",
            ));
        }
        if !base.starts_with("http://") {
            return Err(bad("expected http://host:port"));
        }
        let base = base.strip_suffix("/v1").unwrap_or(&base).to_owned();
        Ok(Client {
            http: reqwest::Client::new(),
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
        let url = format!("{}/v1{path}", self.base);
        let resp = self
            .http
            .post(&url)
            .query(query)
            .bearer_auth(self.token.as_str())
            .json(body)
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.clone(),
                source,
            })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|_| ClientError::Unexpected {
                status: status.as_u16(),
                body: text.chars().take(200).collect(),
            });
        }
        match serde_json::from_str::<Problem>(&text) {
            Ok(problem) if !problem.detail.is_empty() => Err(ClientError::Problem { problem }),
            _ => Err(ClientError::Unexpected {
                status: status.as_u16(),
                body: text.chars().take(200).collect(),
            }),
        }
    }
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
