//! Request bodies: JSON or YAML, at most 1 MiB (an import, more), parsed into JSON values
//! with errors that say where the syntax broke.

use crate::{ApiError, MAX_BODY_BYTES};
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};

/// Reads and parses a body as JSON or YAML by its Content-Type (JSON when absent).
pub async fn parse(headers: &HeaderMap, body: Body) -> Result<serde_json::Value, ApiError> {
    parse_up_to(headers, body, MAX_BODY_BYTES)
        .await?
        .ok_or_else(|| ApiError::bad_request("body", "the request body is empty"))
}

/// [`parse`] with a limit of `max` bytes, and None for an empty body (for requests whose
/// body is optional, or larger than most: an import).
pub async fn parse_up_to(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<Option<serde_json::Value>, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let yaml = match ctype.as_deref() {
        None | Some("application/json") | Some("") => false,
        Some("application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                format!(
                    "Content-Type {other:?} is not supported: send application/json or application/yaml"
                ),
            ));
        }
    };
    let bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Body too large",
            format!("the request body is larger than {max} bytes"),
        )
    })?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let value = if yaml {
        serde_yaml_ng::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request("body", format!("malformed YAML: {e}")))?
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request("body", format!("malformed JSON: {e}")))?
    };
    Ok(Some(value))
}
