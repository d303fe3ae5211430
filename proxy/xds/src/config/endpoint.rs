//! ClusterLoadAssignment: endpoints grouped by locality and priority, with weights and health.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use switchboard_xds_proto::pb::envoy::config::core::v3::{HealthStatus, Metadata};
use switchboard_xds_proto::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use switchboard_xds_proto::pb::google::protobuf::value::Kind;

use super::{ConfigError, Path, check_fields, socket_addr};

#[derive(Debug, Clone, PartialEq)]
pub struct LoadAssignment {
    pub cluster_name: String,
    pub localities: Vec<LocalityEndpoints>,
}

/// Endpoints of one locality at one priority (0 is the highest).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityEndpoints {
    pub locality: Locality,
    pub priority: u32,
    /// Locality-weighted balancing applies only when every locality has a weight.
    pub weight: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: u32,
    pub health: Health,
    /// The endpoint's `envoy.transport_socket_match` metadata, which picks its cluster's
    /// transport socket (TLS or plaintext); string, bool and number values as text.
    pub transport_labels: TransportLabels,
}

/// Labels matched by a cluster's `transport_socket_matches`.
pub type TransportLabels = BTreeMap<String, String>;

/// The metadata namespace Envoy matches transport sockets against.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// Envoy's health statuses folded into what routing needs: only `Healthy` endpoints take
/// traffic while any are healthy (Envoy treats UNKNOWN as healthy, and so do we).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    Draining,
    Degraded,
}

impl TryFrom<ClusterLoadAssignment> for LoadAssignment {
    type Error = ConfigError;

    fn try_from(cla: ClusterLoadAssignment) -> Result<Self, ConfigError> {
        let path = Path::root("cluster load assignment", &cla.cluster_name);
        load_assignment(cla, &path)
    }
}

pub(crate) fn load_assignment(
    cla: ClusterLoadAssignment,
    path: &Path,
) -> Result<LoadAssignment, ConfigError> {
    check_fields(&cla, &["cluster_name", "endpoints"], path)?;
    let localities = cla
        .endpoints
        .into_iter()
        .enumerate()
        .map(|(i, l)| locality(l, &path.index("endpoints", i)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut priorities: Vec<u32> = localities.iter().map(|l| l.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    if priorities.iter().zip(0u32..).any(|(p, i)| *p != i) {
        return Err(path.field("endpoints").err(format!(
            "priorities must be contiguous from 0, got {priorities:?}"
        )));
    }
    Ok(LoadAssignment {
        cluster_name: cla.cluster_name,
        localities,
    })
}

fn locality(l: LocalityLbEndpoints, path: &Path) -> Result<LocalityEndpoints, ConfigError> {
    check_fields(
        &l,
        &[
            "locality",
            "lb_endpoints",
            "load_balancing_weight",
            "priority",
        ],
        path,
    )?;
    let locality = l.locality.map_or_else(Locality::default, |l| Locality {
        region: l.region,
        zone: l.zone,
        sub_zone: l.sub_zone,
    });
    let weight = l.load_balancing_weight.map(|w| w.value);
    if weight == Some(0) {
        return Err(path.field("load_balancing_weight").err("must be positive"));
    }
    let endpoints = l
        .lb_endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| endpoint(e, &path.index("lb_endpoints", i)))
        .collect::<Result<_, _>>()?;
    Ok(LocalityEndpoints {
        locality,
        priority: l.priority,
        weight,
        endpoints,
    })
}

fn endpoint(e: &LbEndpoint, path: &Path) -> Result<Endpoint, ConfigError> {
    check_fields(
        e,
        &[
            "endpoint",
            "health_status",
            "load_balancing_weight",
            "metadata",
        ],
        path,
    )?;
    let transport_labels = match &e.metadata {
        Some(m) => transport_labels(m, &path.field("metadata"))?,
        None => TransportLabels::new(),
    };
    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        return Err(path.err("an endpoint is required (named endpoints are not supported)"));
    };
    let p = path.field("endpoint");
    check_fields(ep, &["address"], &p)?;
    let address = match &ep.address {
        Some(a) => socket_addr(a, &p.field("address"))?,
        None => return Err(p.err("an address is required")),
    };
    let weight = e.load_balancing_weight.as_ref().map_or(1, |w| w.value);
    if weight == 0 {
        return Err(path.field("load_balancing_weight").err("must be positive"));
    }
    let health = match HealthStatus::try_from(e.health_status) {
        Ok(HealthStatus::Unknown | HealthStatus::Healthy) => Health::Healthy,
        Ok(HealthStatus::Unhealthy | HealthStatus::Timeout) => Health::Unhealthy,
        Ok(HealthStatus::Draining) => Health::Draining,
        Ok(HealthStatus::Degraded) => Health::Degraded,
        Err(_) => return Err(path.field("health_status").err("unknown health status")),
    };
    Ok(Endpoint {
        address,
        weight,
        health,
        transport_labels,
    })
}

/// The `envoy.transport_socket_match` namespace of `filter_metadata` (other namespaces are
/// accepted and ignored: nothing else in this proxy reads endpoint metadata).
pub(crate) fn transport_labels(m: &Metadata, path: &Path) -> Result<TransportLabels, ConfigError> {
    check_fields(m, &["filter_metadata"], path)?;
    let mut out = TransportLabels::new();
    let Some(s) = m.filter_metadata.get(TRANSPORT_SOCKET_MATCH) else {
        return Ok(out);
    };
    for (key, value) in &s.fields {
        let text = match &value.kind {
            Some(Kind::StringValue(v)) => v.clone(),
            Some(Kind::BoolValue(v)) => v.to_string(),
            Some(Kind::NumberValue(v)) => v.to_string(),
            _ => {
                return Err(path
                    .field(&format!(
                        "filter_metadata[{TRANSPORT_SOCKET_MATCH:?}].{key}"
                    ))
                    .err("only string, bool and number values are supported"));
            }
        };
        out.insert(key.clone(), text);
    }
    Ok(out)
}
