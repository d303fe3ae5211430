//! Per-tenant quotas: `GET/PUT /v1/tenants/{tenant}/quotas` (the platform admin sets them;
//! the tenant's own key may read them), and the `writesPerSecond` limit on REST writes.
//!
//! `writesPerSecond` is a token bucket per tenant, in this process's memory: the limit is per
//! replica, so N replicas behind a load balancer admit up to N times it. Keeping it in memory
//! means a refused write costs the database nothing (which is what the limit protects), and an
//! admitted one no extra round trip; a database-wide bucket would need a row updated on every
//! write. The bucket's rate and size come from [`Store::quotas`](switchboard_store::Store),
//! cached for a few seconds. The platform admin's own writes are not limited.

use crate::auth::Caller;
use crate::error::QuotaProblem;
use crate::openapi::{Route, op, tenant_param};
use crate::{ApiError, AppState, body};
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use switchboard_store::{QUOTA_MAX, QuotaOverrides, Quotas, TenantQuotas};
use utoipa::openapi::path::HttpMethod;

pub(crate) fn routes() -> Vec<Route> {
    let tp = tenant_param();
    let path = "/v1/tenants/{tenant}/quotas";
    vec![
        Route::new(
            HttpMethod::Get,
            path,
            op(
                "Get a tenant's quotas: as set, and in effect with the server's defaults".into(),
                std::slice::from_ref(&tp),
                None,
                ("200", Some("QuotasView")),
            ),
            get,
        )
        .schema::<QuotasView>(),
        Route::new(
            HttpMethod::Put,
            path,
            op(
                "Set a tenant's quotas (platform admin); a quota left out takes the default".into(),
                std::slice::from_ref(&tp),
                Some("QuotasUpdate"),
                ("200", Some("QuotasView")),
            ),
            put,
        )
        .schema::<QuotasUpdate>()
        .schema::<QuotasView>(),
    ]
}

/// What the platform admin sets; a quota left out takes the server's default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaSpec {
    /// Concurrent xDS streams of the tenant, per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<u64>,
    /// Stored resources of every kind in one mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources_per_mesh: Option<u64>,
    /// REST writes per second, per replica (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_per_second: Option<u64>,
    /// REST writes allowed at once after a quiet period (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_burst: Option<u64>,
}

/// The quotas in effect.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveQuotas {
    streams: u64,
    resources_per_mesh: u64,
    writes_per_second: u64,
    write_burst: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotasView {
    tenant: String,
    spec: QuotaSpec,
    effective: EffectiveQuotas,
    /// When the platform admin last set them; absent if never.
    #[serde(skip_serializing_if = "Option::is_none")]
    update_time: Option<String>,
}

/// A `PUT` body: the spec; the read-only fields of a GET are accepted and ignored, so GET,
/// edit, PUT works.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotasUpdate {
    spec: QuotaSpec,
    #[serde(default, rename = "tenant")]
    #[schema(ignore)]
    _tenant: Option<serde_json::Value>,
    #[serde(default, rename = "effective")]
    #[schema(ignore)]
    _effective: Option<serde_json::Value>,
    #[serde(default, rename = "updateTime")]
    #[schema(ignore)]
    _update_time: Option<serde_json::Value>,
}

impl From<&TenantQuotas> for QuotasView {
    fn from(q: &TenantQuotas) -> Self {
        let Quotas {
            streams,
            resources_per_mesh,
            writes_per_second,
            write_burst,
        } = q.effective;
        Self {
            tenant: q.tenant.clone(),
            spec: QuotaSpec {
                streams: q.set.streams,
                resources_per_mesh: q.set.resources_per_mesh,
                writes_per_second: q.set.writes_per_second,
                write_burst: q.set.write_burst,
            },
            effective: EffectiveQuotas {
                streams,
                resources_per_mesh,
                writes_per_second,
                write_burst,
            },
            update_time: q.update_time.map(crate::rfc3339),
        }
    }
}

/// Checks the values' ranges; the first bad one is named.
fn validate(spec: &QuotaSpec) -> Result<QuotaOverrides, ApiError> {
    let fields = [
        ("spec.streams", spec.streams, 0),
        ("spec.resourcesPerMesh", spec.resources_per_mesh, 0),
        ("spec.writesPerSecond", spec.writes_per_second, 1),
        ("spec.writeBurst", spec.write_burst, 1),
    ];
    for (field, value, min) in fields {
        match value {
            Some(v) if v < min => {
                return Err(ApiError::field(field, format!("must be at least {min}")));
            }
            Some(v) if v > QUOTA_MAX => {
                return Err(ApiError::field(
                    field,
                    format!("must be at most {QUOTA_MAX}"),
                ));
            }
            _ => {}
        }
    }
    Ok(QuotaOverrides {
        streams: spec.streams,
        resources_per_mesh: spec.resources_per_mesh,
        writes_per_second: spec.writes_per_second,
        write_burst: spec.write_burst,
    })
}

async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    let q = s.store.tenant_quotas(&tenant).await?;
    Ok(axum::Json(QuotasView::from(&q)).into_response())
}

async fn put(
    State(s): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_tenant(&tenant)?;
    if !caller.is_admin() {
        return Err(ApiError::forbidden(
            "only the platform admin sets quotas; a tenant's key may read them",
        ));
    }
    let v = body::parse(&headers, body).await?;
    let update: QuotasUpdate = serde_path_to_error::deserialize(v).map_err(|e| {
        let p = e.path().to_string();
        ApiError::field(if p == "." { "body" } else { &p }, e.inner().to_string())
    })?;
    let set = validate(&update.spec)?;
    let q = s.store.set_tenant_quotas(&tenant, &set).await?;
    Ok(axum::Json(QuotasView::from(&q)).into_response())
}

/// Tenants whose buckets one replica keeps before it forgets the full ones.
const MAX_BUCKETS: usize = 10_000;

/// One token bucket per tenant.
#[derive(Debug, Default)]
pub(crate) struct WriteLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// The quota it was last used with.
    rate: f64,
    burst: f64,
}

impl Bucket {
    /// The bucket refilled at `rate` per second up to `burst`, as of `now`.
    fn at(self, now: Instant, rate: f64, burst: f64) -> Bucket {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        Bucket {
            tokens: (self.tokens + elapsed * rate).min(burst),
            at: now,
            rate,
            burst,
        }
    }

    /// Whether it would be full at `now` (then forgetting it changes nothing).
    fn full(&self, now: Instant) -> bool {
        self.at(now, self.rate, self.burst).tokens >= self.burst
    }
}

impl WriteLimiter {
    /// Takes one write from `tenant`'s bucket at `now`, or says in how many whole seconds
    /// (at least 1) a token will be there.
    pub(crate) fn take(&self, tenant: &str, q: &Quotas, now: Instant) -> Result<(), u64> {
        let rate = q.writes_per_second.max(1) as f64;
        let burst = q.write_burst.max(1) as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(tenant) {
            // A full bucket is the same as none: forgetting those loses nothing.
            buckets.retain(|_, b| !b.full(now));
        }
        let bucket = buckets.get(tenant).map_or(
            Bucket {
                tokens: burst,
                at: now,
                rate,
                burst,
            },
            |b| b.at(now, rate, burst),
        );
        if bucket.tokens >= 1.0 {
            buckets.insert(
                tenant.to_owned(),
                Bucket {
                    tokens: bucket.tokens - 1.0,
                    ..bucket
                },
            );
            Ok(())
        } else {
            buckets.insert(tenant.to_owned(), bucket);
            Err((((1.0 - bucket.tokens) / rate).ceil() as u64).max(1))
        }
    }
}

/// The tenant a REST write is for: a mutating method on `/v1/tenants/{tenant}/…` (creating
/// or deleting a tenant, and setting its quotas, are the admin's, not the tenant's).
fn written_tenant(method: &Method, path: &str) -> Option<String> {
    if !matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return None;
    }
    let mut segments = path.trim_start_matches('/').split('/');
    let (Some("v1"), Some("tenants"), Some(tenant), Some(next)) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return None;
    };
    (!next.is_empty() && next != "quotas").then(|| tenant.to_owned())
}

/// Middleware: a tenant's REST write over its `writesPerSecond` gets 429 with `Retry-After`.
/// The caller it authenticates is handed on, so the handler does not look the key up again.
pub(crate) async fn limit_writes(
    State((state, limiter)): State<(AppState, Arc<WriteLimiter>)>,
    req: Request,
    next: Next,
) -> Response {
    let Some(tenant) = written_tenant(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    // A caller that fails to authenticate gets its error from the handler, as always.
    if let Ok(caller) = Caller::from_request_parts(&mut parts, &state).await {
        // Only the tenant's own keys spend its writes: another tenant's key gets the 404 of
        // `check_tenant` from the handler, and cannot drain this bucket.
        if matches!(&caller, Caller::Tenant { tenant: t, .. } if *t == tenant) {
            // If the quotas cannot be read the store is failing, and so will the write.
            if let Ok(q) = state.store.quotas(&tenant).await
                && let Err(retry_after) = limiter.take(&tenant, &q, Instant::now())
            {
                return write_quota_exceeded(&tenant, &q, retry_after).into_response();
            }
        }
        parts.extensions.insert(caller);
    }
    next.run(Request::from_parts(parts, body)).await
}

fn write_quota_exceeded(tenant: &str, q: &Quotas, retry_after: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "quota-exceeded",
        "Quota exceeded",
        format!(
            "tenant {tenant:?} has reached its quota of {} REST writes per second, burst {} \
             (quota writesPerSecond): retry after {retry_after} s, write less often, or ask the \
             platform admin to raise it",
            q.writes_per_second, q.write_burst
        ),
    )
    .with_quota(QuotaProblem {
        quota: "writesPerSecond",
        limit: q.writes_per_second,
        current: None,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_the_rate_up_to_the_burst() {
        let l = WriteLimiter::default();
        let q = Quotas {
            writes_per_second: 2,
            write_burst: 3,
            ..Quotas::DEFAULT
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take("a", &q, t0), Ok(()));
        }
        assert_eq!(l.take("a", &q, t0), Err(1));
        // Another tenant has its own bucket.
        assert_eq!(l.take("b", &q, t0), Ok(()));
        // Half a second later one token has come back.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.take("a", &q, t1), Ok(()));
        assert_eq!(l.take("a", &q, t1), Err(1));
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.take("a", &q, t2), Ok(()));
        }
        assert!(l.take("a", &q, t2).is_err());
        // A slow rate says how many seconds to wait.
        let slow = Quotas {
            writes_per_second: 1,
            write_burst: 1,
            ..Quotas::DEFAULT
        };
        assert_eq!(l.take("c", &slow, t0), Ok(()));
        assert_eq!(l.take("c", &slow, t0), Err(1));
    }

    #[test]
    fn full_buckets_are_forgotten_when_there_are_many() {
        let l = WriteLimiter::default();
        let q = Quotas {
            writes_per_second: 1,
            write_burst: 1,
            ..Quotas::DEFAULT
        };
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS {
            assert_eq!(l.take(&format!("t{i}"), &q, t0), Ok(()));
        }
        // A moment later they are still empty: kept.
        assert_eq!(l.take("late", &q, t0), Ok(()));
        assert_eq!(l.buckets.lock().unwrap().len(), MAX_BUCKETS + 1);
        // Two seconds later they are full again: forgotten.
        assert_eq!(l.take("later", &q, t0 + Duration::from_secs(2)), Ok(()));
        assert_eq!(l.buckets.lock().unwrap().len(), 1);
    }

    #[test]
    fn which_requests_are_tenant_writes() {
        let w = |m: Method, p: &str| written_tenant(&m, p);
        assert_eq!(
            w(Method::PUT, "/v1/tenants/acme/meshes/prod/services/a"),
            Some("acme".into())
        );
        assert_eq!(
            w(Method::POST, "/v1/tenants/acme/meshes"),
            Some("acme".into())
        );
        assert_eq!(
            w(Method::DELETE, "/v1/tenants/acme/api-keys/x"),
            Some("acme".into())
        );
        assert_eq!(w(Method::GET, "/v1/tenants/acme/meshes"), None);
        assert_eq!(w(Method::PUT, "/v1/tenants/acme/quotas"), None);
        assert_eq!(w(Method::DELETE, "/v1/tenants/acme"), None);
        assert_eq!(w(Method::POST, "/v1/tenants"), None);
    }
}
