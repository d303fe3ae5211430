#![allow(clippy::unwrap_used)]
use std::time::Instant;
use serde_json::json;
use switchboard_translator::*;

fn main() {
    let mut c = MeshConfig::default();
    for i in 0..1000 {
        c.services.insert(format!("svc-{i}"), serde_json::from_value(json!({"port": 8080, "protocol": if i % 3 == 0 {"grpc"} else {"http"}})).unwrap());
    }
    for i in 0..10000 {
        c.endpoints.insert(format!("ep-{i}"), serde_json::from_value(json!({"service": format!("svc-{}", i % 1000), "address": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256), "locality": {"zone": format!("z{}", i % 3)}})).unwrap());
    }
    for i in 0..5000 {
        c.routes.insert(format!("route-{i}"), serde_json::from_value(json!({"hostnames": [format!("host-{i}.example.com"), format!("host-{i}:8080")], "rules": [
            {"matches": [{"path": {"type": "prefix", "value": "/api"}, "headers": [{"name": "x-env", "value": "canary"}]}], "backends": [{"service": format!("svc-{}", i % 1000), "weight": 90}, {"service": format!("svc-{}", (i + 1) % 1000), "weight": 10}], "timeout": "5s", "retries": {"attempts": 3}},
            {"backends": [{"service": format!("svc-{}", i % 1000)}]}
        ]})).unwrap());
    }
    let t = Instant::now();
    let res = translate(&c);
    println!("full translate: {:?} (lds {} rds {} cds {} eds {})", t.elapsed(), res.listeners.len(), res.route_configurations.len(), res.clusters.len(), res.load_assignments.len());
    let outbound = &res.route_configurations[names::OUTBOUND];
    println!("outbound rc bytes: {}", outbound.resource.value.len());
    let t = Instant::now();
    let mut tr = Translator::new(c.clone());
    println!("Translator::new: {:?}", t.elapsed());
    for (label, change) in [
        ("endpoint", Change::Endpoint("ep-5".into(), Some(serde_json::from_value(json!({"service": "svc-5", "address": "10.99.0.1"})).unwrap()))),
        ("service", Change::Service("svc-7".into(), Some(serde_json::from_value(json!({"port": 8080, "loadBalancing": "ring_hash"})).unwrap()))),
        ("route", Change::Route("route-7".into(), Some(serde_json::from_value(json!({"hostnames": ["host-7.example.com"], "rules": [{"backends": [{"service": "svc-1"}]}]})).unwrap()))),
    ] {
        let t = Instant::now();
        tr.apply([change]);
        println!("apply one {label}: {:?}", t.elapsed());
    }
    if std::env::var("LOOP").is_ok() {
        let t = Instant::now();
        for i in 0..50 {
            tr.apply([Change::Route("route-7".into(), Some(serde_json::from_value(json!({"hostnames": ["host-7.example.com"], "rules": [{"backends": [{"service": format!("svc-{i}")}]}]})).unwrap()))]);
        }
        println!("50 route applies: {:?}", t.elapsed());
        return;
    }
    let mut c2 = tr.config().clone();
    c2.endpoints.get_mut("ep-9").unwrap().weight = 5;
    let t = Instant::now();
    tr.update(c2);
    println!("update (diff) one endpoint: {:?}", t.elapsed());
}
