//! The store's metrics, recorded through the `metrics` facade (the server installs the
//! Prometheus exporter). [`METRICS`] documents them; the README's Metrics section is checked
//! against it.
//!
//! Latency is timed per operation (`op`, a fixed set of names) and per kind of operation
//! (`kind`: `read`, `write`, or `commit`, a group commit), so an alert can watch writes without
//! knowing every operation. Errors are counted where every database error becomes a
//! [`StoreError`](crate::StoreError) (`From<sqlx::Error>`), by class, so none escapes the
//! count; refusals such as "not found" or a stale `If-Match` are answers, not errors, and are
//! not counted.

pub use switchboard_runtime::MetricDoc;

/// Every metric the store records.
pub const METRICS: &[MetricDoc] = &[
    MetricDoc {
        name: "switchboard_store_seconds",
        kind: "histogram",
        labels: "op, kind",
        help: "Latency of store operations; op is the operation (put, get, mesh_snapshot, group_commit, …), kind is read, write or commit (a group commit: the tenant's lock to the commit)",
    },
    MetricDoc {
        name: "switchboard_store_errors_total",
        kind: "counter",
        labels: "error",
        help: "Database errors met by the store, by class: connection (unreachable, lost, TLS), timeout (no connection from the pool in time), statement (the database refused a statement), other (decoding, configuration)",
    },
    MetricDoc {
        name: "switchboard_store_group_writes",
        kind: "histogram",
        labels: "",
        help: "Writes committed together per group commit",
    },
];

/// The operations timed as writes; `group_commit` is the commit kind; every other is a read.
/// `tests::every_timed_op_is_classified` keeps the lists complete.
const WRITES: &[&str] = &[
    "put",
    "delete",
    "write_many",
    "create_tenant",
    "delete_tenant",
    "set_tenant_quotas",
    "create_ca",
    "replace_ca",
    "start_ca_rotation",
    "complete_ca_rotation",
    "abort_ca_rotation",
    "replica_heartbeat",
    "remove_replica",
];
const COMMITS: &[&str] = &["group_commit"];
#[cfg(test)]
const READS: &[&str] = &[
    "get",
    "labeled",
    "tenant_dump",
    "list",
    "list_everywhere",
    "mesh_snapshot",
    "list_cas",
    "tenant_quotas",
    "tenant_revisions",
    "first_commit_after",
];

/// The kind (`read`, `write`, `commit`) of a timed operation.
pub(crate) fn op_kind(op: &str) -> &'static str {
    if COMMITS.contains(&op) {
        "commit"
    } else if WRITES.contains(&op) {
        "write"
    } else {
        "read"
    }
}

/// The error classes of `switchboard_store_errors_total`.
const ERROR_CLASSES: &[&str] = &["connection", "timeout", "statement", "other"];

fn error_class(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => "connection",
        sqlx::Error::PoolTimedOut => "timeout",
        sqlx::Error::Database(_) => "statement",
        _ => "other",
    }
}

/// Counts a database error (called by `From<sqlx::Error> for StoreError`).
pub(crate) fn database_error(e: &sqlx::Error) {
    metrics::counter!("switchboard_store_errors_total", "error" => error_class(e)).increment(1);
}

/// Makes the error counters exist at zero, so that `rate()` and `increase()` see the first
/// error rather than a series appearing with it.
pub(crate) fn init() {
    for class in ERROR_CLASSES {
        metrics::counter!("switchboard_store_errors_total", "error" => *class).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation the crate times (`Timer::start` with a literal) is listed as a read, write or commit,
    /// so a new write cannot be counted as a read by default.
    #[test]
    fn every_timed_op_is_classified() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = 0;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for part in text.split("Timer::start(\"").skip(1) {
                    let op = &part[..part.find('"').unwrap()];
                    found += 1;
                    assert!(
                        WRITES.contains(&op) || COMMITS.contains(&op) || READS.contains(&op),
                        "{}: Timer::start({op:?}) is not listed in store/src/metrics.rs",
                        path.display()
                    );
                }
            }
        }
        assert!(found > 10, "found only {found} timed operations");
    }

    #[test]
    fn kinds() {
        assert_eq!(op_kind("put"), "write");
        assert_eq!(op_kind("group_commit"), "commit");
        assert_eq!(op_kind("mesh_snapshot"), "read");
    }

    #[test]
    fn error_classes() {
        assert_eq!(error_class(&sqlx::Error::PoolTimedOut), "timeout");
        assert_eq!(error_class(&sqlx::Error::PoolClosed), "connection");
        assert_eq!(error_class(&sqlx::Error::RowNotFound), "other");
        for class in [
            error_class(&sqlx::Error::PoolTimedOut),
            error_class(&sqlx::Error::PoolClosed),
            error_class(&sqlx::Error::RowNotFound),
        ] {
            assert!(ERROR_CLASSES.contains(&class));
        }
    }
}
