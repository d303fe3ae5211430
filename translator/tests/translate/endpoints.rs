//! Endpoints → ClusterLoadAssignments.

use serde_json::json;
use switchboard_translator::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality, SocketAddress, address, socket_address,
};
use switchboard_translator::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};

use crate::common::{Mesh, decode};

/// (address, port, weight, health) of each endpoint of each group, with the group's
/// (region, zone, sub_zone, priority, weight).
type Group = (
    (String, String, String, u32, u32),
    Vec<(String, u32, u32, HealthStatus)>,
);

fn groups(cla: &ClusterLoadAssignment) -> Vec<Group> {
    cla.endpoints
        .iter()
        .map(|g: &LocalityLbEndpoints| {
            let l = g.locality.clone().unwrap_or_default();
            let key = (
                l.region,
                l.zone,
                l.sub_zone,
                g.priority,
                g.load_balancing_weight.unwrap().value,
            );
            let eps = g.lb_endpoints.iter().map(endpoint).collect();
            (key, eps)
        })
        .collect()
}

fn endpoint(e: &LbEndpoint) -> (String, u32, u32, HealthStatus) {
    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        panic!()
    };
    let Some(Address {
        address:
            Some(address::Address::SocketAddress(SocketAddress {
                address,
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..
            })),
    }) = &ep.address
    else {
        panic!()
    };
    (
        address.clone(),
        *port,
        e.load_balancing_weight.unwrap().value,
        HealthStatus::try_from(e.health_status).unwrap(),
    )
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn localities_priorities_weights_health() {
    let res = Mesh::new()
        .service("pay", json!({"port": 8080}))
        .endpoint("e1", json!({"service": "pay", "address": "10.0.0.1", "locality": {"region": "eu", "zone": "a"}}))
        .endpoint("e2", json!({"service": "pay", "address": "10.0.0.2", "port": 9000, "weight": 3, "locality": {"region": "eu", "zone": "a"}, "health": "draining"}))
        .endpoint("e3", json!({"service": "pay", "address": "10.0.1.1", "weight": 2, "locality": {"region": "eu", "zone": "b", "subZone": "rack1"}, "health": "unhealthy"}))
        .endpoint("e4", json!({"service": "pay", "address": "fd00::1", "priority": 1, "locality": {"region": "us", "zone": "a"}, "health": "unknown"}))
        .endpoint("other", json!({"service": "else", "address": "10.9.9.9"}))
        .service("else", json!({"port": 1}))
        .translate();
    let cla: ClusterLoadAssignment = decode(&res.load_assignments, "pay");
    assert_eq!(cla.cluster_name, "pay");
    assert_eq!(
        groups(&cla),
        vec![
            (
                (s("eu"), s("a"), s(""), 0, 4),
                vec![
                    (s("10.0.0.1"), 8080, 1, HealthStatus::Healthy),
                    (s("10.0.0.2"), 9000, 3, HealthStatus::Draining),
                ]
            ),
            (
                (s("eu"), s("b"), s("rack1"), 0, 2),
                vec![(s("10.0.1.1"), 8080, 2, HealthStatus::Unhealthy)]
            ),
            (
                (s("us"), s("a"), s(""), 1, 1),
                vec![(s("fd00::1"), 8080, 1, HealthStatus::Unknown)]
            ),
        ]
    );
    assert_eq!(
        cla.endpoints[1].locality,
        Some(Locality {
            region: s("eu"),
            zone: s("b"),
            sub_zone: s("rack1")
        })
    );
}

#[test]
fn priorities_are_made_contiguous() {
    let res = Mesh::new()
        .service("pay", json!({"port": 80}))
        .endpoint("a", json!({"service": "pay", "address": "10.0.0.1", "priority": 5}))
        .endpoint("b", json!({"service": "pay", "address": "10.0.0.2", "priority": 20}))
        .endpoint("c", json!({"service": "pay", "address": "10.0.0.3", "priority": 5, "locality": {"region": "x"}}))
        .translate();
    let cla: ClusterLoadAssignment = decode(&res.load_assignments, "pay");
    let prios: Vec<u32> = cla.endpoints.iter().map(|g| g.priority).collect();
    assert_eq!(prios, [0, 0, 1]);
}

#[test]
fn every_service_has_a_load_assignment() {
    let res = Mesh::new()
        .service("lonely", json!({"port": 80}))
        .translate();
    let cla: ClusterLoadAssignment = decode(&res.load_assignments, "lonely");
    assert_eq!(cla.cluster_name, "lonely");
    assert!(cla.endpoints.is_empty());
}

#[test]
fn bad_endpoints_are_skipped_with_a_warning() {
    let res = Mesh::new()
        .service("pay", json!({"port": 80}))
        .endpoint("a", json!({"service": "pay", "address": "10.0.0.1"}))
        .endpoint(
            "b",
            json!({"service": "pay", "address": "10.0.0.1", "port": 80}),
        )
        .endpoint("orphan", json!({"service": "gone", "address": "10.0.0.2"}))
        .translate();
    let cla: ClusterLoadAssignment = decode(&res.load_assignments, "pay");
    assert_eq!(groups(&cla)[0].1.len(), 1);
    assert!(!res.load_assignments.contains_key("gone"));
    assert_eq!(res.warnings.len(), 2, "{:?}", res.warnings);
    assert!(
        res.warnings
            .iter()
            .any(|w| w.contains("endpoint b") && w.contains("10.0.0.1:80"))
    );
    assert!(
        res.warnings
            .iter()
            .any(|w| w.contains("endpoint orphan") && w.contains("gone"))
    );
}
