//! Cluster: how endpoints are found (EDS over ADS, or STATIC), balanced, limited (circuit
//! breakers), ejected (outlier detection) and spoken to (HTTP/1.1 or HTTP/2).

use std::collections::HashMap;
use std::time::Duration;

use switchboard_xds_proto::pb::envoy::config::cluster::v3::{
    CircuitBreakers as PbCircuitBreakers, Cluster as PbCluster,
    OutlierDetection as PbOutlierDetection, cluster,
};
use switchboard_xds_proto::pb::envoy::config::core::v3::RoutingPriority;
use switchboard_xds_proto::pb::envoy::extensions::upstreams::http::v3::http_protocol_options;
use switchboard_xds_proto::pb::google::protobuf::Any;
use switchboard_xds_proto::{HttpProtocolOptions, type_url, unpack};

use super::endpoint::{LoadAssignment, load_assignment};
use super::listener::ads_source;
use super::{ConfigError, Path, check_fields, duration};

/// The key of the upstream HTTP options in `typed_extension_protocol_options`.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub circuit_breakers: CircuitBreakers,
    pub outlier_detection: Option<OutlierDetection>,
    pub protocol: UpstreamProtocol,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// Endpoints come over EDS, as the load assignment named `service_name`.
    Eds {
        service_name: String,
    },
    Static(LoadAssignment),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// Prior-knowledge HTTP/2 (h2c): gRPC and HTTP/2 services.
    Http2,
}

/// Default-priority thresholds, with Envoy's defaults for unset ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// Consecutive-5xx ejection only; Envoy's success-rate and failure-percentage detectors are
/// not implemented (their fields are rejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl Cluster {
    /// The load assignment this cluster needs over EDS, if any.
    pub fn eds_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            Discovery::Static(_) => None,
        }
    }
}

impl TryFrom<PbCluster> for Cluster {
    type Error = ConfigError;

    fn try_from(c: PbCluster) -> Result<Self, ConfigError> {
        let path = Path::root("cluster", &c.name);
        check_fields(
            &c,
            &[
                "name",
                "type",
                "eds_cluster_config",
                "load_assignment",
                "lb_policy",
                "connect_timeout",
                "circuit_breakers",
                "outlier_detection",
                "typed_extension_protocol_options",
            ],
            &path,
        )?;
        let kind = match c.cluster_discovery_type {
            Some(cluster::ClusterDiscoveryType::Type(t)) => {
                cluster::DiscoveryType::try_from(t).ok()
            }
            None => Some(cluster::DiscoveryType::Static),
            Some(_) => None,
        };
        let discovery = match (kind, c.eds_cluster_config, c.load_assignment) {
            (Some(cluster::DiscoveryType::Eds), Some(eds), None) => {
                let p = path.field("eds_cluster_config");
                check_fields(&eds, &["eds_config", "service_name"], &p)?;
                ads_source(eds.eds_config.as_ref(), &p.field("eds_config"))?;
                let service_name = if eds.service_name.is_empty() {
                    c.name.clone()
                } else {
                    eds.service_name
                };
                Discovery::Eds { service_name }
            }
            (Some(cluster::DiscoveryType::Eds), None, _) => {
                return Err(path.err("an EDS cluster needs eds_cluster_config with an ADS source"));
            }
            (Some(cluster::DiscoveryType::Static), None, Some(la)) => {
                Discovery::Static(load_assignment(la, &path.field("load_assignment"))?)
            }
            (Some(cluster::DiscoveryType::Static), _, None) => {
                return Err(path.err("a STATIC cluster needs load_assignment"));
            }
            _ => {
                return Err(path.field("type").err(
                    "only EDS (with eds_cluster_config) and STATIC (with load_assignment) are supported",
                ));
            }
        };
        let lb_policy = match cluster::LbPolicy::try_from(c.lb_policy) {
            Ok(cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
            Ok(cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
            Ok(cluster::LbPolicy::Random) => LbPolicy::Random,
            Ok(cluster::LbPolicy::RingHash) => LbPolicy::RingHash,
            Ok(other) => {
                return Err(path
                    .field("lb_policy")
                    .err(format!("unsupported lb_policy {}", other.as_str_name())));
            }
            Err(_) => return Err(path.field("lb_policy").err("unknown lb_policy")),
        };
        let connect_timeout = match &c.connect_timeout {
            Some(d) => duration(d, &path.field("connect_timeout"))?,
            None => Duration::from_secs(5),
        };
        let circuit_breakers = match &c.circuit_breakers {
            Some(cb) => circuit_breakers(cb, &path.field("circuit_breakers"))?,
            None => CircuitBreakers::default(),
        };
        let outlier_detection = c
            .outlier_detection
            .as_ref()
            .map(|o| outlier(o, &path.field("outlier_detection")))
            .transpose()?;
        let protocol = protocol(&c.typed_extension_protocol_options, &path)?;
        Ok(Cluster {
            name: c.name,
            discovery,
            lb_policy,
            connect_timeout,
            circuit_breakers,
            outlier_detection,
            protocol,
        })
    }
}

fn circuit_breakers(cb: &PbCircuitBreakers, path: &Path) -> Result<CircuitBreakers, ConfigError> {
    check_fields(cb, &["thresholds"], path)?;
    let mut out = CircuitBreakers::default();
    for (i, t) in cb.thresholds.iter().enumerate() {
        let p = path.index("thresholds", i);
        check_fields(
            t,
            &[
                "priority",
                "max_connections",
                "max_pending_requests",
                "max_requests",
                "max_retries",
            ],
            &p,
        )?;
        // Routes only use the default priority; HIGH thresholds have nothing to limit.
        if t.priority != RoutingPriority::Default as i32 {
            continue;
        }
        let get = |v: &Option<switchboard_xds_proto::pb::google::protobuf::UInt32Value>, d| {
            v.as_ref().map_or(d, |v| v.value)
        };
        out = CircuitBreakers {
            max_connections: get(&t.max_connections, out.max_connections),
            max_pending_requests: get(&t.max_pending_requests, out.max_pending_requests),
            max_requests: get(&t.max_requests, out.max_requests),
            max_retries: get(&t.max_retries, out.max_retries),
        };
    }
    Ok(out)
}

fn outlier(o: &PbOutlierDetection, path: &Path) -> Result<OutlierDetection, ConfigError> {
    check_fields(
        o,
        &[
            "consecutive_5xx",
            "interval",
            "base_ejection_time",
            "max_ejection_percent",
        ],
        path,
    )?;
    let dur = |d: &Option<switchboard_xds_proto::pb::google::protobuf::Duration>,
               field: &str,
               default: Duration| {
        d.as_ref()
            .map_or(Ok(default), |d| duration(d, &path.field(field)))
    };
    let max_ejection_percent = o.max_ejection_percent.as_ref().map_or(10, |v| v.value);
    if max_ejection_percent > 100 {
        return Err(path
            .field("max_ejection_percent")
            .err("must be at most 100"));
    }
    Ok(OutlierDetection {
        consecutive_5xx: o.consecutive_5xx.as_ref().map_or(5, |v| v.value),
        interval: dur(&o.interval, "interval", Duration::from_secs(10))?,
        base_ejection_time: dur(
            &o.base_ejection_time,
            "base_ejection_time",
            Duration::from_secs(30),
        )?,
        max_ejection_percent,
    })
}

fn protocol(options: &HashMap<String, Any>, path: &Path) -> Result<UpstreamProtocol, ConfigError> {
    use http_protocol_options::{
        UpstreamProtocolOptions as U, explicit_http_config::ProtocolConfig as P,
    };
    let mut protocol = UpstreamProtocol::Http1;
    for (key, any) in options {
        let p = path.field(&format!("typed_extension_protocol_options[{key:?}]"));
        if key != HTTP_PROTOCOL_OPTIONS || any.type_url != type_url::HTTP_PROTOCOL_OPTIONS {
            return Err(p.err(format!("unsupported protocol options {}", any.type_url)));
        }
        let o = unpack::<HttpProtocolOptions>(any).map_err(|e| p.err(e.to_string()))?;
        check_fields(&o, &["explicit_http_config"], &p)?;
        protocol = match o.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(c)) => match c.protocol_config {
                Some(P::Http2ProtocolOptions(h2)) => {
                    check_fields(
                        &h2,
                        &[],
                        &p.field("explicit_http_config.http2_protocol_options"),
                    )?;
                    UpstreamProtocol::Http2
                }
                Some(P::HttpProtocolOptions(_)) | None => UpstreamProtocol::Http1,
                Some(P::Http3ProtocolOptions(_)) => {
                    return Err(p.err("HTTP/3 upstreams are not supported"));
                }
            },
            _ => return Err(p.err("only explicit_http_config is supported")),
        };
    }
    Ok(protocol)
}
