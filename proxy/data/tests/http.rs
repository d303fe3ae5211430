//! The data path over real sockets: a proxy on 127.0.0.1 in front of real hyper backends,
//! configured through a `ConfigStore` filled by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_proxy_xds::ConfigStore;
use switchboard_proxy_xds::config::cluster::UpstreamProtocol;
use switchboard_proxy_xds::config::route::{
    Action, Clusters, HeaderMatch, HeaderMutation, PathMatch, Redirect, RetryPolicy, ValueMatch,
    VirtualHost,
};

use support::*;

/// The routes every test starts from; `split` gives the `/split` weights of `a` and `b`.
fn routes(split: (u32, u32)) -> Vec<VirtualHost> {
    let mut canary = route(
        "canary",
        PathMatch::Prefix("/".into()),
        Action::Forward(to("b")),
    );
    canary.matcher.headers.push(HeaderMatch {
        name: "x-canary".into(),
        value: ValueMatch::Exact("1".into()),
        invert: false,
    });
    let mut rewrite = to("a");
    rewrite.prefix_rewrite = Some("/new/".into());
    let mut rewrite = route(
        "rewrite",
        PathMatch::Prefix("/rewrite/".into()),
        Action::Forward(rewrite),
    );
    rewrite.request_headers = HeaderMutation {
        set: vec![("x-added".into(), "yes".into())],
        ..Default::default()
    };
    rewrite.response_headers = HeaderMutation {
        set: vec![("x-resp".into(), "mutated".into())],
        remove: vec!["x-version".into()],
        ..Default::default()
    };
    let mut slow = to("a");
    slow.timeout = Some(Duration::from_millis(200));
    let mut flaky = to("a");
    flaky.retry = Some(RetryPolicy {
        retry_on: vec!["5xx".into()],
        num_retries: 2,
        per_try_timeout: None,
        retriable_status_codes: vec![],
        base_interval: Duration::from_millis(5),
        max_interval: Duration::from_millis(20),
    });
    let redirect = Redirect {
        scheme: Some("https".into()),
        host: Some("example.com".into()),
        port: None,
        path: Some("/moved".into()),
        prefix_rewrite: None,
        status: 301,
        strip_query: false,
    };
    let split = Clusters::Weighted(vec![("a".into(), split.0), ("b".into(), split.1)]);
    vec![
        vhost(
            "api",
            &["api.test"],
            vec![route(
                "api",
                PathMatch::Prefix("/".into()),
                Action::Forward(to("b")),
            )],
        ),
        vhost(
            "default",
            &["*"],
            vec![
                canary,
                route(
                    "split",
                    PathMatch::Prefix("/split".into()),
                    Action::Forward(forward(split)),
                ),
                rewrite,
                route(
                    "redirect",
                    PathMatch::Exact("/redirect".into()),
                    Action::Redirect(redirect),
                ),
                route(
                    "direct",
                    PathMatch::Exact("/direct".into()),
                    Action::Direct {
                        status: 418,
                        body: Some("teapot".into()),
                    },
                ),
                route(
                    "slow",
                    PathMatch::Prefix("/slow".into()),
                    Action::Forward(slow),
                ),
                route(
                    "flaky",
                    PathMatch::Prefix("/flaky".into()),
                    Action::Forward(flaky),
                ),
                route(
                    "h2",
                    PathMatch::Prefix("/trailers".into()),
                    Action::Forward(to("h2")),
                ),
                route(
                    "missing",
                    PathMatch::Prefix("/missing".into()),
                    Action::Forward(to("nope")),
                ),
                route(
                    "a",
                    PathMatch::Prefix("/a".into()),
                    Action::Forward(to("a")),
                ),
            ],
        ),
    ]
}

struct Setup {
    store: ConfigStore,
    proxy: SocketAddr,
}

async fn setup() -> Setup {
    let a = backend("a").await;
    let b = backend("b").await;
    let h2 = backend("h2").await;
    let mut store = ConfigStore::new();
    set_cluster(&mut store, "a", UpstreamProtocol::Http1, &[a]);
    set_cluster(&mut store, "b", UpstreamProtocol::Http1, &[b]);
    set_cluster(&mut store, "h2", UpstreamProtocol::Http2, &[h2]);
    set_routes(&mut store, routes((80, 20)));
    set_listener(&mut store);
    let proxy = proxy(&store).await;
    Setup { store, proxy }
}

#[tokio::test]
async fn path_and_header_routing() {
    let s = setup().await;
    for client in [h1_client(), h2_client()] {
        let got = get(&client, s.proxy, "svc", "/a/x", &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "a"));
        let got = get(&client, s.proxy, "svc:8080", "/a/x", &[("x-canary", "1")]).await;
        assert_eq!(got.body, "b", "header routing");
        let got = get(&client, s.proxy, "svc", "/zzz", &[]).await;
        assert_eq!(got.status.as_u16(), 404);
        let got = get(&client, s.proxy, "svc", "/missing", &[]).await;
        assert_eq!(got.status.as_u16(), 503);
        assert!(got.body.contains("\"nope\""), "{}", got.body);
    }
    // Host routing over HTTP/1.1: the test's HTTP/2 client puts the socket address in
    // :authority, which (as in Envoy) wins over a Host header.
    let got = get(&h1_client(), s.proxy, "api.test", "/a/x", &[]).await;
    assert_eq!(got.body, "b", "host routing");
}

#[tokio::test]
async fn weighted_split_80_20() {
    let s = setup().await;
    let client = h1_client();
    let (mut a, n) = (0, 2_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..n {
        assert!(Instant::now() < deadline, "load loop took too long");
        let got = get(&client, s.proxy, "svc", "/split", &[]).await;
        assert_eq!(got.status.as_u16(), 200);
        if got.body == "a" {
            a += 1;
        }
    }
    // 80% ± 5 points; the binomial sd is 0.9 points, so this never flakes.
    assert!((1_500..=1_700).contains(&a), "a got {a} of {n}");
}

#[tokio::test]
async fn rewrite_and_header_mutation() {
    let s = setup().await;
    let got = get(&h1_client(), s.proxy, "svc", "/rewrite/x?q=1", &[]).await;
    assert_eq!(got.status.as_u16(), 200);
    assert_eq!(got.headers["x-path"], "/new/x?q=1");
    assert_eq!(got.headers["x-seen-added"], "yes");
    assert_eq!(got.headers["x-resp"], "mutated");
    assert!(!got.headers.contains_key("x-version"));
}

#[tokio::test]
async fn redirect_and_direct_response() {
    let s = setup().await;
    let client = h1_client();
    let got = get(&client, s.proxy, "svc", "/redirect?k=v", &[]).await;
    assert_eq!(got.status.as_u16(), 301);
    assert_eq!(got.headers["location"], "https://example.com/moved?k=v");
    let got = get(&client, s.proxy, "svc", "/direct", &[]).await;
    assert_eq!((got.status.as_u16(), got.body.as_str()), (418, "teapot"));
}

#[tokio::test]
async fn route_timeout_is_504() {
    let s = setup().await;
    let started = Instant::now();
    let got = get(&h1_client(), s.proxy, "svc", "/slow", &[]).await;
    assert_eq!(got.status.as_u16(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retry_turns_503_into_200() {
    let s = setup().await;
    // The backend fails every odd request; each client request sees a 503 then a 200.
    for _ in 0..3 {
        let got = get(&h1_client(), s.proxy, "svc", "/flaky", &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "a"));
    }
}

#[tokio::test]
async fn h2_upstream_keeps_trailers() {
    let s = setup().await;
    let got = get(&h2_client(), s.proxy, "svc", "/trailers", &[]).await;
    assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "h2"));
    assert_eq!(got.headers["x-version"], "HTTP/2.0");
    let trailers = got.trailers.expect("trailers were dropped");
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test]
async fn config_change_applies_without_restart() {
    let mut s = setup().await;
    let client = h1_client();
    let got = get(&client, s.proxy, "svc", "/split", &[]).await;
    assert_eq!(got.status.as_u16(), 200);
    set_routes(&mut s.store, routes((0, 100)));
    for _ in 0..50 {
        let got = get(&client, s.proxy, "svc", "/split", &[]).await;
        assert_eq!(got.body, "b");
    }
    set_routes(&mut s.store, routes((100, 0)));
    for _ in 0..50 {
        let got = get(&client, s.proxy, "svc", "/split", &[]).await;
        assert_eq!(got.body, "a");
    }
}

#[tokio::test]
async fn connect_failure_is_503_or_retried_elsewhere() {
    let mut s = setup().await;
    let dead = {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tcp.local_addr().unwrap()
    };
    let live = backend("live").await;
    set_cluster(&mut s.store, "dead", UpstreamProtocol::Http1, &[dead]);
    set_cluster(&mut s.store, "half", UpstreamProtocol::Http1, &[dead, live]);
    let mut half = to("half");
    half.retry = Some(RetryPolicy {
        retry_on: vec!["connect-failure".into()],
        num_retries: 1,
        per_try_timeout: Some(Duration::from_secs(1)),
        retriable_status_codes: vec![],
        base_interval: Duration::from_millis(1),
        max_interval: Duration::from_millis(5),
    });
    let mut vhs = routes((80, 20));
    vhs[1].routes.insert(
        0,
        route(
            "dead",
            PathMatch::Prefix("/dead".into()),
            Action::Forward(to("dead")),
        ),
    );
    vhs[1].routes.insert(
        0,
        route(
            "half",
            PathMatch::Prefix("/half".into()),
            Action::Forward(half),
        ),
    );
    set_routes(&mut s.store, vhs);
    let client = h1_client();
    let got = get(&client, s.proxy, "svc", "/dead", &[]).await;
    assert_eq!(got.status.as_u16(), 503);
    assert!(got.body.contains("connect"), "{}", got.body);
    // Round robin alternates; a request landing on the dead endpoint is retried on the live one.
    for _ in 0..10 {
        let got = get(&client, s.proxy, "svc", "/half", &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "live"));
    }
}
