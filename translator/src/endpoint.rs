//! Endpoints → ClusterLoadAssignment `{service}`: grouped by priority and locality, in a
//! deterministic order so that the version only changes when the membership does. Unless the
//! mesh's mTLS is off, endpoints that are mesh workloads carry the metadata that selects mTLS
//! in proxies' clusters (with mTLS off, nothing differs from a mesh without it).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use switchboard_model::spec::{Health, Locality};
use switchboard_model::{EndpointSpec, ServiceSpec};

use crate::common::{socket_address, u32_value};
use crate::mtls::mtls_endpoint_metadata;
use crate::names;
use crate::pb::envoy::config::core::v3::{HealthStatus, Locality as PbLocality};
use crate::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};

/// The load assignment of `service` from its endpoints, given in name order. Also returns
/// warnings for endpoints it had to leave out. With `mtls` (the mesh's effective mode is not
/// `off`), endpoints that are mesh workloads carry the metadata that selects mTLS.
pub(crate) fn load_assignment<'a>(
    service: &str,
    spec: &ServiceSpec,
    endpoints: impl IntoIterator<Item = (&'a str, &'a EndpointSpec)>,
    mtls: bool,
) -> (ClusterLoadAssignment, Vec<String>) {
    let mut warnings = Vec::new();
    let mut seen = HashSet::new();
    let mut groups: BTreeMap<(u32, &Locality), Vec<LbEndpoint>> = BTreeMap::new();
    for (name, ep) in endpoints {
        let Ok(ip) = ep.address.parse::<IpAddr>() else {
            warnings.push(format!(
                "endpoint {name}: address {:?} is not an IP address; left out of service {service}",
                ep.address
            ));
            continue;
        };
        let port = ep.port.unwrap_or(spec.port);
        if !(1..=65535).contains(&port) {
            warnings.push(format!(
                "endpoint {name}: port {port} is out of range; left out of service {service}"
            ));
            continue;
        }
        // gRPC rejects a whole load assignment that lists an address twice (e.g. a sidecar
        // that registered itself and a hand-written endpoint): keep the first by name.
        if !seen.insert((ip, port)) {
            warnings.push(format!(
                "endpoint {name}: {ip}:{port} is already an endpoint of service {service}; \
                 delete one of them"
            ));
            continue;
        }
        groups
            .entry((ep.priority, &ep.locality))
            .or_default()
            .push(lb_endpoint(ip, port, ep, mtls && ep.mtls));
    }
    (
        ClusterLoadAssignment {
            cluster_name: names::cluster(service),
            endpoints: locality_groups(groups),
            ..Default::default()
        },
        warnings,
    )
}

/// Priorities are renumbered 0, 1, 2… keeping their order: Envoy and gRPC want them
/// contiguous (gRPC NACKs a gap), while users may write 0 and 10.
fn locality_groups(
    groups: BTreeMap<(u32, &Locality), Vec<LbEndpoint>>,
) -> Vec<LocalityLbEndpoints> {
    let mut out = Vec::with_capacity(groups.len());
    let mut rank: Option<(u32, u32)> = None; // (user priority, contiguous priority)
    for ((priority, locality), lb_endpoints) in groups {
        let contiguous = match rank {
            Some((p, r)) if p == priority => r,
            Some((_, r)) => r + 1,
            None => 0,
        };
        rank = Some((priority, contiguous));
        // gRPC ignores a locality without a weight, so it always gets one: the sum of its
        // endpoints' weights, which makes locality-weighted balancing match endpoint weights.
        let weight = lb_endpoints
            .iter()
            .filter_map(|e| e.load_balancing_weight.as_ref())
            .fold(0u32, |sum, w| sum.saturating_add(w.value));
        out.push(LocalityLbEndpoints {
            locality: Some(PbLocality {
                region: locality.region.clone(),
                zone: locality.zone.clone(),
                sub_zone: locality.sub_zone.clone(),
            }),
            lb_endpoints,
            load_balancing_weight: Some(u32_value(weight.max(1))),
            priority: contiguous,
            ..Default::default()
        });
    }
    out
}

fn lb_endpoint(ip: IpAddr, port: u32, ep: &EndpointSpec, mtls: bool) -> LbEndpoint {
    LbEndpoint {
        health_status: health(ep.health) as i32,
        // Envoy rejects a weight of 0; validation allows 1 to 1000.
        load_balancing_weight: Some(u32_value(ep.weight.max(1))),
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(&ip.to_string(), port)),
            ..Default::default()
        })),
        // Proxies call mesh workloads with mTLS (their clusters' transport socket match);
        // proxyless gRPC clients do not use it.
        metadata: mtls.then(mtls_endpoint_metadata),
    }
}

fn health(h: Health) -> HealthStatus {
    match h {
        Health::Healthy => HealthStatus::Healthy,
        Health::Unhealthy => HealthStatus::Unhealthy,
        Health::Draining => HealthStatus::Draining,
        Health::Unknown => HealthStatus::Unknown,
    }
}
