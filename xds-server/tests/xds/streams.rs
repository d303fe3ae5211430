//! Streams as load tools and real peers use them: half-closed right after the request (ghz),
//! reflection v1alpha, and the port's connection policy (keepalive, maximum age).

use std::collections::BTreeSet;
use std::time::Duration;

use prost::Message;
use switchboard_xds_proto::DiscoveryResponse;
use switchboard_xds_server::testing::{AdsClient, node, request, start_with};
use switchboard_xds_server::{ConnectionPolicy, MaxAge, XdsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

fn types(responses: &[DiscoveryResponse]) -> Vec<&str> {
    responses.iter().map(|r| r.type_url.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_stream_gets_its_initial_response_then_ends_ok() {
    let env = env().await;
    let mut client = env.client("prod", "ghz").await;
    client.subscribe(CDS, &[]).await.unwrap();
    client.half_close();
    let (responses, end) = client.until_end().await;
    assert_eq!(end.map_err(|s| s.to_string()), Ok(()));
    assert_eq!(types(&responses), [CDS]);
    assert_eq!(names(&responses[0]), ["pay"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_half_closed_after_several_types_gets_one_response_per_type() {
    let env = env().await;
    let mut client = env.client("prod", "ghz").await;
    client.subscribe(CDS, &[]).await.unwrap();
    client.subscribe(EDS, &["pay"]).await.unwrap();
    client.subscribe(LDS, &["pay:8080"]).await.unwrap();
    client.subscribe(RDS, &["pay:8080"]).await.unwrap();
    client.half_close();
    let (responses, end) = client.until_end().await;
    assert_eq!(end.map_err(|s| s.to_string()), Ok(()));
    let got: BTreeSet<&str> = types(&responses).into_iter().collect();
    assert_eq!(responses.len(), 4, "{:?}", types(&responses));
    assert_eq!(got, BTreeSet::from([CDS, EDS, LDS, RDS]));
    for r in &responses {
        assert!(!r.resources.is_empty(), "{}", debug_of(r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_half_closed_after_it_was_served_ends_ok_at_once() {
    let env = env().await;
    let (mut client, _) = env.cds_client("prod", "a").await;
    client.half_close();
    let (responses, end) = client.until_end().await;
    assert_eq!(end.map_err(|s| s.to_string()), Ok(()));
    assert!(responses.is_empty(), "{:?}", types(&responses));
}

/// Sends one request per run over a fresh grpcio channel, half-closes, and prints the
/// responses (hex) and the final code.
const GRPCIO_HALF_CLOSE: &str = r#"
import sys, grpc
addr, request, token, runs = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], int(sys.argv[4])
method = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
for run in range(runs):
    with grpc.insecure_channel(addr) as channel:
        call = channel.stream_stream(method)(iter([request]), timeout=20,
                                             metadata=[("authorization", "Bearer " + token)])
        try:
            for response in call:
                print("response", run, response.hex())
            print("end", run, call.code().name)
        except grpc.RpcError as e:
            print("end", run, e.code().name, e.details())
    sys.stdout.flush()
"#;

/// The grpcio runs of [`grpcio_half_closing_after_its_request_is_answered_every_time`].
const GRPCIO_RUNS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_half_closing_after_its_request_is_answered_every_time() {
    let Some(python) = std::env::var_os("SWITCHBOARD_TEST_PYTHON") else {
        let required = std::env::var("SWITCHBOARD_REQUIRE_PEERS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "SWITCHBOARD_REQUIRE_PEERS=1 but SWITCHBOARD_TEST_PYTHON is unset"
        );
        eprintln!("SWITCHBOARD_TEST_PYTHON unset: skipping the grpcio half-close test");
        return;
    };
    let env = env().await;
    let first = request(Some(&node("acme", "prod", "grpcio")), CDS, &[], "", "");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg("-c")
            .arg(GRPCIO_HALF_CLOSE)
            .arg(env.server.addr.to_string())
            .arg(hex::encode(first.encode_to_vec()))
            .arg(&env.token)
            .arg(GRPCIO_RUNS.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("grpcio runs within 120 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut answered = vec![0usize; GRPCIO_RUNS];
    let mut ends = Vec::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["response", run, bytes] => {
                let r = DiscoveryResponse::decode(hex::decode(bytes).unwrap().as_slice()).unwrap();
                assert_eq!(r.type_url, CDS);
                assert_eq!(names(&r), ["pay"]);
                answered[run.parse::<usize>().unwrap()] += 1;
            }
            ["end", _, code, ..] => ends.push(code.to_string()),
            _ => panic!("unexpected output: {line}"),
        }
    }
    assert_eq!(
        answered,
        vec![1; GRPCIO_RUNS],
        "responses per run\n{stdout}"
    );
    assert_eq!(ends, vec!["OK"; GRPCIO_RUNS], "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1alpha_lists_ads_and_resolves_its_file() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let env = env().await;
    let channel = tonic::transport::Endpoint::from_shared(env.server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let ads = switchboard_xds_proto::service_name::AGGREGATED_DISCOVERY;
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol(ads.to_owned()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let listed = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("{listed:?}");
    };
    let services: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(services.contains(&ads), "{services:?}");
    let file = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
        panic!("{file:?}");
    };
    let descriptors: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .collect();
    let declares_ads = descriptors.iter().any(|f| {
        f.package() == "envoy.service.discovery.v3"
            && f.service
                .iter()
                .any(|s| s.name() == "AggregatedDiscoveryService")
    });
    assert!(
        declares_ads,
        "{:?}",
        descriptors.iter().map(|f| f.name()).collect::<Vec<_>>()
    );
}

/// A server of `env`'s store with `connections` as its connection policy.
async fn server_with(
    connections: ConnectionPolicy,
) -> (switchboard_xds_server::testing::TestServer, Env) {
    let env = env().await;
    let server = start_with(
        env.store.clone(),
        XdsConfig {
            debounce: Duration::from_millis(5),
            register_sidecars: false,
            connections,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    (server, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_dropped() {
    let (server, _env) = server_with(ConnectionPolicy {
        keepalive_interval: Some(Duration::from_millis(200)),
        keepalive_timeout: Duration::from_millis(200),
        max_age: None,
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame; then silence: no SETTINGS ACK, no
    // PING ACK, no reading.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    // The server pings, gets no answer, and closes: the socket reaches its end.
    let mut sent = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut sent)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the dead connection was still open after 20 s"
    );
    // Among what the server sent before closing: a PING (frame type 6).
    assert!(frame_types(&sent).contains(&6), "{:?}", frame_types(&sent));
}

/// The types of the HTTP/2 frames in `bytes` (a server's side of a connection).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        types.push(bytes[at + 3]);
        at += 9 + length;
    }
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_its_age_is_sent_goaway_and_its_client_reconnects() {
    let (server, env) = server_with(ConnectionPolicy {
        keepalive_interval: None,
        keepalive_timeout: Duration::from_secs(20),
        max_age: Some(MaxAge {
            age: Duration::from_millis(500),
            jitter: Duration::from_millis(100),
            grace: Duration::from_millis(500),
        }),
    })
    .await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AdsClient::over(
        channel.clone(),
        node("acme", "prod", "aged"),
        Some(&env.token),
    )
    .await
    .unwrap();
    client.subscribe(CDS, &[]).await.unwrap();
    let first = client.recv_and_ack(&[]).await.unwrap();
    // The stream outlives neither the age nor the grace: it ends, and not for a reason of
    // its own (OK or UNAVAILABLE, as a closed connection reads to gRPC).
    let (_, end) = client.until_end().await;
    if let Err(status) = end {
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            "{status:?}"
        );
        assert_ne!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    }
    // The same channel reconnects (its first call may still see the closed connection, as
    // any gRPC client's may, and is retried) and is served again.
    let mut last = None;
    for _ in 0..5 {
        let attempt = async {
            let mut again = AdsClient::over(
                channel.clone(),
                node("acme", "prod", "aged"),
                Some(&env.token),
            )
            .await?;
            again.subscribe(CDS, &[]).await?;
            again.recv().await
        };
        match attempt.await {
            Ok(second) => {
                assert_eq!(second.version_info, first.version_info);
                return;
            }
            Err(status) => last = Some(status),
        }
    }
    panic!("no reconnect in 5 attempts: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_each_get_their_initial_response_with_one_push_at_a_time() {
    let env = env().await;
    let server = start_with(
        env.store.clone(),
        XdsConfig {
            debounce: Duration::from_millis(5),
            register_sidecars: false,
            max_concurrent_initial_pushes: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = AdsClient::connect(
            &server.url(),
            node("acme", "prod", &format!("n{i}")),
            Some(&env.token),
        )
        .await
        .unwrap();
        c.subscribe(CDS, &[]).await.unwrap();
        c.subscribe(EDS, &["pay"]).await.unwrap();
        c.half_close();
        clients.push(c);
    }
    for c in &mut clients {
        let (responses, end) = c.until_end().await;
        assert_eq!(end.map_err(|s| s.to_string()), Ok(()));
        let got: BTreeSet<&str> = types(&responses).into_iter().collect();
        assert_eq!(got, BTreeSet::from([CDS, EDS]));
        assert_eq!(responses.len(), 2);
    }
}
