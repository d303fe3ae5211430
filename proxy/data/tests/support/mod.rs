//! Test fixtures: real hyper backends on 127.0.0.1 (HTTP/1.1 and h2c on one socket), a
//! proxy serving a `ConfigStore` filled by hand, and clients.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use switchboard_proxy_xds::config::cluster::{
    CircuitBreakers, Cluster, Discovery, LbPolicy, UpstreamProtocol,
};
use switchboard_proxy_xds::config::endpoint::{
    Endpoint, Health, LoadAssignment, Locality, LocalityEndpoints,
};
use switchboard_proxy_xds::config::listener::{
    HttpConnectionManager, Listener, ListenerKind, RouteSource,
};
use switchboard_proxy_xds::config::route::{
    Action, Clusters, Forward, HeaderMutation, PathMatch, Route, RouteConfig, RouteMatch,
    VirtualHost,
};
use switchboard_proxy_xds::{ConfigStore, Handler};
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A backend answering with its name; `x-path` echoes the path it saw and `x-seen-added`
/// the `x-added` request header. `/slow…` sleeps 2 s; `/flaky…` answers 503 to every odd
/// request it receives (1st, 3rd, …); `/trailers` ends with `grpc-status: 0` trailers.
pub async fn backend(name: &'static str) -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let flaky = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                continue;
            };
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let flaky = flaky.clone();
                    async move { Ok::<_, Infallible>(answer(name, &flaky, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn answer(name: &str, flaky: &AtomicUsize, req: Request<Incoming>) -> Response<Body> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let added = req.headers().get("x-added").cloned();
    let version = format!("{:?}", req.version());
    let mut status = StatusCode::OK;
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if path.starts_with("/flaky") && flaky.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    let body = Full::new(Bytes::from(name.to_owned()));
    let body: Body = if path == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        body.with_trailers(async move { Some(Ok(trailers)) })
            .boxed_unsync()
    } else {
        body.boxed_unsync()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert("x-path", path.parse().unwrap());
    resp.headers_mut()
        .insert("x-version", version.parse().unwrap());
    if let Some(v) = added {
        resp.headers_mut().insert("x-seen-added", v);
    }
    resp
}

/// Starts the proxy for listener `http` on 127.0.0.1:0.
pub async fn proxy(store: &ConfigStore) -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(switchboard_proxy_data::serve(
        tcp,
        "http",
        store.clone(),
        Default::default(),
    ));
    addr
}

pub fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response's status, headers and body as text.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub trailers: Option<HeaderMap>,
}

pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut req = Request::get(format!("http://{proxy}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request timed out")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    }
}

pub fn route(name: &str, path: PathMatch, action: Action) -> Route {
    Route {
        name: name.into(),
        matcher: RouteMatch {
            path,
            headers: vec![],
            query_parameters: vec![],
        },
        action,
        request_headers: HeaderMutation::default(),
        response_headers: HeaderMutation::default(),
        fault: None,
    }
}

pub fn forward(clusters: Clusters) -> Forward {
    Forward {
        clusters,
        timeout: Some(Duration::from_secs(5)),
        retry: None,
        prefix_rewrite: None,
        host_rewrite: None,
        mirrors: vec![],
    }
}

pub fn to(cluster: &str) -> Forward {
    forward(Clusters::One(cluster.into()))
}

pub fn vhost(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        routes,
    }
}

/// Applies a listener `http` reading RDS route configuration `main`.
pub fn set_listener(store: &mut ConfigStore) {
    let listener = Listener {
        name: "http".into(),
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        kind: ListenerKind::Http(HttpConnectionManager {
            routes: RouteSource::Rds("main".into()),
            fault: None,
            allow_absolute_url: false,
        }),
    };
    Handler::<Listener>::apply(store, vec![("http".into(), listener)], vec![]).unwrap();
}

pub fn set_routes(store: &mut ConfigStore, virtual_hosts: Vec<VirtualHost>) {
    let rc = RouteConfig {
        name: "main".into(),
        virtual_hosts,
    };
    Handler::<RouteConfig>::apply(store, vec![("main".into(), rc)], vec![]).unwrap();
}

/// An EDS cluster `name` with one healthy endpoint per address.
pub fn set_cluster(
    store: &mut ConfigStore,
    name: &str,
    protocol: UpstreamProtocol,
    endpoints: &[SocketAddr],
) {
    let cluster = Cluster {
        name: name.into(),
        discovery: Discovery::Eds {
            service_name: name.into(),
        },
        lb_policy: LbPolicy::RoundRobin,
        connect_timeout: Duration::from_secs(1),
        circuit_breakers: CircuitBreakers::default(),
        outlier_detection: None,
        protocol,
    };
    let la = LoadAssignment {
        cluster_name: name.into(),
        localities: vec![LocalityEndpoints {
            locality: Locality::default(),
            priority: 0,
            weight: None,
            endpoints: endpoints
                .iter()
                .map(|a| Endpoint {
                    address: *a,
                    weight: 1,
                    health: Health::Healthy,
                })
                .collect(),
        }],
    };
    Handler::<Cluster>::apply(store, vec![(name.into(), cluster)], vec![]).unwrap();
    Handler::<LoadAssignment>::apply(store, vec![(name.into(), la)], vec![]).unwrap();
}
