//! Translation speed and output size for a large mesh.
//!
//! Not criterion: a bounded workload that prints figures (nothing is asserted about speed).
//! The mesh, built before any clock starts and checked with the model's own validation:
//!
//! - 1,000 services `svc-N` on port 8080 (every third gRPC, the rest HTTP; some with
//!   circuit breakers, outlier detection or another load-balancing policy);
//! - 10,000 endpoints, 10 per service, spread over 3 zones of one region, half of them
//!   sidecars' (mesh workloads, called with mTLS);
//! - mTLS `permissive` with a CA, so that proxies get their own clusters with mTLS;
//! - 5,000 routes `svc-N-rK` (K = 0..4), each with its own host names `svc-N-rK:8080` and
//!   `svc-N-rK`, 1 to 3 rules: an optional header-match rule (canary), an optional path
//!   prefix rule, and a catch-all; every rule has 1 to 3 weighted backends, and some have
//!   retries and timeouts.
//!
//! Figures:
//! - `translate` of the whole mesh, and `Translator::new` (which also keeps the indexes for
//!   later updates): median and p99 over `BENCH_FULL_RUNS` (20) runs;
//! - one change through `Translator::apply`: a route's weights, an endpoint, a new service
//!   (removed again after each timed run, untimed, so the mesh keeps its size); and the same
//!   route change through `Translator::update` (which diffs whole configurations): median
//!   and p99 over `BENCH_INCREMENTAL_RUNS` (200) runs each, with the resources each change
//!   replaced;
//! - the output: resources per type and encoded bytes.
//!
//! Run with `cargo bench -p switchboard-translator --bench translate` (or `scripts/bench`).

#![allow(clippy::expect_used)] // A bench: a broken fixture should stop it loudly.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_model::{EndpointSpec, RouteSpec, ServiceSpec, TrustBundle};
use switchboard_translator::{
    Change, MeshConfig, MeshResources, Translator, XdsResource, names, translate,
};

const SERVICES: usize = 1_000;
const ROUTES_PER_SERVICE: usize = 5;
const ENDPOINTS_PER_SERVICE: usize = 10;
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

fn runs(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("{var}={v:?}: expected a whole number above 0"),
        },
        Err(_) => default,
    }
}

/// splitmix64: cheap, deterministic pseudo-randomness for weights and shapes.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Parses a spec from the JSON a user would send (callers validate it as the API would).
fn spec<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("bad fixture {v}: {e}"))
}

fn service(i: usize) -> String {
    format!("svc-{i}")
}

fn service_spec(i: usize) -> ServiceSpec {
    let protocol = if i.is_multiple_of(3) { "grpc" } else { "http" };
    let mut v = json!({"port": 8080, "protocol": protocol});
    match i % 10 {
        1 => v["circuitBreaker"] = json!({"maxConnections": 1000, "maxPendingRequests": 100}),
        2 => v["outlierDetection"] = json!({"consecutive5xx": 5, "interval": "10s"}),
        3 => v["loadBalancing"] = json!("least_request"),
        4 => v["connectTimeout"] = json!("2s"),
        _ => {}
    }
    let s: ServiceSpec = spec(v);
    s.validate().expect("valid service");
    s
}

fn endpoint_spec(service_index: usize, j: usize, weight: u32) -> EndpointSpec {
    let n = service_index * ENDPOINTS_PER_SERVICE + j;
    let e: EndpointSpec = spec(json!({
        "service": service(service_index),
        "address": format!("10.{}.{}.{}", n >> 16, (n >> 8) & 0xff, n & 0xff),
        "weight": weight,
        "locality": {"region": "region-1", "zone": ZONES[j % ZONES.len()]},
        "mtls": j.is_multiple_of(2),
    }));
    e.validate().expect("valid endpoint");
    e
}

/// 1 to 3 distinct backends with weights from `seed`; `bump` shifts the weights (for changes).
fn backends(seed: u64, owner: usize, bump: u64) -> Value {
    let n = 1 + (seed % 3) as usize;
    let list: Vec<Value> = (0..n)
        .map(|j| {
            let s = (owner + j * 337) % SERVICES;
            let w = 1 + (mix(seed ^ j as u64).wrapping_add(bump) % 100);
            json!({"service": service(s), "weight": w})
        })
        .collect();
    Value::Array(list)
}

/// Route `svc-N-rK`. `bump` changes only the backends' weights.
fn route_spec(n: usize, k: usize, bump: u64) -> RouteSpec {
    let name = format!("svc-{n}-r{k}");
    let seed = mix((n * ROUTES_PER_SERVICE + k) as u64);
    let mut rules = Vec::new();
    if seed.is_multiple_of(4) {
        rules.push(json!({
            "name": "canary",
            "matches": [{"headers": [{"name": "x-canary", "value": "true"}]},
                        {"headers": [{"name": "x-user", "type": "prefix", "value": "beta-"}]}],
            "backends": backends(seed >> 3, n + 1, bump),
            "timeout": "1s",
        }));
    }
    if seed.is_multiple_of(3) {
        rules.push(json!({
            "matches": [{"path": {"type": "prefix", "value": "/api/v2"}, "method": "POST"}],
            "backends": backends(seed >> 5, n + 2, bump),
            "timeout": "5s",
            "retries": {"attempts": 3, "perTryTimeout": "500ms"},
            "requestHeaders": {"set": [{"name": "x-route", "value": name.clone()}]},
        }));
    }
    let mut catch_all = json!({"backends": backends(seed >> 7, n, bump)});
    if seed.is_multiple_of(2) {
        catch_all["timeout"] = json!("10s");
        catch_all["retries"] = json!({"attempts": 2});
    }
    rules.push(catch_all);
    let r: RouteSpec = spec(json!({
        "hostnames": [format!("{name}:8080"), name],
        "rules": rules,
    }));
    r.validate().expect("valid route");
    r
}

fn mesh() -> MeshConfig {
    let mut c = MeshConfig {
        tenant: "bench".into(),
        mesh: "mesh".into(),
        revision: 1,
        trust_domain: "bench.local".into(),
        trust: TrustBundle {
            signer_id: "bench-ca".into(),
            roots_pem: vec!["-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into()],
        },
        ..Default::default()
    };
    for i in 0..SERVICES {
        c.services.insert(service(i), service_spec(i));
        for j in 0..ENDPOINTS_PER_SERVICE {
            c.endpoints
                .insert(format!("svc-{i}-e{j}"), endpoint_spec(i, j, 1));
        }
        for k in 0..ROUTES_PER_SERVICE {
            c.routes
                .insert(format!("svc-{i}-r{k}"), route_spec(i, k, 0));
        }
    }
    c
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Row {
    what: String,
    runs: usize,
    median: Duration,
    p99: Duration,
    max: Duration,
    /// Resources replaced, added or removed by one run (incremental rows).
    touched: Option<String>,
}

impl Row {
    fn new(what: impl Into<String>, mut times: Vec<Duration>, touched: Option<String>) -> Row {
        times.sort_unstable();
        Row {
            what: what.into(),
            runs: times.len(),
            median: percentile(&times, 0.50),
            p99: percentile(&times, 0.99),
            max: times.last().copied().unwrap_or_default(),
            touched,
        }
    }
}

type Maps<'a> = [(&'static str, &'a BTreeMap<String, Arc<XdsResource>>); 5];

fn maps(r: &MeshResources) -> Maps<'_> {
    [
        ("LDS", &r.listeners),
        ("RDS", &r.route_configurations),
        ("CDS", &r.clusters),
        ("CDS-proxies", &r.proxy_clusters),
        ("EDS", &r.load_assignments),
    ]
}

/// What differs between two results, by pointer (unchanged resources keep their `Arc`):
/// e.g. `RDS svc-7-r2, RDS sidecar/outbound`.
fn touched(before: &MeshResources, after: &MeshResources) -> String {
    let mut out = Vec::new();
    for ((kind, a), (_, b)) in maps(before).into_iter().zip(maps(after)) {
        for (name, r) in b {
            match a.get(name) {
                Some(old) if Arc::ptr_eq(old, r) => {}
                Some(_) => out.push(format!("{kind} {name}")),
                None => out.push(format!("+{kind} {name}")),
            }
        }
        for name in a.keys().filter(|n| !b.contains_key(*n)) {
            out.push(format!("-{kind} {name}"));
        }
    }
    if out.is_empty() {
        "nothing".into()
    } else {
        out.join(", ")
    }
}

/// Times `runs` changes made by `change(i)`, each applied to `t` and undone (untimed) by
/// `undo(i)` when given. Returns the row, noting what the first run touched.
fn incremental(
    t: &mut Translator,
    what: &str,
    runs: usize,
    change: impl Fn(usize) -> Change,
    undo: Option<&dyn Fn(usize) -> Change>,
) -> Row {
    let mut times = Vec::with_capacity(runs);
    let mut first = None;
    for i in 0..runs {
        let c = change(i);
        let before = (i == 0).then(|| t.resources().clone());
        let start = Instant::now();
        black_box(t.apply([c]));
        times.push(start.elapsed());
        if let Some(before) = before {
            first = Some(touched(&before, t.resources()));
        }
        if let Some(undo) = undo {
            t.apply([undo(i)]);
        }
    }
    Row::new(what, times, first)
}

fn main() {
    // cargo bench passes `--bench` (and any filter); this binary has nothing to select.
    let full_runs = runs("BENCH_FULL_RUNS", 20);
    let incremental_runs = runs("BENCH_INCREMENTAL_RUNS", 200);

    let setup = Instant::now();
    let config = mesh();
    println!(
        "translate: {} services, {} endpoints, {} routes ({} host names); fixture built in {:.2} s",
        config.services.len(),
        config.endpoints.len(),
        config.routes.len(),
        config
            .routes
            .values()
            .map(|r| r.hostnames.len())
            .sum::<usize>(),
        setup.elapsed().as_secs_f64(),
    );

    let mut rows = Vec::new();

    // (a) Full translation.
    let mut times = Vec::with_capacity(full_runs);
    let mut result = MeshResources::default();
    for _ in 0..full_runs {
        let start = Instant::now();
        result = black_box(translate(black_box(&config)));
        times.push(start.elapsed());
    }
    rows.push(Row::new("translate (full mesh)", times, None));
    let mut times = Vec::with_capacity(full_runs);
    for _ in 0..full_runs {
        let c = config.clone();
        let start = Instant::now();
        let t = black_box(Translator::new(c));
        times.push(start.elapsed());
        drop(t);
    }
    rows.push(Row::new("Translator::new (full mesh)", times, None));

    // (b) One change at a time through the incremental translator.
    let mut t = Translator::new(config.clone());
    assert_eq!(
        t.resources(),
        &result,
        "incremental and full translation differ"
    );

    // A route's weights: route svc-7-r2, weights shifted on each run (bump 1, 2, ...; the
    // weights repeat every 100 bumps, so each run differs from the one before).
    let route_change =
        |i: usize| Change::Route("svc-7-r2".into(), Some(route_spec(7, 2, 1 + i as u64)));
    rows.push(incremental(
        &mut t,
        "apply: one route's weights",
        incremental_runs,
        route_change,
        None,
    ));
    // An endpoint: svc-42-e3's weight, different on each run.
    let endpoint_change = |i: usize| {
        Change::Endpoint(
            "svc-42-e3".into(),
            Some(endpoint_spec(42, 3, 2 + (i % 100) as u32)),
        )
    };
    rows.push(incremental(
        &mut t,
        "apply: one endpoint",
        incremental_runs,
        endpoint_change,
        None,
    ));
    // A new service (no endpoints, no routes: it gets a cluster, a load assignment and its
    // default listeners); removed again after each run, untimed.
    let add = |i: usize| Change::Service(format!("new-{i}"), Some(service_spec(i)));
    let remove = |i: usize| Change::Service(format!("new-{i}"), None);
    rows.push(incremental(
        &mut t,
        "apply: add one service",
        incremental_runs,
        add,
        Some(&remove),
    ));

    // The route change again, through `update` (diffs the whole configuration). The
    // configuration to hand over is cloned before the clock starts.
    let mut times = Vec::with_capacity(incremental_runs);
    let mut first = None;
    for i in 0..incremental_runs {
        let mut next = t.config().clone();
        next.routes.insert(
            "svc-7-r2".into(),
            route_spec(7, 2, (incremental_runs + 1 + i) as u64),
        );
        let before = (i == 0).then(|| t.resources().clone());
        let start = Instant::now();
        black_box(t.update(next));
        times.push(start.elapsed());
        if let Some(before) = before {
            first = Some(touched(&before, t.resources()));
        }
    }
    rows.push(Row::new("update: one route's weights", times, first));
    assert_eq!(
        t.resources(),
        &translate(t.config()),
        "incremental and full translation differ after the changes"
    );

    println!();
    println!(
        "{:<30} {:>5} {:>10} {:>10} {:>10}  resources replaced (first run)",
        "operation", "runs", "median ms", "p99 ms", "max ms"
    );
    for r in &rows {
        println!(
            "{:<30} {:>5} {:>10.3} {:>10.3} {:>10.3}  {}",
            r.what,
            r.runs,
            ms(r.median),
            ms(r.p99),
            ms(r.max),
            r.touched.as_deref().unwrap_or("-"),
        );
    }

    // (c) Output size.
    println!();
    println!(
        "{:<11} {:>9} {:>14} {:>12} {:>14}  largest",
        "type", "resources", "encoded bytes", "mean bytes", "largest bytes"
    );
    let (mut count, mut bytes) = (0usize, 0usize);
    for (kind, map) in maps(&result) {
        let sizes = map.values().map(|r| r.value().len());
        let total: usize = sizes.clone().sum();
        let (largest_name, largest) = map
            .iter()
            .map(|(n, r)| (n.as_str(), r.value().len()))
            .max_by_key(|(_, len)| *len)
            .unwrap_or(("-", 0));
        println!(
            "{:<11} {:>9} {:>14} {:>12} {:>14}  {}",
            kind,
            map.len(),
            total,
            total / map.len().max(1),
            largest,
            largest_name,
        );
        count += map.len();
        bytes += total;
    }
    println!("{:<11} {:>9} {:>14}", "total", count, bytes);
    println!(
        "(encoded bytes: each resource's serialized message, as packed in Any.value; \
         {} is the sidecars' route configuration holding every route; CDS-proxies are the \
         clusters sidecars and gateways get, with mTLS)",
        names::OUTBOUND
    );
    if !result.warnings.is_empty() {
        println!(
            "warnings: {} (first: {})",
            result.warnings.len(),
            result.warnings[0]
        );
    }
}
