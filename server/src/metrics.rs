//! The Prometheus exporter behind the admin port's `/metrics`: the histogram buckets, and a
//! `# HELP` line for every metric the crates document (`METRICS` of the store, the REST API
//! and the xDS server). The README's Metrics section is generated from the same list (a test
//! keeps it so), and `server/tests/metrics.rs` checks that a real `serve` exports each one.

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard_runtime::MetricDoc;

/// Every metric the control plane exports: the REST API's, the xDS server's, the store's.
pub fn documented() -> Vec<MetricDoc> {
    [
        switchboard_api::observe::METRICS,
        switchboard_xds_server::metrics::METRICS,
        switchboard_store::metrics::METRICS,
        crate::memory::METRICS,
    ]
    .concat()
}

/// Buckets of latencies in seconds: sub-millisecond store reads to slow REST writes.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of convergence: a healthy mesh converges in milliseconds, and an alert on a p99
/// of several seconds needs buckets above it (a quantile in the +Inf bucket reads as the
/// highest finite bound).
const CONVERGENCE: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BYTES: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];
/// Writes per group commit (at most 64).
const GROUP: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Installs the recorder (every histogram with buckets, none a summary), starts its upkeep
/// on the current runtime (without it, histogram samples are held until a scrape) and
/// describes every documented metric.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("switchboard_xds_convergence_seconds".into()),
            CONVERGENCE,
        )
        .context("metrics buckets")?
        .set_buckets_for_metric(
            Matcher::Full("switchboard_store_group_writes".into()),
            GROUP,
        )
        .context("metrics buckets")?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .context("metrics buckets")?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES)
        .context("metrics buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    switchboard_runtime::metrics::spawn_upkeep(handle.clone());
    for m in documented() {
        match m.kind {
            "counter" => metrics::describe_counter!(m.name, m.help),
            "gauge" => metrics::describe_gauge!(m.name, m.help),
            _ => metrics::describe_histogram!(m.name, m.help),
        }
    }
    Ok(handle)
}

/// The README's table of metrics, as generated from [`documented`].
#[cfg(test)]
fn readme_table() -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n| --- | --- | --- | --- |\n");
    for m in documented() {
        let labels = if m.labels.is_empty() {
            String::new()
        } else {
            m.labels
                .split(", ")
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            m.name, m.kind, labels, m.help
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const BEGIN: &str =
        "<!-- metrics table: generated from the crates' METRICS by server/src/metrics.rs -->\n";
    const END: &str = "<!-- end of metrics table -->";

    /// The README's Metrics table is exactly what the code documents. With
    /// `SWITCHBOARD_UPDATE_README=1` the test writes it instead of failing.
    #[test]
    fn the_readme_lists_every_metric() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md");
        let start = readme
            .find(BEGIN)
            .expect("the README has the metrics table's marker")
            + BEGIN.len();
        let end = start
            + readme[start..]
                .find(END)
                .expect("the README ends the metrics table");
        let expected = readme_table();
        if readme[start..end] == expected {
            return;
        }
        if std::env::var("SWITCHBOARD_UPDATE_README").as_deref() == Ok("1") {
            let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
            std::fs::write(&path, updated).expect("write README.md");
            return;
        }
        panic!(
            "README.md's metrics table is not the one the code documents; run this test with \
             SWITCHBOARD_UPDATE_README=1 to rewrite it. Expected:\n{expected}"
        );
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = BTreeSet::new();
        for m in documented() {
            assert!(seen.insert(m.name), "{} is documented twice", m.name);
            assert!(m.name.starts_with("switchboard_"), "{}", m.name);
            assert!(
                m.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                m.name
            );
            assert!(!m.help.is_empty() && !m.help.contains('|') && !m.help.contains('\n'));
            match m.kind {
                "counter" => assert!(m.name.ends_with("_total"), "counter {}", m.name),
                "gauge" | "histogram" => {
                    assert!(!m.name.ends_with("_total"), "{} {}", m.kind, m.name)
                }
                other => panic!("{}: unknown type {other}", m.name),
            }
            // Base units only.
            for unit in ["_ms", "_milliseconds", "_kb", "_mb", "_minutes"] {
                assert!(!m.name.contains(unit), "{} is not in base units", m.name);
            }
            for label in m.labels.split(", ").filter(|l| !l.is_empty()) {
                assert!(
                    !["node", "stream", "stream_id", "mesh", "replica", "path"].contains(&label),
                    "{} has the unbounded label {label}",
                    m.name
                );
            }
        }
    }
}
