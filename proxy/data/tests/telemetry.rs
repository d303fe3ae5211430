//! Data-path telemetry over real sockets: W3C trace context propagation, access log lines,
//! Prometheus metrics and OTLP span export, against a proxy on 127.0.0.1.
//!
//! The access log format, the tracing subscriber and the metrics recorder are process-wide,
//! so this binary installs them once ([`observed`]): a subscriber whose access log lines go
//! to a buffer and whose spans go over OTLP to a collector running in this test, and a
//! Prometheus recorder. Tests keep their label sets apart by virtual host and cluster names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry_proto::tonic::common::v1::any_value::Value as OtlpValue;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use switchboard_proxy_data::telemetry::{self, AccessLog, OtlpGuard, TelemetryError, TraceParent};
use switchboard_proxy_xds::ConfigStore;
use switchboard_proxy_xds::config::cluster::UpstreamProtocol;
use switchboard_proxy_xds::config::route::{Abort, Action, Fault, PathMatch, RetryPolicy};
use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

use support::*;

/// Every access log line of this binary: the test id, then what the test checks.
const LOG_FORMAT: &str = "%REQ(X-TEST-ID)% %REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% \
    %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% %ROUTE_NAME% \
    %RESP(X-ECHO-NAME):4% %UPSTREAM_HOST% %TRACE_ID%";

/// What the process-wide telemetry of this binary records.
struct Observed {
    logs: Arc<Mutex<Vec<u8>>>,
    spans: Arc<Mutex<Vec<OtlpSpan>>>,
    prometheus: PrometheusHandle,
    otlp: OtlpGuard,
}

/// Installs the access log format, the subscriber (access log lines to a buffer, spans
/// over OTLP to an in-test collector) and the Prometheus recorder, once.
fn observed() -> &'static Observed {
    static OBSERVED: OnceLock<Observed> = OnceLock::new();
    OBSERVED.get_or_init(|| {
        telemetry::set_access_log(AccessLog::parse(LOG_FORMAT).unwrap());

        // The collector and the OTLP channel live on a runtime of their own, so that they
        // outlive each test's runtime.
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let collected = spans.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let endpoint = collector(collected).await;
                tx.send(telemetry::otlp_layer(
                    &endpoint.to_string(),
                    "telemetry-test",
                ))
                .unwrap();
                std::future::pending::<()>().await;
            });
        });
        let (otlp_layer, otlp) = rx.recv().unwrap().unwrap();

        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let access_log = tracing_subscriber::fmt::layer()
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .with_writer(move || Buffer(sink.clone()))
            .with_filter(Targets::new().with_target(telemetry::ACCESS_LOG_TARGET, Level::INFO));
        let subscriber = tracing_subscriber::registry()
            .with(
                otlp_layer
                    .with_filter(Targets::new().with_target("switchboard_proxy_data", Level::INFO)),
            )
            .with(access_log);
        tracing::subscriber::set_global_default(subscriber).unwrap();

        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(telemetry::REQUEST_DURATION_SECONDS.into()),
                telemetry::LATENCY_BUCKETS,
            )
            .unwrap()
            .build_recorder();
        let prometheus = recorder.handle();
        metrics::set_global_recorder(recorder).unwrap();
        telemetry::describe_metrics();

        Observed {
            logs,
            spans,
            prometheus,
            otlp,
        }
    })
}

struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An OTLP/gRPC trace collector on 127.0.0.1 keeping every span it receives.
async fn collector(spans: Arc<Mutex<Vec<OtlpSpan>>>) -> SocketAddr {
    switchboard_runtime::collector::start(spans).await.unwrap()
}

/// A backend echoing the trace headers it received (`x-echo-traceparent`,
/// `x-echo-tracestate`) and its name (`x-echo-name`), with body `ok`; `/status/503`
/// answers 503.
async fn echo_backend(name: &'static str) -> SocketAddr {
    serve_backend(move |req: Request<Incoming>| async move {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")).boxed_unsync());
        if req.uri().path() == "/status/503" {
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        let h = resp.headers_mut();
        h.insert("x-echo-name", name.parse().unwrap());
        for (from, to) in [
            ("traceparent", "x-echo-traceparent"),
            ("tracestate", "x-echo-tracestate"),
        ] {
            let values: Vec<&str> = req
                .headers()
                .get_all(from)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            if !values.is_empty() {
                h.insert(to, values.join(" | ").parse().unwrap());
            }
        }
        resp
    })
    .await
}

/// A proxy for listener `http` in front of an echo backend: virtual host `vhost` (domain
/// `<vhost>.test` and `*`) with routes `echo` (`/echo…` to `cluster`), `retry` (`/status/…`, one
/// retry on 5xx), `fault` (`/fault`, a 503 abort), `delay` (`/delay`, a 1 ms delay),
/// `down` (`/down`, a cluster on a closed port) and `empty` (`/empty`, a cluster without
/// endpoints); anything else has no route. Returns the proxy's and the backend's addresses.
async fn start(vhost_name: &str, cluster: &str) -> (SocketAddr, SocketAddr) {
    let backend = echo_backend("echo-backend").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut store = ConfigStore::new();
    let down = format!("{cluster}-down");
    let empty = format!("{cluster}-empty");
    set_cluster(&mut store, cluster, UpstreamProtocol::Http1, &[backend]);
    set_cluster(&mut store, &down, UpstreamProtocol::Http1, &[closed]);
    set_cluster(&mut store, &empty, UpstreamProtocol::Http1, &[]);
    let mut retry = to(cluster);
    retry.retry = Some(RetryPolicy {
        retry_on: vec!["5xx".into()],
        num_retries: 1,
        per_try_timeout: None,
        retriable_status_codes: vec![],
        base_interval: Duration::from_millis(1),
        max_interval: Duration::from_millis(2),
    });
    let mut fault = route(
        "fault",
        PathMatch::Exact("/fault".into()),
        Action::Forward(to(cluster)),
    );
    fault.fault = Some(Fault {
        delay: None,
        abort: Some((Abort::Http(503), 1_000_000)),
    });
    let mut delay = route(
        "delay",
        PathMatch::Exact("/delay".into()),
        Action::Forward(to(cluster)),
    );
    delay.fault = Some(Fault {
        delay: Some((Duration::from_millis(1), 1_000_000)),
        abort: None,
    });
    let routes = vec![
        route(
            "echo",
            PathMatch::Prefix("/echo".into()),
            Action::Forward(to(cluster)),
        ),
        route(
            "retry",
            PathMatch::Prefix("/status/".into()),
            Action::Forward(retry),
        ),
        fault,
        delay,
        route(
            "down",
            PathMatch::Exact("/down".into()),
            Action::Forward(to(&down)),
        ),
        route(
            "empty",
            PathMatch::Exact("/empty".into()),
            Action::Forward(to(&empty)),
        ),
    ];
    let domain = format!("{vhost_name}.test");
    // `*` too: the HTTP/2 client sends the socket address as :authority.
    set_routes(&mut store, vec![vhost(vhost_name, &[&domain, "*"], routes)]);
    set_listener(&mut store);
    // The proxy serves a clone of the store.
    (proxy(&store).await, backend)
}

/// The `traceparent` the backend received, parsed.
fn forwarded(got: &Got) -> TraceParent {
    let value = got
        .headers
        .get("x-echo-traceparent")
        .expect("the backend received no traceparent")
        .to_str()
        .unwrap();
    TraceParent::parse(value).unwrap_or_else(|| panic!("invalid forwarded traceparent {value:?}"))
}

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn traceparent_continues_the_callers_trace() {
    observed();
    let (proxy, _) = start("trace-continue", "trace-continue").await;
    let caller = TraceParent::parse(CALLER).unwrap();
    for client in [h1_client(), h2_client()] {
        let got = get(
            &client,
            proxy,
            "trace-continue.test",
            "/echo",
            &[("traceparent", CALLER), ("tracestate", "vendor=abc")],
        )
        .await;
        assert_eq!(got.status, StatusCode::OK);
        let sent = forwarded(&got);
        assert_eq!(sent.trace_id(), caller.trace_id(), "same trace");
        assert_ne!(
            sent.parent_id(),
            caller.parent_id(),
            "the proxy's span is the parent"
        );
        assert!(sent.sampled(), "the caller's sampling decision is kept");
        assert_eq!(got.headers["x-echo-tracestate"], "vendor=abc");
    }
    // An unsampled caller stays unsampled.
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let got = get(
        &h1_client(),
        proxy,
        "trace-continue.test",
        "/echo",
        &[("traceparent", unsampled)],
    )
    .await;
    let sent = forwarded(&got);
    assert_eq!(sent.trace_id(), caller.trace_id());
    assert!(!sent.sampled());
}

#[tokio::test]
async fn traceparent_is_started_when_absent_or_invalid() {
    observed();
    let (proxy, _) = start("trace-new", "trace-new").await;
    let client = h1_client();
    let got = get(&client, proxy, "trace-new.test", "/echo", &[]).await;
    let first = forwarded(&got);
    assert!(first.sampled(), "new traces are sampled by default");
    assert!(!got.headers.contains_key("x-echo-tracestate"));
    let got = get(&client, proxy, "trace-new.test", "/echo", &[]).await;
    assert_ne!(
        forwarded(&got).trace_id(),
        first.trace_id(),
        "a new trace each time"
    );

    let invalid = [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "not a traceparent",
    ];
    let caller = TraceParent::parse(CALLER).unwrap();
    for value in invalid {
        let got = get(
            &client,
            proxy,
            "trace-new.test",
            "/echo",
            &[("traceparent", value), ("tracestate", "vendor=abc")],
        )
        .await;
        let sent = forwarded(&got);
        assert_ne!(sent.to_string(), value, "{value}");
        assert_ne!(sent.trace_id(), caller.trace_id(), "{value}");
        assert!(
            !got.headers.contains_key("x-echo-tracestate"),
            "{value}: the state of an invalid trace is dropped"
        );
        assert_eq!(got.headers.get_all("x-echo-traceparent").iter().count(), 1);
    }
}

/// Without an OpenTelemetry layer (here: no subscriber at all on this thread) the proxy
/// makes the ids itself.
#[tokio::test(flavor = "current_thread")]
async fn traceparent_without_a_tracing_subscriber() {
    observed();
    let _none = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    let (proxy, _) = start("trace-bare", "trace-bare").await;
    let caller = TraceParent::parse(CALLER).unwrap();
    let got = get(
        &h1_client(),
        proxy,
        "trace-bare.test",
        "/echo",
        &[("traceparent", CALLER)],
    )
    .await;
    let sent = forwarded(&got);
    assert_eq!(sent.trace_id(), caller.trace_id());
    assert_ne!(sent.parent_id(), caller.parent_id());
    let got = get(&h1_client(), proxy, "trace-bare.test", "/echo", &[]).await;
    assert!(forwarded(&got).sampled());
}

/// Waits for the access log line of request `id` (lines are written when the response
/// body ends, on the proxy's task).
async fn log_line(id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8(observed().logs.lock().unwrap().clone()).unwrap();
        if let Some(line) = text.lines().find(|l| l.starts_with(&format!("{id} "))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for {id}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn access_log_renders_the_template() {
    observed();
    let (proxy, backend) = start("log", "log").await;
    // (id, client, path, status, flags, cluster, route, x-echo-name)
    let cases = [
        (
            "log-h1",
            h1_client(),
            "/echo/x?q=1",
            200,
            "-",
            "log",
            "echo",
            "echo",
        ),
        (
            "log-h2",
            h2_client(),
            "/echo",
            200,
            "-",
            "log",
            "echo",
            "echo",
        ),
        ("log-nr", h1_client(), "/nowhere", 404, "NR", "-", "-", "-"),
        (
            "log-fi",
            h1_client(),
            "/fault",
            503,
            "FI",
            "-",
            "fault",
            "-",
        ),
        (
            "log-di",
            h1_client(),
            "/delay",
            200,
            "DI",
            "log",
            "delay",
            "echo",
        ),
        (
            "log-uf",
            h1_client(),
            "/down",
            503,
            "UF",
            "log-down",
            "down",
            "-",
        ),
        (
            "log-uh",
            h1_client(),
            "/empty",
            503,
            "UH",
            "log-empty",
            "empty",
            "-",
        ),
        (
            "log-urx",
            h1_client(),
            "/status/503",
            503,
            "URX",
            "log",
            "retry",
            "echo",
        ),
    ];
    for (id, client, path, status, flags, cluster, route, name) in cases {
        let got = get(&client, proxy, "log.test", path, &[("x-test-id", id)]).await;
        assert_eq!(got.status.as_u16(), status, "{id}: {}", got.body);
        let line = log_line(id).await;
        let (head, trace_id) = line.rsplit_once(' ').unwrap();
        let protocol = if id == "log-h2" { "HTTP/2" } else { "HTTP/1.1" };
        let bytes = got.body.len();
        let host = if name == "-" {
            "-".to_owned()
        } else {
            backend.to_string()
        };
        assert_eq!(
            head,
            format!(
                "{id} GET {path} {protocol} {status} {flags} 0 {bytes} {cluster} {route} {name} {host}"
            ),
        );
        if got.headers.contains_key("x-echo-traceparent") {
            assert_eq!(trace_id, hex(&forwarded(&got).trace_id()), "{id}");
        } else {
            assert!(
                trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}: {trace_id}"
            );
        }
    }
}

/// `%BYTES_RECEIVED%` counts the body bytes read, also when the request declares no length.
#[tokio::test]
async fn access_log_counts_a_chunked_request_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    observed();
    let (proxy, backend) = start("chunked", "chunked").await;
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: chunked.test\r\nx-test-id: log-chunked\r\n\
          transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let line = log_line("log-chunked").await;
    let (head, _trace_id) = line.rsplit_once(' ').unwrap();
    assert_eq!(
        head,
        format!("log-chunked POST /echo HTTP/1.1 200 - 11 2 chunked echo echo {backend}")
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn unknown_access_log_operators_are_rejected() {
    let e = AccessLog::parse("[%START_TIME%] %REQ(:PATH)% %UPSTREAM_HOSTNAME%").unwrap_err();
    assert!(
        matches!(&e, TelemetryError::AccessLogFormat { offset: 28, message }
            if message == "unknown command operator %UPSTREAM_HOSTNAME%"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "access log format, at byte 28: unknown command operator %UPSTREAM_HOSTNAME%"
    );
    assert!(AccessLog::parse("%REQ%").is_err());
    assert!(AccessLog::parse("%RESPONSE_CODE").is_err());
    assert!(AccessLog::parse("default").is_ok());
    assert!(telemetry::set_trace_sampling_ratio(1.5).is_err());
    assert!(telemetry::set_trace_sampling_ratio(f64::NAN).is_err());
}

/// The samples of metric `name` in Prometheus text, by label set.
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            Some((labels, value.trim().parse().unwrap()))
        })
        .collect()
}

fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = want
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples(text, name)
        .into_iter()
        .find(|(labels, _)| *labels == want)
        .map(|(_, v)| v)
}

#[tokio::test]
async fn requests_are_counted_by_labels() {
    let o = observed();
    let (proxy, _) = start("metrics", "metrics").await;
    let client = h1_client();
    for _ in 0..3 {
        let got = get(&client, proxy, "metrics.test", "/echo", &[]).await;
        assert_eq!(got.status, StatusCode::OK);
    }
    let got = get(&client, proxy, "metrics.test", "/nowhere", &[]).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    let got = get(&client, proxy, "metrics.test", "/empty", &[]).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);

    let text = o.prometheus.render();
    let labels = |cluster, class| {
        [
            ("listener", "http"),
            ("route_config", "main"),
            ("virtual_host", "metrics"),
            ("cluster", cluster),
            ("code_class", class),
        ]
    };
    let total = telemetry::REQUESTS_TOTAL;
    assert_eq!(
        sample(&text, total, &labels("metrics", "2xx")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, total, &labels("", "4xx")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, total, &labels("metrics-empty", "5xx")),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains(&format!("# HELP {total} ")), "{text}");

    let duration = telemetry::REQUEST_DURATION_SECONDS;
    let by = [("listener", "http"), ("cluster", "metrics")];
    assert_eq!(
        sample(&text, &format!("{duration}_count"), &by),
        Some(3.0),
        "{text}"
    );
    let le = |b: &'static str| [("listener", "http"), ("cluster", "metrics"), ("le", b)];
    assert_eq!(
        sample(&text, &format!("{duration}_bucket"), &le("30")),
        Some(3.0),
        "{text}"
    );
    assert!(
        sample(&text, &format!("{duration}_bucket"), &le("0.0005")).is_some(),
        "the configured buckets are used: {text}"
    );
    assert!(
        sample(&text, telemetry::ACTIVE_REQUESTS, &[("listener", "http")]).is_some(),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_in_the_callers_trace() {
    let o = observed();
    let (proxy, _) = start("otlp", "otlp").await;
    let caller = TraceParent::parse(CALLER).unwrap();
    let got = get(
        &h1_client(),
        proxy,
        "otlp.test",
        "/echo/otlp",
        &[("traceparent", CALLER)],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let sent = forwarded(&got);

    let deadline = Instant::now() + Duration::from_secs(20);
    let span = loop {
        o.otlp.flush().unwrap();
        let found = o
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == "proxy_request" && s.span_id == sent.parent_id())
            .cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(
            Instant::now() < deadline,
            "the collector got no proxy_request span"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(span.trace_id, caller.trace_id(), "the caller's trace");
    assert_eq!(
        span.parent_span_id,
        caller.parent_id(),
        "the caller's span is the parent"
    );
    let attr = |key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.clone())
    };
    assert_eq!(
        attr("path"),
        Some(OtlpValue::StringValue("/echo/otlp".into()))
    );
    assert_eq!(attr("route"), Some(OtlpValue::StringValue("echo".into())));
    assert_eq!(attr("cluster"), Some(OtlpValue::StringValue("otlp".into())));
    assert_eq!(attr("status"), Some(OtlpValue::IntValue(200)));
    assert_eq!(
        attr("trace_id"),
        Some(OtlpValue::StringValue(hex(&caller.trace_id())))
    );
}
