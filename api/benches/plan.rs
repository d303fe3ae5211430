//! How long `POST …/meshes/{mesh}/plan` takes for one change (one route's weights) in a mesh
//! of 1,000 services, 5,000 routes and 10,000 endpoints, with 100 connected proxies
//! (50 sidecars subscribed by wildcard, 50 proxyless clients naming a few resources each).
//!
//! Not criterion: a bounded workload that prints figures, like `rest_writes`. Per backend: a
//! fresh store, the API router on 127.0.0.1:0 in this process, planning with the xDS server's
//! code. Setup (not timed): the mesh, in imports of 1,000 documents. Timed: `BENCH_PLANS` (30) plans over HTTP
//! (the tenant's revision, the dry-run batch, the streams, and the plan against the
//! translation the planner holds: the first plan reads and translates the whole mesh),
//! and the same plan's pure part alone (`Planner::plan` on the stored mesh and the change). Every answer
//! must be 200 with the route's configuration and the sidecars' outbound one changed. Then the
//! same on a replica that serves the mesh ([`loaded`]): a write before each plan, the plan
//! starting from the snapshot cache's translator. Run with `scripts/bench`, or
//! `cargo bench -p switchboard-api --bench plan` (SQLite; PostgreSQL too with
//! `SWITCHBOARD_TEST_DATABASE_URL`).

#[path = "../tests/support/xds_plan.rs"]
mod xds_plan;

/// The `switchboard` binary's allocator (its `jemalloc` feature, on by default).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_api::{AdminToken, AppState, router};
use switchboard_loadtest::{Summary, ms};
use switchboard_store::{
    Backend, ProxyRoleRecord, ProxyRow, ProxyStatusRecord, TypeStatusRecord, testing,
};

const ADMIN: &str = "bench-admin-token-0123456789";
const SERVICES: usize = 1_000;
const ROUTES: usize = 5_000;
const ENDPOINTS: usize = 10_000;
const PLANS: usize = 30;

fn route(i: usize, weights: (u32, u32)) -> Value {
    json!({"kind": "route", "mesh": "prod", "name": format!("r{i}"), "spec": {
        "hostnames": [format!("r{i}.bench:80")],
        "rules": [{"backends": [
            {"service": format!("s{}", i % SERVICES), "weight": weights.0},
            {"service": format!("s{}", (i + 1) % SERVICES), "weight": weights.1}]}]}})
}

fn documents() -> Vec<Value> {
    let mut docs = vec![json!({"kind": "mesh", "name": "prod", "spec": {}})];
    docs.extend((0..SERVICES).map(|i| {
        json!({"kind": "service", "mesh": "prod", "name": format!("s{i}"),
               "spec": {"protocol": "http", "port": 80}})
    }));
    docs.extend((0..ENDPOINTS).map(|i| {
        json!({"kind": "endpoint", "mesh": "prod", "name": format!("e{i}"),
               "spec": {"service": format!("s{}", i % SERVICES),
                        "address": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                        "port": 8080}})
    }));
    docs.extend((0..ROUTES).map(|i| route(i, (1, 1))));
    docs
}

fn streams() -> Vec<ProxyRow> {
    let typed = |t: &str, names: Vec<String>| TypeStatusRecord {
        type_name: t.to_owned(),
        wildcard: names.is_empty(),
        names,
        ..Default::default()
    };
    (0..100)
        .map(|i| {
            let status = if i % 2 == 0 {
                ProxyStatusRecord {
                    role_spec: ProxyRoleRecord::Sidecar {
                        service: format!("s{i}"),
                        inbound_port: 15006,
                        app_port: 9000,
                        outbound_port: None,
                    },
                    authenticated: true,
                    types: ["CDS", "EDS", "LDS", "RDS"]
                        .iter()
                        .map(|t| typed(t, vec![]))
                        .collect(),
                    ..Default::default()
                }
            } else {
                ProxyStatusRecord {
                    role_spec: ProxyRoleRecord::Proxyless,
                    types: vec![
                        typed("LDS", vec![format!("r{i}.bench:80")]),
                        typed("RDS", vec![format!("r{i}")]),
                        typed("CDS", vec![format!("s{i}"), format!("s{}", i + 1)]),
                        typed("EDS", vec![format!("s{i}"), format!("s{}", i + 1)]),
                    ],
                    ..Default::default()
                }
            };
            ProxyRow {
                tenant: "bench".into(),
                mesh: "prod".into(),
                node: format!("node-{i}"),
                replica: "r1".into(),
                stream_id: i,
                connected_since: 1,
                heartbeat: i64::MAX / 2,
                status,
            }
        })
        .collect()
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Value,
) -> Result<Value> {
    let resp = http
        .request(method, url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{url}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

async fn run(backend: Backend, label: &str) -> Result<()> {
    let Some((store, _db)) = testing::store(backend).await else {
        println!("{label}: not available, skipped");
        return Ok(());
    };
    let app = router(AppState {
        store: store.clone(),
        admin: AdminToken::new(ADMIN),
        node_configs: Arc::new(xds_plan::XdsPlanner::default()),
        kek: Arc::new(switchboard_pki::Kek::parse(&"66".repeat(32))?),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    use reqwest::Method;
    call(
        &http,
        Method::POST,
        &format!("{base}/tenants"),
        ADMIN,
        json!({"name": "bench"}),
    )
    .await?;
    call(
        &http,
        Method::PUT,
        &format!("{base}/tenants/bench/quotas"),
        ADMIN,
        json!({"spec": {"resourcesPerMesh": 20_000}}),
    )
    .await?;
    let key = call(
        &http,
        Method::POST,
        &format!("{base}/tenants/bench/api-keys"),
        ADMIN,
        json!({}),
    )
    .await?["secret"]
        .as_str()
        .context("no key")?
        .to_owned();
    let setup = Instant::now();
    // In imports of 1,000 documents: one of 16,000 outlasts the store's wait for a
    // connection on SQLite.
    for chunk in documents().chunks(1_000) {
        call(
            &http,
            Method::POST,
            &format!("{base}/tenants/bench/import"),
            &key,
            json!({ "documents": chunk }),
        )
        .await?;
    }
    store.put_proxies(&streams()).await?;
    println!(
        "{label}: setup {SERVICES} services, {ROUTES} routes, {ENDPOINTS} endpoints, 100 proxies in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let url = format!("{base}/tenants/bench/meshes/prod/plan");
    let mut rest = vec![];
    for i in 0..PLANS {
        let body = json!({"documents": [route(i * 7, (3, 1))]});
        let t = Instant::now();
        let plan = call(&http, Method::POST, &url, &key, body).await?;
        rest.push(t.elapsed());
        // The route's own configuration and the sidecars' outbound one.
        let changed = plan["resources"].as_array().map_or(0, Vec::len);
        if changed != 2 || plan["resources"][0]["kind"] != "RouteConfiguration" {
            bail!("plan {i}: expected two route configurations, got {plan}");
        }
    }
    report(label, "plan over HTTP", &rest);
    loaded(&store, &http, &key, label).await?;

    // The pure part alone: two translations (incremental), diff, receivers.
    let before = store.mesh_snapshot("bench", "prod").await?;
    let changed = [(
        switchboard_store::ResourceKey::new("bench", "prod", switchboard_model::Kind::Route, "r0"),
        Some(route(0, (3, 1))["spec"].clone()),
    )];
    let rows = streams();
    let planner = switchboard_xds_server::plan::Planner::default();
    let t = Instant::now();
    planner.plan(&before, &changed, "switchboard.local", &rows);
    report(
        label,
        "plan, pure part, first (full translation)",
        &[t.elapsed()],
    );
    let mut pure = vec![];
    for _ in 0..PLANS {
        let t = Instant::now();
        let p = planner.plan(&before, &changed, "switchboard.local", &rows);
        pure.push(t.elapsed());
        if p.resources.len() != 2 {
            bail!(
                "pure plan: expected two resources, got {}",
                p.resources.len()
            );
        }
    }
    report(label, "plan, pure part", &pure);

    // Where the rest goes: the pure part without streams, the reads and the dry run.
    let mut no_streams = vec![];
    let mut read = vec![];
    let mut revision = vec![];
    let mut dry = vec![];
    let spec = switchboard_model::Spec::parse(
        switchboard_model::Kind::Route,
        route(0, (3, 1))["spec"].clone(),
    )?;
    for _ in 0..PLANS {
        let t = Instant::now();
        planner.plan(&before, &changed, "switchboard.local", &[]);
        no_streams.push(t.elapsed());
        let t = Instant::now();
        store.mesh_snapshot("bench", "prod").await?;
        store.list_proxies("bench", "prod", None).await?;
        read.push(t.elapsed());
        let t = Instant::now();
        store.revision("bench").await?;
        store.list_proxies("bench", "prod", None).await?;
        revision.push(t.elapsed());
        let t = Instant::now();
        store
            .write_many(
                "bench",
                vec![switchboard_store::BatchWrite::put(
                    "prod",
                    "r0",
                    spec.clone(),
                )],
                &switchboard_store::BatchOptions {
                    dry_run: true,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{:?}", e.error))?;
        dry.push(t.elapsed());
    }
    report(label, "plan, pure part without streams", &no_streams);
    report(label, "reading the mesh and its streams", &read);
    report(
        label,
        "reading the revision and the streams (a held revision)",
        &revision,
    );
    report(label, "the dry-run batch", &dry);
    Ok(())
}

/// The same plans on a replica that serves the mesh (its proxies connected here): the port
/// copies the translator the xDS server's snapshot cache keeps current. Each round writes a
/// change (another route's weights), kicks the cache as the change watcher does on the
/// notice, waits until the cache has the new revision (timed apart: that is the push path's
/// rebuild), then plans: the first plan after a write.
async fn loaded(
    store: &switchboard_store::Store,
    http: &reqwest::Client,
    key: &str,
    label: &str,
) -> Result<()> {
    use switchboard_xds_server::{SnapshotCache, TrustSource};
    let cache = SnapshotCache::new(
        store.clone(),
        TrustSource {
            trust_domain: "switchboard.local".into(),
            issuer: None,
        },
    );
    let t = Instant::now();
    let _handle = cache
        .acquire("bench", "prod")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    report(label, "snapshot cache, first load", &[t.elapsed()]);
    let app = router(AppState {
        store: store.clone(),
        admin: AdminToken::new(ADMIN),
        node_configs: Arc::new(xds_plan::XdsPlanner::seeded(cache.clone())),
        kek: Arc::new(switchboard_pki::Kek::parse(&"66".repeat(32))?),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("{base}/tenants/bench/meshes/prod/plan");
    let (mut rebuilds, mut plans, mut pures) = (vec![], vec![], vec![]);
    let planner = switchboard_xds_server::plan::Planner::seeded(cache.clone());
    let rows = streams();
    let change = [(
        switchboard_store::ResourceKey::new("bench", "prod", switchboard_model::Kind::Route, "r0"),
        Some(route(0, (3, 1))["spec"].clone()),
    )];
    for i in 0..PLANS {
        let written = route(i * 7 + 3, (5, 1 + i as u32));
        call(
            http,
            reqwest::Method::POST,
            &format!("{base}/tenants/bench/import"),
            key,
            json!({ "documents": [written] }),
        )
        .await?;
        let revision = store.revision("bench").await?;
        let t = Instant::now();
        cache.kick("bench", "prod", std::time::SystemTime::now());
        let deadline = t + Duration::from_secs(60);
        while !cache.holds("bench", "prod", revision) {
            if Instant::now() > deadline {
                bail!("the snapshot cache did not reach revision {revision} in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        rebuilds.push(t.elapsed());
        let body = json!({"documents": [route(i * 7, (3, 1))]});
        let t = Instant::now();
        let plan = call(http, reqwest::Method::POST, &url, key, body).await?;
        plans.push(t.elapsed());
        let changed = plan["resources"].as_array().map_or(0, Vec::len);
        if changed != 2 || plan["revision"] != revision {
            bail!("loaded plan {i}: expected two resources at revision {revision}, got {plan}");
        }
        let t = Instant::now();
        let pure = planner
            .plan_held(
                ("bench", "prod", revision),
                &change,
                "switchboard.local",
                &rows,
            )
            .context("the snapshot cache no longer holds the revision")?;
        pures.push(t.elapsed());
        if pure.resources.len() != 2 {
            bail!("loaded pure plan {i}: {} resources", pure.resources.len());
        }
    }
    report(
        label,
        "plan, pure part, on the snapshot cache's translator",
        &pures,
    );
    report(
        label,
        "snapshot cache rebuild after a write (not the plan)",
        &rebuilds,
    );
    report(
        label,
        "plan over HTTP, mesh served here, first plan after each write",
        &plans,
    );
    Ok(())
}

fn report(label: &str, what: &str, samples: &[Duration]) {
    let s = Summary::of(samples);
    println!(
        "{label}: {what} x{}: p50 {} ms, p99 {} ms, max {} ms",
        samples.len(),
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
}

fn main() -> Result<()> {
    // cargo bench passes `--bench` (and any filter); this binary has nothing to select.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        run(Backend::Sqlite, "sqlite").await?;
        run(Backend::Postgres, "postgres").await
    })
}
