//! One error type for every handler, rendered as RFC 9457 problem+json.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use switchboard_model::{FieldError, ValidationErrors};
use switchboard_store::StoreError;

/// `Retry-After` (seconds) for a count quota, which frees up only when something is deleted.
const COUNT_QUOTA_RETRY_AFTER: u64 = 60;

/// `Retry-After` (seconds) when the store is unreachable: the answer itself came within the
/// store's bound (`switchboard_store::ACQUIRE_TIMEOUT`), and a database restart or failover
/// takes seconds.
const STORE_RETRY_AFTER: u64 = 5;

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For a 429: the quota exceeded (RFC 9457 extension members).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaProblem>,
}

/// Which quota a request exceeded, its limit and (for a count) how many are held.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaProblem {
    pub quota: &'static str,
    pub limit: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    /// Seconds for `Retry-After` (a header, not in the body).
    #[serde(skip)]
    pub retry_after: u64,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Boxed: rare, and every handler's `Result` carries an `ApiError`.
    pub quota: Option<Box<QuotaProblem>>,
    /// `Retry-After` (seconds) of an error that is not a quota's (a 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            errors: vec![],
            quota: None,
            retry_after: None,
        }
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }
    pub fn bad_request(field: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            format!("{field}: {detail}"),
        )
        .with_errors(vec![FieldError::new(field, detail)])
    }
    pub fn invalid(errors: ValidationErrors) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "Invalid resource",
            errors.to_string(),
        )
        .with_errors(errors.0)
    }
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::invalid(ValidationErrors::single(field, message))
    }
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Unauthenticated",
            detail,
        )
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }
    /// Says when to retry (`Retry-After`).
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
    /// Names the quota exceeded, and when to retry.
    pub fn with_quota(mut self, quota: QuotaProblem) -> Self {
        self.quota = Some(Box::new(quota));
        self
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(e: ValidationErrors) -> Self {
        ApiError::invalid(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let detail = e.to_string();
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(detail),
            StoreError::AlreadyExists { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "already-exists",
                "Already exists",
                detail,
            )
            .with_errors(vec![FieldError::new("name", "already exists")]),
            StoreError::PreconditionFailed { .. } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
                detail,
            )
            .with_errors(vec![FieldError::new(
                "If-Match",
                "does not match the resource's current etag",
            )]),
            StoreError::DanglingReference { field, kind, name } => ApiError::field(
                &field,
                format!("{kind} {name:?} does not exist in this mesh"),
            ),
            StoreError::Incompatible { field, message } => ApiError::field(&field, message),
            StoreError::Referenced { by, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "referenced",
                "Still referenced",
                detail,
            )
            .with_errors(
                by.into_iter()
                    .map(|r| {
                        FieldError::new(
                            format!("{}/{}:{}", r.kind.plural(), r.name, r.field),
                            "refers to this resource",
                        )
                    })
                    .collect(),
            ),
            StoreError::Claimed { field, .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", detail.clone())
                    .with_errors(vec![FieldError::new(field, detail)])
            }
            // A count does not go down by waiting: the Retry-After is nominal, the detail says
            // what to do.
            StoreError::ResourceQuota { limit, current, .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota-exceeded",
                "Quota exceeded",
                detail,
            )
            .with_quota(QuotaProblem {
                quota: "resourcesPerMesh",
                limit,
                current: Some(current),
                retry_after: COUNT_QUOTA_RETRY_AFTER,
            }),
            StoreError::CaConflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "ca-conflict", "Conflict", detail)
            }
            StoreError::CaOverlap { until } => ApiError::new(
                StatusCode::CONFLICT,
                "ca-overlap",
                "Overlap not over",
                format!(
                    "the rotation's overlap lasts until {}: the old CA stays trusted until then \
                     so that certificates it signed keep working; add ?force=true to complete now",
                    crate::rfc3339(until)
                ),
            )
            .with_errors(vec![FieldError::new(
                "force",
                "required to complete a rotation before its overlap ends",
            )]),
            StoreError::Database(_)
            | StoreError::GroupFailed(_)
            | StoreError::Config(_)
            | StoreError::Migrate(_) => {
                tracing::error!(error = %detail, "store error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "Store unavailable",
                    format!(
                        "the configuration store is unavailable; retry \
                         after {STORE_RETRY_AFTER}s (xDS keeps serving the last configuration)"
                    ),
                )
                .with_retry_after(STORE_RETRY_AFTER)
            }
            // Only reading the change log from `since` can find it pruned.
            StoreError::Compacted { pruned_through, .. } => ApiError::new(
                StatusCode::GONE,
                "compacted",
                "Revision compacted",
                detail,
            )
            .with_errors(vec![FieldError::new(
                "since",
                format!(
                    "older than the change log keeps; it holds the revisions after {pruned_through}"
                ),
            )]),
            StoreError::BadCursor => ApiError::bad_request("pageToken", detail),
            StoreError::RevisionOutside { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                "revision-not-found",
                "Revision not found",
                detail.clone(),
            )
            .with_errors(vec![FieldError::new("toRevision", detail)]),
            StoreError::HistoryPruned { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                "history-pruned",
                "Revision pruned",
                detail.clone(),
            )
            .with_errors(vec![FieldError::new("toRevision", detail)]),
            StoreError::AbsentAt { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                "absent-at-revision",
                "Not found at revision",
                detail.clone(),
            )
            .with_errors(vec![FieldError::new("toRevision", detail)]),
            StoreError::HistoryIncomplete { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "history-incomplete",
                "History incomplete",
                detail.clone(),
            )
            .with_errors(vec![FieldError::new("toRevision", detail)]),
            StoreError::RevisionMoved => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
            }
            StoreError::Corrupt(_) => {
                tracing::error!(error = %detail, "corrupt stored data");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "stored data could not be read",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: format!("urn:switchboard:problem:{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: self.detail,
            errors: self.errors,
            quota: self.quota.map(|q| *q),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = problem
            .quota
            .as_ref()
            .map(|q| q.retry_after)
            .or(self.retry_after)
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_unreachable_store_is_a_503_with_retry_after() {
        let resp = ApiError::from(StoreError::GroupFailed("pool timed out".into())).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let h = resp.headers();
        assert_eq!(
            h[header::RETRY_AFTER],
            STORE_RETRY_AFTER.to_string().as_str()
        );
        assert_eq!(h[header::CONTENT_TYPE], "application/problem+json");
        // Not a quota, and nothing else gets a Retry-After.
        let other = ApiError::not_found("x").into_response();
        assert!(other.headers().get(header::RETRY_AFTER).is_none());
    }
}
