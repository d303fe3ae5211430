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
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType as RcSan, SerialNumber,
};
use switchboard_proxy_xds::config::cluster::{
    CircuitBreakers, Cluster, Discovery, LbPolicy, UpstreamProtocol,
};
use switchboard_proxy_xds::config::endpoint::{
    Endpoint, Health, LoadAssignment, Locality, LocalityEndpoints,
};
use switchboard_proxy_xds::config::listener::{
    DownstreamTls, HttpConnectionManager, HttpLimits, Listener, ListenerKind, RouteSource,
};
use switchboard_proxy_xds::config::route::{
    Action, Clusters, Forward, HeaderMutation, PathMatch, Route, RouteConfig, RouteMatch,
    VirtualHost,
};
use switchboard_proxy_xds::{ConfigStore, Handler};
use tokio::net::TcpListener;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A backend answering with its name; `x-path` echoes the path it saw and `x-seen-added`
/// the `x-added` request header. `/slow…` sleeps 2 s; `/flaky…` answers 503 to every odd
/// request it receives (1st, 3rd, …); `/trailers` ends with `grpc-status: 0` trailers.
pub async fn backend(name: &'static str) -> SocketAddr {
    let flaky = Arc::new(AtomicUsize::new(0));
    serve_backend(move |req| {
        let flaky = flaky.clone();
        async move { answer(name, &flaky, req).await }
    })
    .await
}

/// Binds 127.0.0.1:0 and serves every connection it accepts (HTTP/1.1 and h2c on one
/// socket) with `answer`.
pub async fn serve_backend<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let response = answer(req);
                    async move { Ok::<_, Infallible>(response.await) }
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
    proxy_with(store, Default::default()).await
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

/// A GET request, answered as a [`Got`].
pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    send(client, proxy, "GET", host, path, headers, Bytes::new()).await
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
        hash_policy: vec![],
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
    set_http_listener(store, "http", HttpLimits::default(), None);
}

/// An HTTP listener `name` reading RDS `main`.
pub fn set_http_listener(
    store: &mut ConfigStore,
    name: &str,
    limits: HttpLimits,
    tls: Option<DownstreamTls>,
) {
    let kind = ListenerKind::Http(HttpConnectionManager {
        routes: RouteSource::Rds("main".into()),
        fault: None,
        allow_absolute_url: false,
        limits,
        rbac: Vec::new(),
        xfcc: Default::default(),
    });
    apply_listener(store, name, kind, tls);
}

/// Applies listener `name` of `kind` on 127.0.0.1:0.
pub fn apply_listener(
    store: &mut ConfigStore,
    name: &str,
    kind: ListenerKind,
    tls: Option<DownstreamTls>,
) {
    let listener = Listener {
        name: name.into(),
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        kind,
        tls,
        plaintext: None,
        network_rbac: Vec::new(),
    };
    Handler::<Listener>::apply(store, vec![(name.into(), listener)], vec![]).unwrap();
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
        tls: None,
        tls_matches: Vec::new(),
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
                    transport_labels: Default::default(),
                })
                .collect(),
        }],
    };
    Handler::<Cluster>::apply(store, vec![(name.into(), cluster)], vec![]).unwrap();
    Handler::<LoadAssignment>::apply(store, vec![(name.into(), la)], vec![]).unwrap();
}

// --- Resilience helpers (tests/resilience.rs): scripted backends, clusters with custom
// settings, a proxy sharing a caller's ClusterManager. ---

/// What a [`scripted_backend`] saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub host: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// The behaviour of a [`scripted_backend`], changeable while it runs: the status it
/// answers (200 unless told otherwise), a delay before answering, and a gate: requests wait
/// (up to 5 s) until `gate` requests have arrived, so that a batch is answered together.
#[derive(Debug)]
pub struct Script {
    pub status: std::sync::atomic::AtomicU16,
    pub delay_ms: std::sync::atomic::AtomicU64,
    pub gate: AtomicUsize,
    pub hits: AtomicUsize,
    pub seen: std::sync::Mutex<Vec<Seen>>,
}

impl Script {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A backend answering its `name` as the body (and `x-backend: name`), as its [`Script`]
/// says, recording every request it reads.
pub async fn scripted_backend(name: &'static str) -> (SocketAddr, Arc<Script>) {
    let script = Arc::new(Script {
        status: std::sync::atomic::AtomicU16::new(200),
        delay_ms: std::sync::atomic::AtomicU64::new(0),
        gate: AtomicUsize::new(0),
        hits: AtomicUsize::new(0),
        seen: std::sync::Mutex::new(Vec::new()),
    });
    let shared = script.clone();
    let addr = serve_backend(move |req| {
        let script = shared.clone();
        async move { scripted_answer(name, &script, req).await }
    })
    .await;
    (addr, script)
}

async fn scripted_answer(name: &str, script: &Script, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    script.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        host,
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        body,
    });
    script.hits.fetch_add(1, Ordering::SeqCst);
    let gate = script.gate.load(Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while script.hits.load(Ordering::SeqCst) < gate && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delay = script.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(script.status.load(Ordering::SeqCst)).unwrap();
    let mut resp = Response::new(Full::new(Bytes::from(name.to_owned())).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    resp
}

/// Starts the proxy for listener `http` on 127.0.0.1:0 with the caller's cluster manager
/// (to read `describe()`).
pub async fn proxy_with(
    store: &ConfigStore,
    clusters: Arc<switchboard_proxy_data::ClusterManager>,
) -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(switchboard_proxy_data::serve(
        tcp,
        "http",
        store.clone(),
        clusters,
    ));
    addr
}

/// [`set_cluster`] (HTTP/1.1, healthy endpoints), with the cluster edited by `edit`.
pub fn set_cluster_with(
    store: &mut ConfigStore,
    name: &str,
    endpoints: &[SocketAddr],
    edit: impl FnOnce(&mut Cluster),
) {
    set_cluster(store, name, UpstreamProtocol::Http1, endpoints);
    let mut cluster = store.snapshot().clusters[name].as_ref().clone();
    edit(&mut cluster);
    Handler::<Cluster>::apply(store, vec![(name.into(), cluster)], vec![]).unwrap();
}

/// An address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tcp.local_addr().unwrap()
}

/// A request with `method` and `body`, answered as a [`Got`].
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Got {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header("host", host)
        .body(Full::new(body.into()))
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
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

/// A CA made by rcgen, for tests over TLS.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

pub fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ca {
        issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
    }
}

impl Ca {
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A workload certificate for `spiffe_id` (also valid for DNS `localhost`, so that a
    /// plain rustls client can check it), with `serial`: (chain PEM, key PEM).
    pub fn leaf(&self, spiffe_id: &str, serial: u64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(RcSan::URI(spiffe_id.try_into().unwrap()));
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}
