//! Fault injection (Envoy's `envoy.filters.http.fault`): a fixed delay and/or an abort, each
//! applied to a sampled share of requests. A route's own fault config replaces the
//! listener-wide one, as a per-route filter config does in Envoy.

use http::{HeaderValue, Response, StatusCode};
use rand::Rng;
use switchboard_proxy_xds::config::route::{Abort, Fault};

use super::local;
use crate::body::{Body, full};
use crate::telemetry::ResponseFlags;

/// What a fault did to a request: delayed it (`DI`), and/or answered it (`FI`).
pub(super) struct Injected {
    pub(super) delayed: bool,
    pub(super) abort: Option<Response<Body>>,
}

/// Applies `fault`'s delay if sampled, then makes the abort response if sampled.
pub(super) async fn inject(fault: &Fault) -> Injected {
    let mut delayed = false;
    if let Some((delay, per_million)) = fault.delay
        && sampled(per_million)
    {
        tokio::time::sleep(delay).await;
        delayed = true;
    }
    Injected {
        delayed,
        abort: abort(fault),
    }
}

fn abort(fault: &Fault) -> Option<Response<Body>> {
    let (abort, per_million) = fault.abort?;
    if !sampled(per_million) {
        return None;
    }
    let mut resp = match abort {
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
            local::mark_local(&mut resp);
            resp
        }
    };
    // Replaces whatever the local reply guessed from its status.
    resp.extensions_mut().insert(ResponseFlags::FAULT_INJECTED);
    Some(resp)
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
        let injected = inject(&always).await;
        assert!(!injected.delayed);
        let resp = injected.abort.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.extensions().get::<ResponseFlags>(),
            Some(&ResponseFlags::FAULT_INJECTED)
        );
        let never = Fault {
            delay: None,
            abort: Some((Abort::Http(503), 0)),
        };
        assert!(inject(&never).await.abort.is_none());
        let grpc = Fault {
            delay: None,
            abort: Some((Abort::Grpc(14), 1_000_000)),
        };
        let resp = inject(&grpc).await.abort.unwrap();
        assert_eq!(
            (resp.status(), &resp.headers()["grpc-status"]),
            (StatusCode::OK, &HeaderValue::from(14u32))
        );
    }

    #[tokio::test]
    async fn delay_is_reported() {
        let delay = Fault {
            delay: Some((std::time::Duration::from_millis(1), 1_000_000)),
            abort: None,
        };
        let injected = inject(&delay).await;
        assert!(injected.delayed && injected.abort.is_none());
    }

    #[test]
    fn sampling_rate() {
        let hits = (0..10_000).filter(|_| sampled(250_000)).count();
        // Expected 2,500, sd ~43: the bound is > 10 sd.
        assert!((2_000..=3_000).contains(&hits), "{hits}");
    }
}
