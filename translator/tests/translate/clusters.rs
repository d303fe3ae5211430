//! Services → Clusters.

use serde_json::json;
use switchboard_translator::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers::Thresholds, cluster,
};
use switchboard_translator::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, config_source,
};
use switchboard_translator::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use switchboard_translator::pb::google::protobuf::{Duration, UInt32Value};

use crate::common::{Mesh, decode, unpack};

fn cluster_of(service: serde_json::Value) -> Cluster {
    let res = Mesh::new().service("s", service).translate();
    decode(&res.clusters, "s")
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn secs(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

#[test]
fn eds_over_ads() {
    let c = cluster_of(json!({"port": 80}));
    assert_eq!(c.name, "s");
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32
        ))
    );
    assert_eq!(
        c.eds_cluster_config,
        Some(cluster::EdsClusterConfig {
            eds_config: Some(ConfigSource {
                resource_api_version: ApiVersion::V3 as i32,
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {}
                )),
                ..Default::default()
            }),
            service_name: String::new(),
        })
    );
    assert_eq!(c.circuit_breakers, None);
    assert_eq!(c.outlier_detection, None);
}

#[test]
fn lb_policies() {
    for (policy, expected) in [
        (None, cluster::LbPolicy::RoundRobin),
        (Some("round_robin"), cluster::LbPolicy::RoundRobin),
        (Some("least_request"), cluster::LbPolicy::LeastRequest),
        (Some("ring_hash"), cluster::LbPolicy::RingHash),
        (Some("random"), cluster::LbPolicy::Random),
    ] {
        let mut spec = json!({"port": 80});
        if let Some(p) = policy {
            spec["loadBalancing"] = json!(p);
        }
        assert_eq!(cluster_of(spec).lb_policy, expected as i32, "{policy:?}");
    }
}

#[test]
fn connect_timeout() {
    for (timeout, expected) in [
        (
            None,
            Duration {
                seconds: 5,
                nanos: 0,
            },
        ),
        (
            Some("1s"),
            Duration {
                seconds: 1,
                nanos: 0,
            },
        ),
        (
            Some("250ms"),
            Duration {
                seconds: 0,
                nanos: 250_000_000,
            },
        ),
    ] {
        let mut spec = json!({"port": 80});
        if let Some(t) = timeout {
            spec["connectTimeout"] = json!(t);
        }
        assert_eq!(
            cluster_of(spec).connect_timeout,
            Some(expected),
            "{timeout:?}"
        );
    }
}

#[test]
fn circuit_breakers() {
    for (cb, expected) in [
        (
            json!({"maxConnections": 100, "maxPendingRequests": 10, "maxRequests": 1000, "maxRetries": 3}),
            Thresholds {
                max_connections: u32v(100),
                max_pending_requests: u32v(10),
                max_requests: u32v(1000),
                max_retries: u32v(3),
                ..Default::default()
            },
        ),
        (
            json!({"maxRequests": 5}),
            Thresholds {
                max_requests: u32v(5),
                ..Default::default()
            },
        ),
    ] {
        let c = cluster_of(json!({"port": 80, "circuitBreaker": cb}));
        assert_eq!(
            c.circuit_breakers,
            Some(CircuitBreakers {
                thresholds: vec![expected],
                per_host_thresholds: vec![],
            })
        );
    }
}

#[test]
fn outlier_detection() {
    for (od, expected) in [
        (
            json!({"consecutive5xx": 5, "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 50}),
            OutlierDetection {
                consecutive_5xx: u32v(5),
                interval: secs(10),
                base_ejection_time: secs(30),
                max_ejection_percent: u32v(50),
                ..Default::default()
            },
        ),
        (
            json!({"consecutive5xx": 2}),
            OutlierDetection {
                consecutive_5xx: u32v(2),
                ..Default::default()
            },
        ),
        (json!({}), OutlierDetection::default()),
    ] {
        let c = cluster_of(json!({"port": 80, "outlierDetection": od.clone()}));
        assert_eq!(c.outlier_detection, Some(expected), "{od}");
    }
}

#[test]
fn http2_for_grpc_and_http2() {
    for (protocol, http2) in [
        ("http", false),
        ("tcp", false),
        ("http2", true),
        ("grpc", true),
    ] {
        let c = cluster_of(json!({"port": 80, "protocol": protocol}));
        if !http2 {
            assert!(c.typed_extension_protocol_options.is_empty(), "{protocol}");
            continue;
        }
        assert_eq!(c.typed_extension_protocol_options.len(), 1);
        let opts: HttpProtocolOptions = unpack(
            &c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        );
        assert!(
            matches!(
                opts.upstream_protocol_options,
                Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)
                        )
                    }
                ))
            ),
            "{protocol}: {opts:?}"
        );
    }
}
