//! The allocator's own account of the process's memory, as gauges on the admin port's
//! `/metrics` (refreshed at each scrape): what the program holds (`allocated`), the pages
//! that holds (`active`), the allocator's bookkeeping (`metadata`) and the pages it keeps
//! resident (`resident`). Beside the process's RSS they tell live state from memory the
//! allocator has not given back yet. Only with the `jemalloc` feature: the system allocator
//! has no such statistics.

use switchboard_runtime::MetricDoc;

/// The gauges, documented with the rest (`metrics::documented`).
pub const METRICS: &[MetricDoc] = &[
    MetricDoc {
        name: "switchboard_memory_allocated_bytes",
        kind: "gauge",
        labels: "",
        help: "Bytes the control plane has allocated and not freed (jemalloc's stats.allocated; absent in a build with the system allocator)",
    },
    MetricDoc {
        name: "switchboard_memory_active_bytes",
        kind: "gauge",
        labels: "",
        help: "Bytes in the allocator's pages that hold live allocations (stats.active): allocated plus the free space inside those pages",
    },
    MetricDoc {
        name: "switchboard_memory_metadata_bytes",
        kind: "gauge",
        labels: "",
        help: "Bytes of the allocator's own bookkeeping (stats.metadata)",
    },
    MetricDoc {
        name: "switchboard_memory_resident_bytes",
        kind: "gauge",
        labels: "",
        help: "Bytes in resident pages the allocator maps (stats.resident): active pages, metadata, and freed pages not yet returned to the system",
    },
];

/// Sets the gauges from the allocator's current statistics.
#[cfg(feature = "jemalloc")]
pub fn refresh() {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The statistics are a snapshot taken when the epoch advances.
    if let Err(e) = epoch::advance() {
        tracing::debug!(error = %e, "cannot refresh the allocator's statistics");
        return;
    }
    let gauges = [
        (
            "switchboard_memory_allocated_bytes",
            stats::allocated::read(),
        ),
        ("switchboard_memory_active_bytes", stats::active::read()),
        ("switchboard_memory_metadata_bytes", stats::metadata::read()),
        ("switchboard_memory_resident_bytes", stats::resident::read()),
    ];
    for (name, value) in gauges {
        if let Ok(v) = value {
            metrics::gauge!(name).set(v as f64);
        }
    }
}

/// The system allocator keeps no statistics to read.
#[cfg(not(feature = "jemalloc"))]
pub fn refresh() {}
