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

use super::endpoint::{LoadAssignment, TransportLabels, load_assignment};
use super::listener::ads_source;
use super::tls::{UpstreamTls, upstream_socket};
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
    /// The cluster's `transport_socket`: TLS towards endpoints no entry of `tls_matches`
    /// selects; `None` is plaintext.
    pub tls: Option<UpstreamTls>,
    /// `transport_socket_matches` in order: the first whose labels are all in an endpoint's
    /// `envoy.transport_socket_match` metadata gives that endpoint's transport.
    pub tls_matches: Vec<TransportSocketMatch>,
}

/// One of a cluster's `transport_socket_matches`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportSocketMatch {
    pub name: String,
    pub labels: TransportLabels,
    /// `None`: plaintext.
    pub tls: Option<UpstreamTls>,
}

/// Which transport socket of a cluster an endpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportChoice {
    /// The cluster's own `transport_socket`.
    Default,
    /// `transport_socket_matches[i]`.
    Match(usize),
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
    /// Consistent hashing on a ketama ring (Envoy's RING_HASH, xxHash64 only); requests are
    /// hashed by their route's `hash_policy`.
    RingHash(RingHashConfig),
}

/// Envoy's `ring_hash_lb_config`: bounds on the number of ring entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingHashConfig {
    pub minimum_ring_size: u64,
    pub maximum_ring_size: u64,
}

impl RingHashConfig {
    /// Envoy's limit on both sizes (8M entries).
    pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
}

impl Default for RingHashConfig {
    /// Envoy's defaults: at least 1024 entries, at most 8M.
    fn default() -> Self {
        Self {
            minimum_ring_size: 1024,
            maximum_ring_size: Self::MAX_RING_SIZE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// Prior-knowledge HTTP/2 (h2c): gRPC and HTTP/2 services.
    Http2,
}

/// Default-priority thresholds, with Envoy's defaults for unset ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitBreakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// When set, replaces `max_retries`: concurrent retries are limited to a share of the
    /// active requests instead of a fixed number.
    pub retry_budget: Option<RetryBudget>,
}

/// Envoy's `retry_budget`: at most `max(min_retry_concurrency, budget_percent% of active
/// requests)` retries in flight at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// 0 to 100; Envoy's default is 20.
    pub budget_percent: f64,
    /// Envoy's default is 3.
    pub min_retry_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            budget_percent: 20.0,
            min_retry_concurrency: 3,
        }
    }
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

/// Consecutive-5xx ejection only; Envoy's success-rate and failure-percentage detectors are
/// not implemented (their fields are rejected).
///
/// An endpoint is ejected for `base_ejection_time` × the number of times it has been ejected
/// (decremented for every `interval` it stays in service), at most `max_ejection_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive 5xx (responses, connect failures, resets, timeouts) that eject; 0 never
    /// ejects.
    pub consecutive_5xx: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    /// Default: 300 s or `base_ejection_time`, whichever is larger.
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Chance (in %) that a detected outlier is actually ejected; Envoy's default is 100.
    pub enforcing_consecutive_5xx: u32,
    /// Eject one endpoint even when that exceeds `max_ejection_percent` (none being ejected).
    pub always_eject_one_host: bool,
}

impl Cluster {
    /// The transport socket for an endpoint with `labels`.
    pub fn transport_for(&self, labels: &TransportLabels) -> TransportChoice {
        self.tls_matches
            .iter()
            .position(|m| m.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .map_or(TransportChoice::Default, TransportChoice::Match)
    }

    /// The TLS configuration of `choice` (`None`: plaintext).
    pub fn tls_of(&self, choice: TransportChoice) -> Option<&UpstreamTls> {
        match choice {
            TransportChoice::Default => self.tls.as_ref(),
            TransportChoice::Match(i) => self.tls_matches.get(i).and_then(|m| m.tls.as_ref()),
        }
    }

    /// The SDS secrets of every transport socket.
    pub fn secret_names(&self) -> Vec<&str> {
        let matches = self.tls_matches.iter().filter_map(|m| m.tls.as_ref());
        self.tls
            .iter()
            .chain(matches)
            .flat_map(UpstreamTls::secret_names)
            .collect()
    }

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
                "ring_hash_lb_config",
                "circuit_breakers",
                "outlier_detection",
                "typed_extension_protocol_options",
                "transport_socket",
                "transport_socket_matches",
            ],
            &path,
        )?;
        let tls = c
            .transport_socket
            .as_ref()
            .map(|t| upstream_socket(t, &path.field("transport_socket")))
            .transpose()?
            .flatten();
        let tls_matches = c
            .transport_socket_matches
            .iter()
            .enumerate()
            .map(|(i, m)| transport_match(m, &path.index("transport_socket_matches", i)))
            .collect::<Result<Vec<_>, _>>()?;
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
            Ok(cluster::LbPolicy::RingHash) => {
                LbPolicy::RingHash(ring_hash(c.lb_config.as_ref(), &path)?)
            }
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
            tls,
            tls_matches,
        })
    }
}

fn transport_match(
    m: &cluster::TransportSocketMatch,
    path: &Path,
) -> Result<TransportSocketMatch, ConfigError> {
    check_fields(m, &["name", "match", "transport_socket"], path)?;
    let mut labels = TransportLabels::new();
    if let Some(s) = &m.r#match {
        for (key, value) in &s.fields {
            use switchboard_xds_proto::pb::google::protobuf::value::Kind;
            let text = match &value.kind {
                Some(Kind::StringValue(v)) => v.clone(),
                Some(Kind::BoolValue(v)) => v.to_string(),
                Some(Kind::NumberValue(v)) => v.to_string(),
                _ => {
                    return Err(path
                        .field(&format!("match.{key}"))
                        .err("only string, bool and number values are supported"));
                }
            };
            labels.insert(key.clone(), text);
        }
    }
    let tls = match &m.transport_socket {
        Some(t) => upstream_socket(t, &path.field("transport_socket"))?,
        None => return Err(path.field("transport_socket").err("required")),
    };
    Ok(TransportSocketMatch {
        name: m.name.clone(),
        labels,
        tls,
    })
}

/// The ring sizes of a RING_HASH cluster. A `ring_hash_lb_config` on a cluster of another
/// policy is ignored, as Envoy ignores it; other `lb_config`s are rejected by field name.
fn ring_hash(
    config: Option<&cluster::LbConfig>,
    path: &Path,
) -> Result<RingHashConfig, ConfigError> {
    use cluster::ring_hash_lb_config::HashFunction;
    let mut out = RingHashConfig::default();
    let Some(cluster::LbConfig::RingHashLbConfig(r)) = config else {
        return Ok(out);
    };
    let p = path.field("ring_hash_lb_config");
    check_fields(
        r,
        &["minimum_ring_size", "hash_function", "maximum_ring_size"],
        &p,
    )?;
    match HashFunction::try_from(r.hash_function) {
        Ok(HashFunction::XxHash) => {}
        Ok(HashFunction::MurmurHash2) => {
            return Err(p.field("hash_function").err(
                "MURMUR_HASH_2 is not supported (only XX_HASH, the default, places hosts on the ring)",
            ));
        }
        Err(_) => {
            return Err(p
                .field("hash_function")
                .err(format!("unknown hash function {}", r.hash_function)));
        }
    }
    if let Some(v) = &r.minimum_ring_size {
        out.minimum_ring_size = v.value;
    }
    if let Some(v) = &r.maximum_ring_size {
        out.maximum_ring_size = v.value;
    }
    for (field, v) in [
        ("minimum_ring_size", out.minimum_ring_size),
        ("maximum_ring_size", out.maximum_ring_size),
    ] {
        if v == 0 || v > RingHashConfig::MAX_RING_SIZE {
            return Err(p.field(field).err(format!(
                "{v} is out of range (1 to {})",
                RingHashConfig::MAX_RING_SIZE
            )));
        }
    }
    if out.minimum_ring_size > out.maximum_ring_size {
        return Err(p.err(format!(
            "minimum_ring_size ({}) is larger than maximum_ring_size ({})",
            out.minimum_ring_size, out.maximum_ring_size
        )));
    }
    Ok(out)
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
                "retry_budget",
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
        let retry_budget = t
            .retry_budget
            .as_ref()
            .map(|b| retry_budget(b, &p.field("retry_budget")))
            .transpose()?;
        out = CircuitBreakers {
            max_connections: get(&t.max_connections, out.max_connections),
            max_pending_requests: get(&t.max_pending_requests, out.max_pending_requests),
            max_requests: get(&t.max_requests, out.max_requests),
            max_retries: get(&t.max_retries, out.max_retries),
            retry_budget: retry_budget.or(out.retry_budget),
        };
    }
    Ok(out)
}

fn retry_budget(
    b: &switchboard_xds_proto::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget,
    path: &Path,
) -> Result<RetryBudget, ConfigError> {
    check_fields(b, &["budget_percent", "min_retry_concurrency"], path)?;
    let mut out = RetryBudget::default();
    if let Some(p) = &b.budget_percent {
        if !(0.0..=100.0).contains(&p.value) {
            return Err(path
                .field("budget_percent")
                .err(format!("{} is not a percentage (0 to 100)", p.value)));
        }
        out.budget_percent = p.value;
    }
    if let Some(m) = &b.min_retry_concurrency {
        out.min_retry_concurrency = m.value;
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
            "max_ejection_time",
            "max_ejection_percent",
            "enforcing_consecutive_5xx",
            "always_eject_one_host",
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
    let enforcing_consecutive_5xx = o
        .enforcing_consecutive_5xx
        .as_ref()
        .map_or(100, |v| v.value);
    if enforcing_consecutive_5xx > 100 {
        return Err(path
            .field("enforcing_consecutive_5xx")
            .err("must be at most 100"));
    }
    let base_ejection_time = dur(
        &o.base_ejection_time,
        "base_ejection_time",
        Duration::from_secs(30),
    )?;
    let max_ejection_time = dur(
        &o.max_ejection_time,
        "max_ejection_time",
        base_ejection_time.max(Duration::from_secs(300)),
    )?;
    if max_ejection_time < base_ejection_time {
        return Err(path.field("max_ejection_time").err(format!(
            "{max_ejection_time:?} is shorter than base_ejection_time ({base_ejection_time:?})"
        )));
    }
    Ok(OutlierDetection {
        consecutive_5xx: o.consecutive_5xx.as_ref().map_or(5, |v| v.value),
        interval: dur(&o.interval, "interval", Duration::from_secs(10))?,
        base_ejection_time,
        max_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        always_eject_one_host: o.always_eject_one_host.as_ref().is_some_and(|v| v.value),
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
