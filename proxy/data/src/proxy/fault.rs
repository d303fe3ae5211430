//! Fault injection (Envoy's `envoy.filters.http.fault`): a fixed delay and/or an abort, each
//! applied to a sampled share of requests. A route's own fault config replaces the
//! listener-wide one, as a per-route filter config does in Envoy.

use http::{HeaderValue, Response, StatusCode};
use rand::Rng;
use switchboard_proxy_xds::config::route::{Abort, Fault};

use super::{Body, full, local};

/// Applies `fault`'s delay if sampled, then returns the abort response if sampled.
pub(super) async fn inject(fault: &Fault) -> Option<Response<Body>> {
    if let Some((delay, per_million)) = fault.delay
        && sampled(per_million)
    {
        tokio::time::sleep(delay).await;
    }
    let (abort, per_million) = fault.abort?;
    if !sampled(per_million) {
        return None;
    }
    Some(match abort {
        Abort::Http(status) => local::error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "fault filter abort",
        ),
        // gRPC clients read the status from headers of a 200 (a trailers-only response).
        Abort::Grpc(code) => {
            let mut resp = Response::new(full(""));
            let headers = resp.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", HeaderValue::from(code));
            headers.insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            resp
        }
    })
}

fn sampled(per_million: u32) -> bool {
    per_million >= 1_000_000 || rand::rng().random_range(0..1_000_000) < per_million
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn abort_always_and_never() {
        let always = Fault {
            delay: None,
            abort: Some((Abort::Http(503), 1_000_000)),
        };
        let resp = inject(&always).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let never = Fault {
            delay: None,
            abort: Some((Abort::Http(503), 0)),
        };
        assert!(inject(&never).await.is_none());
        let grpc = Fault {
            delay: None,
            abort: Some((Abort::Grpc(14), 1_000_000)),
        };
        let resp = inject(&grpc).await.unwrap();
        assert_eq!(
            (resp.status(), &resp.headers()["grpc-status"]),
            (StatusCode::OK, &HeaderValue::from(14u32))
        );
    }

    #[test]
    fn sampling_rate() {
        let hits = (0..10_000).filter(|_| sampled(250_000)).count();
        // Expected 2,500, sd ~43: the bound is > 10 sd.
        assert!((2_000..=3_000).contains(&hits), "{hits}");
    }
}
