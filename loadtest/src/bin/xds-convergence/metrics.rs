//! The control plane's own xDS metrics, summed for the report.

use std::collections::BTreeMap;

/// The server's xDS metrics that matter here, summed per type label.
pub fn metrics_summary(text: &str) -> Vec<String> {
    let mut sums: BTreeMap<(String, String), f64> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let wanted = [
            "switchboard_xds_pushes_total",
            "switchboard_xds_nacks_total",
            "switchboard_xds_convergence_seconds_sum",
            "switchboard_xds_convergence_seconds_count",
            "switchboard_xds_snapshot_build_seconds_sum",
            "switchboard_xds_snapshot_build_seconds_count",
        ];
        if !wanted.contains(&name) {
            continue;
        }
        let t = labels
            .split_once("type=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or("", |(t, _)| t);
        *sums.entry((name.to_owned(), t.to_owned())).or_default() += value;
    }
    let get = |name: &str, t: &str| sums.get(&(name.to_owned(), t.to_owned())).copied();
    let mut out = Vec::new();
    let mut pushes = Vec::new();
    let mut convergence = Vec::new();
    let mut nacks = 0.0;
    for t in ["LDS", "RDS", "CDS", "EDS"] {
        if let Some(p) = get("switchboard_xds_pushes_total", t) {
            pushes.push(format!("{t} {p}"));
        }
        nacks += get("switchboard_xds_nacks_total", t).unwrap_or(0.0);
        if let (Some(sum), Some(count)) = (
            get("switchboard_xds_convergence_seconds_sum", t),
            get("switchboard_xds_convergence_seconds_count", t),
        ) && count > 0.0
        {
            convergence.push(format!("{t} {:.2} ms over {count}", sum / count * 1000.0));
        }
    }
    out.push(format!("pushes: {}; NACKs: {nacks}", pushes.join(", ")));
    if !convergence.is_empty() {
        out.push(format!(
            "convergence as the server measures it (commit to ACK), mean: {}",
            convergence.join(", ")
        ));
    }
    if let (Some(sum), Some(count)) = (
        get("switchboard_xds_snapshot_build_seconds_sum", ""),
        get("switchboard_xds_snapshot_build_seconds_count", ""),
    ) && count > 0.0
    {
        out.push(format!(
            "snapshot builds: {count}, mean {:.2} ms",
            sum / count * 1000.0
        ));
    }
    out
}

/// The allocator's gauges (`switchboard_memory_*_bytes`, a jemalloc build's), in MiB, as one
/// line: what the control plane holds beside what it has not given back. `None` when the
/// server exports none.
pub fn allocator_summary(text: &str) -> Option<String> {
    let mut parts = Vec::new();
    for what in ["allocated", "active", "metadata", "resident"] {
        let name = format!("switchboard_memory_{what}_bytes ");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.trim().parse::<f64>().ok())?;
        parts.push(format!("{what} {:.1}", value / (1024.0 * 1024.0)));
    }
    Some(format!("{} MiB", parts.join(", ")))
}
