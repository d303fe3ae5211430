//! Content-hash versions and incremental translation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Value, json};
use switchboard_model::{MeshSpec, TrustBundle};
use switchboard_translator::{
    Change, MeshConfig, MeshResources, Translator, XdsResource, translate,
};

use crate::common::{Mesh, base, ca_bundle, spec};

/// Every resource of `res`, keyed by type and name.
fn resources(res: &MeshResources) -> BTreeMap<(&'static str, &str), &XdsResource> {
    let mut out = BTreeMap::new();
    for (kind, map) in [
        ("lds", &res.listeners),
        ("rds", &res.route_configurations),
        ("cds", &res.clusters),
        ("cds-proxies", &res.proxy_clusters),
        ("eds", &res.load_assignments),
    ] {
        for (name, r) in map {
            out.insert((kind, name.as_str()), r.as_ref());
        }
    }
    out
}

/// `type/name` of every resource that differs (name, version or bytes), or that only one side
/// has; each once, sorted.
fn diff(a: &MeshResources, b: &MeshResources) -> Vec<String> {
    let (a, b) = (resources(a), resources(b));
    let keys: BTreeSet<&(&str, &str)> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|(kind, name)| format!("{kind}/{name}"))
        .collect()
}

#[test]
fn diff_lists_every_difference_once() {
    let before = sample().translate();
    let after = sample()
        .service("a", json!({"port": 8080, "loadBalancing": "least_request"}))
        .service("b", json!({"port": 8080, "loadBalancing": "least_request"}))
        .endpoint("a2", json!({"service": "a", "address": "10.0.0.3"}))
        .translate();
    // Keys from both sides interleave (a's cds/a, cds/b, eds/a, then b's): each appears once.
    assert_eq!(
        diff(&before, &after),
        ["cds/a", "cds/b", "cds-proxies/a", "cds-proxies/b", "eds/a"]
    );
    assert_eq!(diff(&before, &before), Vec::<String>::new());
    let mut fewer = before.clone();
    fewer.clusters.remove("b");
    assert_eq!(diff(&before, &fewer), ["cds/b"]);
    assert_eq!(diff(&fewer, &before), ["cds/b"]);
}

fn sample() -> Mesh {
    base()
        .endpoint("a1", json!({"service": "a", "address": "10.0.0.1"}))
        .endpoint("a2", json!({"service": "a", "address": "10.0.0.2"}))
        .endpoint("b1", json!({"service": "b", "address": "10.0.1.1"}))
        .route("r", json!({"hostnames": ["r"], "rules": [{"backends": [{"service": "a"}, {"service": "b"}]}]}))
        .gateway("edge", json!({"port": 80, "routes": ["r"]}))
}

#[test]
fn same_input_same_versions() {
    let m = sample();
    let (one, two) = (m.translate(), m.translate());
    assert_eq!(one, two);
    assert_eq!(Translator::new(m.config.clone()).resources(), &one);
    for r in one.clusters.values() {
        assert_eq!(r.version.len(), 16);
        assert!(r.version.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}

#[test]
fn changing_one_service_changes_only_its_cluster() {
    let before = sample().translate();
    let after = sample()
        .service("a", json!({"port": 8080, "loadBalancing": "least_request"}))
        .translate();
    assert_eq!(diff(&before, &after), ["cds/a", "cds-proxies/a"]);

    let after = sample()
        .endpoint("a2", json!({"service": "a", "address": "10.0.0.3"}))
        .translate();
    assert_eq!(diff(&before, &after), ["eds/a"]);

    // The route's retry defaults depend on its backends' protocols.
    let after = sample()
        .service("b", json!({"port": 8080, "protocol": "grpc"}))
        .translate();
    assert_eq!(
        diff(&before, &after),
        ["cds/b", "cds-proxies/b"],
        "no retries configured: nothing else changes"
    );
}

#[test]
fn unchanged_resources_keep_their_arc() {
    let m = sample();
    let mut t = Translator::new(m.config.clone());
    let before = t.resources().clone();
    t.apply([Change::Service(
        "a".into(),
        Some(spec(json!({"port": 8080, "connectTimeout": "1s"}))),
    )]);
    let after = t.resources();
    assert!(Arc::ptr_eq(&before.clusters["b"], &after.clusters["b"]));
    assert!(Arc::ptr_eq(
        &before.route_configurations["sidecar/outbound"],
        &after.route_configurations["sidecar/outbound"]
    ));
    assert!(!Arc::ptr_eq(&before.clusters["a"], &after.clusters["a"]));
}

/// A tiny deterministic generator, so the test needs no dependency and always runs the same.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const SERVICES: &[&str] = &["s0", "s1", "s2", "s3", "s4", "s5"];
const ROUTES: &[&str] = &["r0", "r1", "r2", "r3"];
const GATEWAYS: &[&str] = &["g0", "g1"];
const POLICIES: &[&str] = &["p0", "p1", "p2"];
const CERTIFICATES: &[&str] = &["c0", "c1", "c2"];

fn random_change(rng: &mut Lcg) -> Change {
    let delete = rng.below(5) == 0;
    match rng.below(16) {
        0..=1 => {
            let name = rng.pick(SERVICES).to_string();
            let protocol = rng.pick(&["http", "grpc", "tcp", "http2"]);
            let port = [80, 8080, 9090][rng.below(3) as usize];
            let v = json!({"port": port, "protocol": protocol, "loadBalancing": rng.pick(&["round_robin", "ring_hash"])});
            Change::Service(name, (!delete).then(|| spec(v)))
        }
        2..=4 => {
            let name = format!("e{}", rng.below(12));
            let mut v = json!({
                "service": rng.pick(SERVICES),
                "address": format!("10.0.0.{}", rng.below(6)),
                "weight": 1 + rng.below(3),
                "priority": rng.below(3),
                "locality": {"zone": rng.pick(&["a", "b"])},
                "mtls": rng.below(2) == 0,
            });
            if rng.below(3) == 0 {
                v["port"] = json!([80, 9090][rng.below(2) as usize]);
            }
            Change::Endpoint(name, (!delete).then(|| spec(v)))
        }
        5..=8 => {
            let name = rng.pick(ROUTES).to_string();
            let mut hostnames: Vec<String> = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let s = rng.pick(SERVICES);
                let h = match rng.below(3) {
                    0 => s.to_string(),
                    1 => format!("{s}:{}", [80, 8080, 9090][rng.below(3) as usize]),
                    _ => format!("{s}.example.com"),
                };
                if !hostnames.contains(&h) {
                    hostnames.push(h);
                }
            }
            let mut rule = json!({"backends": [{"service": rng.pick(SERVICES), "weight": rng.below(3)}, {"service": rng.pick(SERVICES), "weight": 1}]});
            if rng.below(2) == 0 {
                rule["fault"] = json!({"delay": {"fixed": "10ms", "percent": rng.below(100)}});
            }
            if rng.below(2) == 0 {
                rule["retries"] = json!({"attempts": 1 + rng.below(3)});
            }
            let v = json!({"hostnames": hostnames, "rules": [rule]});
            Change::Route(name, (!delete).then(|| spec(v)))
        }
        10..=11 => {
            let name = rng.pick(POLICIES).to_string();
            let mut v = json!({
                "service": rng.pick(SERVICES),
                "action": rng.pick(&["allow", "deny"]),
                "from": [{"services": [rng.pick(SERVICES)]}, {"anyAuthenticated": true}],
            });
            if rng.below(2) == 0 {
                v["to"] = json!([{"paths": ["/api/*"], "methods": ["GET"]}]);
            }
            Change::AuthorizationPolicy(name, (!delete).then(|| spec(v)))
        }
        12 => Change::Mesh(spec(json!({
            "mtls": {"mode": rng.pick(&["strict", "permissive", "off"])},
            "defaultAuthorization": rng.pick(&["allow", "deny"]),
        }))),
        13 => Change::Trust(if rng.below(2) == 0 {
            TrustBundle::default()
        } else {
            ca_bundle()
        }),
        14..=15 => {
            let name = rng.pick(CERTIFICATES).to_string();
            let dns: Vec<&str> = (0..rng.below(3))
                .map(|_| rng.pick(&["a.example.com", "*.example.com", "b.example.com"]))
                .collect();
            let v = json!({"certificateChain": "CHAIN", "privateKey": {"kekId": "k", "sealed": "S"},
                           "dnsNames": dns});
            Change::Certificate(name, (!delete).then(|| spec(v)))
        }
        _ => {
            let name = rng.pick(GATEWAYS).to_string();
            let mut v: Value = if rng.below(3) == 0 {
                json!({"port": 9000, "protocol": "tcp", "service": rng.pick(SERVICES)})
            } else {
                json!({"port": 8000 + rng.below(3), "hostnames": [rng.pick(&["*.example.com", "s1.example.com"])], "routes": [rng.pick(ROUTES), rng.pick(ROUTES)]})
            };
            if rng.below(2) == 0 {
                let first = rng.pick(CERTIFICATES);
                let second = rng.pick(CERTIFICATES);
                let certs = if first == second {
                    vec![first]
                } else {
                    vec![first, second]
                };
                v["tls"] = json!({"certificates": certs});
            }
            Change::Gateway(name, (!delete).then(|| spec(v)))
        }
    }
}

fn apply_to(config: &mut MeshConfig, change: &Change) {
    fn put<T: Clone>(m: &mut BTreeMap<String, T>, n: &str, s: &Option<T>) {
        match s {
            Some(s) => drop(m.insert(n.to_string(), s.clone())),
            None => drop(m.remove(n)),
        }
    }
    match change {
        Change::Service(n, s) => put(&mut config.services, n, s),
        Change::Endpoint(n, s) => put(&mut config.endpoints, n, s),
        Change::Route(n, s) => put(&mut config.routes, n, s),
        Change::Gateway(n, s) => put(&mut config.gateways, n, s),
        Change::AuthorizationPolicy(n, s) => put(&mut config.authorization_policies, n, s),
        Change::Certificate(n, s) => put(&mut config.certificates, n, s),
        Change::Mesh(s) => config.spec = s.clone(),
        Change::Trust(t) => config.trust = t.clone(),
    }
}

fn assert_same(step: usize, got: &MeshResources, config: &MeshConfig) {
    let want = translate(config);
    if got != &want {
        let show = |m: &BTreeMap<String, Arc<XdsResource>>| m.keys().cloned().collect::<Vec<_>>();
        panic!(
            "step {step}: incremental result differs from a full translation\n differing: {:?}\n warnings: {:?} vs {:?}\n listeners {:?} vs {:?}",
            diff(got, &want),
            got.warnings,
            want.warnings,
            show(&got.listeners),
            show(&want.listeners),
        );
    }
}

#[test]
fn incremental_equals_full_over_random_changes() {
    for seed in 1..=8u64 {
        let mut rng = Lcg(seed);
        let mut config = MeshConfig {
            tenant: "acme".into(),
            mesh: "prod".into(),
            trust_domain: "example.org".into(),
            ..Default::default()
        };
        let mut by_apply = Translator::new(config.clone());
        let mut by_update = Translator::new(config.clone());
        for step in 0..150 {
            // Sometimes several changes at once, to exercise batches.
            let batch: Vec<Change> = (0..1 + rng.below(3))
                .map(|_| random_change(&mut rng))
                .collect();
            for c in &batch {
                apply_to(&mut config, c);
            }
            by_apply.apply(batch);
            assert_eq!(by_apply.config(), &config);
            assert_same(step, by_apply.resources(), &config);
            by_update.update(config.clone());
            assert_same(step, by_update.resources(), &config);
        }
    }
}

#[test]
fn mtls_changes_rebuild_proxy_clusters_and_inbound_security_only() {
    let strict = sample()
        .endpoint(
            "sidecar-b-1",
            json!({"service": "b", "address": "10.0.1.2", "node": "b-1", "mtls": true}),
        )
        .mtls("strict", true);
    let mut t = Translator::new(strict.config.clone());
    let before = t.resources().clone();
    assert!(before.inbound_security["a"].transport_socket.is_some());

    // Strict → off: the proxies' clusters become the proxyless ones; nothing else moves.
    let mut off: MeshSpec = strict.config.spec.clone();
    off.mtls.mode = switchboard_model::spec::MtlsMode::Off;
    t.apply([Change::Mesh(off.clone())]);
    let mut want = strict.config.clone();
    want.spec = off;
    assert_eq!(t.resources(), &translate(&want));
    let after = t.resources().clone();
    assert_eq!(
        diff(&before, &after),
        [
            "cds-proxies/a",
            "cds-proxies/b",
            "cds-proxies/g",
            "cds-proxies/m",
            "eds/b"
        ],
        "only b has a mesh workload's endpoint, whose metadata goes"
    );
    for (name, c) in &before.clusters {
        assert!(
            Arc::ptr_eq(c, &after.clusters[name]),
            "proxyless {name} kept"
        );
        assert!(Arc::ptr_eq(
            &after.proxy_clusters[name],
            &after.clusters[name]
        ));
    }
    assert_eq!(*after.inbound_security["a"], Default::default());

    // Permissive: mTLS only while there is a CA.
    let permissive = sample().mtls("permissive", true);
    let mut t = Translator::new(permissive.config.clone());
    assert!(t.resources().inbound_security["a"].accept_plaintext);
    t.apply([Change::Trust(TrustBundle::default())]);
    let mut no_ca = permissive.config.clone();
    no_ca.trust = TrustBundle::default();
    assert_eq!(t.resources(), &translate(&no_ca));
    assert_eq!(*t.resources().inbound_security["a"], Default::default());
    // A rotation (another bundle, still a CA) changes nothing the translator emits.
    t.apply([Change::Trust(ca_bundle())]);
    let with_ca = t.resources().clone();
    let mut rotated = ca_bundle();
    rotated.signer_id = "ca-2".into();
    rotated.roots_pem.push(rotated.roots_pem[0].clone());
    t.apply([Change::Trust(rotated)]);
    assert_eq!(diff(&with_ca, t.resources()), Vec::<String>::new());
    assert!(Arc::ptr_eq(
        &with_ca.inbound_security["a"],
        &t.resources().inbound_security["a"]
    ));

    // The same through `update`, which compares whole configurations.
    let mut t = Translator::new(permissive.config.clone());
    t.update(no_ca.clone());
    assert_eq!(t.resources(), &translate(&no_ca));
    let mut other_domain = permissive.config.clone();
    other_domain.trust_domain = "other.test".into();
    t.update(other_domain.clone());
    assert_eq!(t.resources(), &translate(&other_domain));
}
