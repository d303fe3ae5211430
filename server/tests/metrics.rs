//! The metrics an operator alerts on, end to end: a real `switchboard serve` scraped after a
//! REST write and an xDS stream with an ACK and a NACK exports every metric the README lists,
//! with its type (so the documentation cannot drift from what is exported, in either
//! direction); replicas sharing PostgreSQL see each other's heartbeats, a stopped replica
//! leaves and a killed one shows as missing; and the files in `deploy/monitoring/` query only
//! metrics the README lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::Method as M;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use switchboard_xds_proto::type_url::CLUSTER;
use switchboard_xds_server::testing::{AdsClient, node};

mod common;

use common::call;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The README's metrics table: name → (type, labels).
fn documented() -> BTreeMap<String, (String, String)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("<!-- metrics table:")
        .expect("the README has a metrics table");
    let end = start
        + readme[start..]
            .find("<!-- end of metrics table -->")
            .unwrap();
    let mut out = BTreeMap::new();
    for line in readme[start..end].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", name, type, labels, meaning, ""
        if cells.len() < 6 || !cells[1].starts_with("`switchboard_") {
            continue;
        }
        let name = cells[1].trim_matches('`').to_owned();
        let labels = cells[3].replace('`', "");
        out.insert(name, (cells[2].to_owned(), labels));
    }
    assert!(out.len() > 20, "only {} metrics in the README", out.len());
    out
}

/// One sample of Prometheus text: the metric name, its labels and value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values here never hold `",` (tenants, types, routes, codes).
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").unwrap();
            map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
        }
        out.push(Sample {
            name: name.to_owned(),
            labels: map,
            value: value.parse().unwrap(),
        });
    }
    out
}

/// The sum of the samples of `name` having every label of `want`.
fn value(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// The `# TYPE` lines: name → type.
fn types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

/// Scrapes until `done` holds (within 30 s), then returns the text.
async fn scrape_until(
    c: &reqwest::Client,
    server: &common::Server,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = common::metrics(c, server).await;
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}; /metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn every_documented_metric_is_exported_with_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path(), &["--log-level", "info"], None).await;
    let admin = std::fs::read_to_string(dir.path().join("data/admin-token")).unwrap();
    let admin = admin.trim();
    let c = reqwest::Client::new();
    let v1 = format!("{}/v1", server.rest);
    let m = format!("{v1}/tenants/acme/meshes/prod");
    for (method, url, body, want) in [
        (
            M::POST,
            format!("{v1}/tenants"),
            json!({"name": "acme"}),
            201,
        ),
        (M::PUT, m.clone(), json!({"spec": {}}), 200),
        (
            M::PUT,
            format!("{m}/services/pay"),
            json!({"spec": {"protocol": "grpc", "port": 8080}}),
            200,
        ),
    ] {
        let (s, b) = call(&c, method, &url, admin, Some(body), None).await;
        assert_eq!(s, want, "{url}: {b}");
    }
    let (s, pt) = call(
        &c,
        M::POST,
        &format!("{v1}/tenants/acme/proxy-tokens"),
        admin,
        Some(json!({"mesh": "prod"})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{pt}");
    let token = pt["secret"].as_str().unwrap().to_owned();

    // A stream with a wrong token ends UNAUTHENTICATED.
    let refused = async {
        let mut bad = AdsClient::connect(
            &server.xds_url(),
            node("acme", "prod", "intruder"),
            Some("not-a-token"),
        )
        .await?;
        bad.subscribe(CLUSTER, &[]).await?;
        bad.recv().await.map(|_| ())
    }
    .await;
    assert_eq!(
        refused.unwrap_err().code(),
        tonic::Code::Unauthenticated,
        "a wrong token"
    );

    // A stream that ACKs, NACKs a change, then ACKs the next.
    let mut ads = AdsClient::connect(&server.xds_url(), node("acme", "prod", "n1"), Some(&token))
        .await
        .unwrap();
    ads.subscribe(CLUSTER, &[]).await.unwrap();
    let first = ads.recv_and_ack(&[]).await.unwrap();
    let put = |name: &'static str| {
        let (c, m) = (c.clone(), m.clone());
        async move {
            let (s, b) = call(
                &c,
                M::PUT,
                &format!("{m}/services/{name}"),
                admin,
                Some(json!({"spec": {"port": 8080}})),
                None,
            )
            .await;
            assert_eq!(s, 200, "{b}");
        }
    };
    put("rejected").await;
    let resp = ads.recv().await.unwrap();
    ads.nack(&resp, &[], &first.version_info, "cluster rejected: test")
        .await
        .unwrap();
    put("accepted").await;
    let resp = ads.recv().await.unwrap();
    ads.ack(&resp, &[]).await.unwrap();

    let docs = documented();
    let text = scrape_until(
        &c,
        &server,
        "not every documented metric was exported",
        |t| {
            let types = types(t);
            docs.keys().all(|n| types.contains_key(n))
                && value(t, "switchboard_xds_convergence_seconds_count", &[]) >= 1.0
                && value(t, "switchboard_xds_acks_total", &[]) >= 2.0
        },
    )
    .await;
    let exported = types(&text);
    for (name, (kind, _)) in &docs {
        assert_eq!(&exported[name], kind, "the type of {name}");
    }
    for (name, kind) in &exported {
        if name.starts_with("switchboard_") {
            assert!(
                docs.contains_key(name),
                "{name} ({kind}) is exported but not documented"
            );
        }
    }
    // Every exported series carries exactly the documented labels (histograms add `le`).
    for s in samples(&text) {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                s.name
                    .strip_suffix(suffix)
                    .filter(|b| docs.get(*b).is_some_and(|d| d.0 == "histogram"))
            })
            .unwrap_or(s.name.as_str());
        let Some((_, labels)) = docs.get(base) else {
            continue;
        };
        let want: BTreeSet<&str> = labels.split(", ").filter(|l| !l.is_empty()).collect();
        let got: BTreeSet<&str> = s
            .labels
            .keys()
            .map(String::as_str)
            .filter(|l| *l != "le")
            .collect();
        assert_eq!(got, want, "the labels of {}", s.name);
    }

    // What happened is what was counted.
    let cds = [("tenant", "acme"), ("type", "CDS")];
    assert_eq!(value(&text, "switchboard_xds_nacks_total", &cds), 1.0);
    assert!(value(&text, "switchboard_xds_acks_total", &cds) >= 2.0);
    assert!(value(&text, "switchboard_xds_pushes_total", &cds) >= 3.0);
    assert_eq!(value(&text, "switchboard_xds_streams", &cds), 1.0);
    assert!(
        value(
            &text,
            "switchboard_xds_stream_errors_total",
            &[("code", "UNAUTHENTICATED")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &text,
            "switchboard_xds_convergence_seconds_count",
            &[("type", "CDS")]
        ),
        1.0,
        "one revision was pushed after the stream connected and ACKed"
    );
    assert_eq!(
        value(
            &text,
            "switchboard_http_requests_total",
            &[
                ("route", "/v1/tenants"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        1.0
    );
    assert!(
        value(
            &text,
            "switchboard_store_seconds_count",
            &[("kind", "commit")]
        ) >= 1.0
    );
    assert!(
        value(
            &text,
            "switchboard_store_seconds_count",
            &[("kind", "read")]
        ) >= 1.0
    );
    assert_eq!(value(&text, "switchboard_store_errors_total", &[]), 0.0);
    assert_eq!(value(&text, "switchboard_store_up", &[]), 1.0);
    assert_eq!(
        value(&text, "switchboard_replicas", &[("state", "live")]),
        1.0
    );
    assert_eq!(
        value(&text, "switchboard_replicas", &[("state", "missing")]),
        0.0
    );
    // Routes are templates, never the paths callers sent.
    for s in samples(&text) {
        if let Some(route) = s.labels.get("route") {
            assert!(
                !route.contains("acme") && !route.contains("prod"),
                "{}: route {route}",
                s.name
            );
        }
    }
    // Every histogram has buckets, including the +Inf one.
    for (name, kind) in &exported {
        if kind == "histogram" {
            assert!(
                text.contains(&format!("{name}_bucket{{")) && text.contains("le=\"+Inf\""),
                "{name} has no buckets"
            );
        }
    }
    // The commit-to-ACK histogram reaches past the alert's threshold (5 s).
    assert!(text.contains("switchboard_xds_convergence_seconds_bucket{type=\"CDS\",le=\"30\"}"));
    // The change-log lag comes back to zero once the replica has applied every commit.
    scrape_until(&c, &server, "the change-log lag did not return to 0", |t| {
        value(t, "switchboard_xds_changelog_lag_revisions", &[]) == 0.0
            && value(t, "switchboard_xds_changelog_lag_seconds", &[]) == 0.0
    })
    .await;
    drop(ads);
}

/// Replicas on one PostgreSQL see each other live; one stopped with SIGTERM removes itself;
/// one killed shows as missing.
#[tokio::test]
async fn replicas_see_each_others_heartbeats() {
    let Some(db) = switchboard_store::testing::fresh(switchboard_store::Backend::Postgres).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = "24".repeat(32);
    let flags = [
        "--database-url",
        db.url.as_str(),
        "--admin-token",
        "replica-metrics-admin-token",
        "--ca-key",
        &key,
        "--log-level",
        "info",
    ];
    let a = common::start(dir.path(), &flags, None).await;
    let b = common::start(dir.path(), &flags, None).await;
    let c = reqwest::Client::new();
    let replicas = |t: &str, state: &str| value(t, "switchboard_replicas", &[("state", state)]);
    for server in [&a, &b] {
        scrape_until(&c, server, "the replicas did not see each other", |t| {
            replicas(t, "live") == 2.0 && replicas(t, "missing") == 0.0
        })
        .await;
    }
    // A replica stopped with SIGTERM removes itself: the other sees one live, none missing.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &b.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    scrape_until(&c, &a, "the stopped replica is still listed", |t| {
        replicas(t, "live") == 1.0 && replicas(t, "missing") == 0.0
    })
    .await;
    drop(b);
    // A replica killed outright is missing once its heartbeat is 15 s old.
    let killed = common::start(dir.path(), &flags, None).await;
    scrape_until(&c, &a, "the third replica was not seen", |t| {
        replicas(t, "live") == 2.0
    })
    .await;
    drop(killed);
    let text = scrape_until(&c, &a, "the killed replica was not counted missing", |t| {
        replicas(t, "missing") == 1.0
    })
    .await;
    assert_eq!(replicas(&text, "live"), 1.0);
    assert!(value(&text, "switchboard_replica_heartbeat_age_seconds", &[]) > 15.0);
}

/// Metric names a PromQL expression or dashboard query names (histogram series reduced to
/// their histogram's name).
fn queried(expr: &str, docs: &BTreeMap<String, (String, String)>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in expr.match_indices("switchboard_") {
        let name: String = expr[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| docs.contains_key(*b)))
            .map_or(name.clone(), str::to_owned);
        out.insert(base);
    }
    out
}

#[test]
fn the_dashboard_and_the_alerts_query_documented_metrics() {
    let docs = documented();
    let dir = repo().join("deploy/monitoring");

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dashboard.json")).unwrap())
            .expect("dashboard.json is JSON");
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    assert!(
        vars.iter().any(|v| v["name"] == "tenant"),
        "a tenant variable"
    );
    let mut panels = 0;
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        panels += 1;
        assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = queried(expr, &docs);
            assert!(!names.is_empty(), "{}: {expr}", panel["title"]);
            for n in names {
                assert!(
                    docs.contains_key(&n),
                    "the dashboard queries {n}, which is not exported"
                );
                used.insert(n);
            }
        }
    }
    assert!(panels >= 10, "{panels} panels");
    for must in [
        "switchboard_xds_streams",
        "switchboard_xds_pushes_total",
        "switchboard_xds_acks_total",
        "switchboard_xds_nacks_total",
        "switchboard_xds_convergence_seconds",
        "switchboard_xds_snapshot_build_seconds",
        "switchboard_store_seconds",
        "switchboard_store_errors_total",
        "switchboard_xds_changelog_lag_seconds",
        "switchboard_replicas",
        "switchboard_http_requests_total",
    ] {
        assert!(used.contains(must), "the dashboard does not show {must}");
    }

    let rules: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("alerts.yaml")).unwrap())
            .expect("alerts.yaml is YAML");
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().expect("only alerting rules");
            assert!(alerts.insert(name.to_owned()), "{name} twice");
            let expr = rule["expr"].as_str().unwrap();
            for n in queried(expr, &docs) {
                assert!(
                    docs.contains_key(&n),
                    "{name} queries {n}, which is not exported"
                );
            }
            assert!(
                ["critical", "warning"].contains(&rule["labels"]["severity"].as_str().unwrap()),
                "{name}'s severity"
            );
            for a in ["summary", "description", "runbook"] {
                assert!(
                    rule["annotations"][a]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{name} has no {a}"
                );
            }
        }
    }
    assert!(alerts.len() >= 8, "{alerts:?}");
}
