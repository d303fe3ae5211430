//! Service → Cluster `{service}`: EDS over ADS, with the service's load balancing, timeouts,
//! circuit breaking, outlier detection and upstream protocol.

use std::collections::HashMap;

use switchboard_model::ServiceSpec;
use switchboard_model::spec::{
    CircuitBreaker, LbPolicy, OutlierDetection as OutlierSpec, Protocol,
};

use crate::common::{ads, duration, u32_value};
use crate::names;
use crate::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers::Thresholds, cluster,
};
use crate::pb::envoy::config::core::v3::{Http2ProtocolOptions, RoutingPriority};
use crate::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use crate::pb::google::protobuf::Any;
use switchboard_xds_proto::pack;

/// Envoy's own default, written out so that every client (gRPC has no default of its own for
/// some fields) and every config dump shows the same value.
pub(crate) const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// The Cluster of a service.
pub(crate) fn service_cluster(name: &str, spec: &ServiceSpec) -> Cluster {
    Cluster {
        name: names::cluster(name),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        // An empty service_name means "the load assignment named after the cluster".
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        lb_policy: lb_policy(spec.load_balancing) as i32,
        connect_timeout: Some(
            spec.connect_timeout
                .map(duration)
                .unwrap_or_else(|| crate::common::millis(DEFAULT_CONNECT_TIMEOUT_MS)),
        ),
        circuit_breakers: spec.circuit_breaker.as_ref().map(circuit_breakers),
        outlier_detection: spec.outlier_detection.as_ref().map(outlier_detection),
        typed_extension_protocol_options: protocol_options(spec.protocol),
        ..Default::default()
    }
}

fn lb_policy(policy: LbPolicy) -> cluster::LbPolicy {
    match policy {
        LbPolicy::RoundRobin => cluster::LbPolicy::RoundRobin,
        LbPolicy::LeastRequest => cluster::LbPolicy::LeastRequest,
        LbPolicy::RingHash => cluster::LbPolicy::RingHash,
        LbPolicy::Random => cluster::LbPolicy::Random,
    }
}

/// One set of thresholds, for the default priority (the only one routes use).
fn circuit_breakers(cb: &CircuitBreaker) -> CircuitBreakers {
    CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: cb.max_connections.map(u32_value),
            max_pending_requests: cb.max_pending_requests.map(u32_value),
            max_requests: cb.max_requests.map(u32_value),
            max_retries: cb.max_retries.map(u32_value),
            ..Default::default()
        }],
        per_host_thresholds: vec![],
    }
}

fn outlier_detection(od: &OutlierSpec) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: od.consecutive_5xx.map(u32_value),
        interval: od.interval.map(duration),
        base_ejection_time: od.base_ejection_time.map(duration),
        max_ejection_percent: od.max_ejection_percent.map(u32_value),
        ..Default::default()
    }
}

/// HTTP/2 towards the endpoints for gRPC and HTTP/2 services (h2c: the mesh's plaintext hop);
/// nothing for HTTP/1 and TCP, which are Envoy's defaults.
pub(crate) fn protocol_options(protocol: Protocol) -> HashMap<String, Any> {
    let mut options = HashMap::new();
    if protocol.is_http2() {
        let http2 = HttpProtocolOptions {
            upstream_protocol_options: Some(
                http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                Http2ProtocolOptions::default(),
                            ),
                        ),
                    },
                ),
            ),
            ..Default::default()
        };
        // A single entry: see `hash` on why maps must not have more.
        options.insert(names::HTTP_PROTOCOL_OPTIONS.to_owned(), pack(&http2));
    }
    options
}
