//! The trace of each recent commit, kept in this replica's memory so that the xDS server's
//! snapshot build of a revision can join the trace of the write that made it (the commit
//! span is its parent or link). Only commits made through this replica are known: a commit
//! announced by another replica's NOTIFY carries no trace (the payload stays
//! `{tenant}:{revision}`, which older replicas parse), and its snapshot build starts a trace
//! of its own.
//!
//! Bounded: the last [`PER_TENANT`] commits of each tenant that had a recorded span, and
//! nothing at all while no OTLP layer records spans.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use switchboard_runtime::otel::SpanContext;

/// Commits kept per tenant; a snapshot build lagging further behind links to fewer.
const PER_TENANT: usize = 256;

/// At most this many commits are returned for one build (its parent and links).
pub const MAX_LINKED_COMMITS: usize = 32;

/// A tenant's recent commits: revision → (meshes it changed, the commit span).
type Commits = BTreeMap<i64, (Vec<String>, SpanContext)>;

#[derive(Debug, Default)]
pub(crate) struct CommitTraces {
    tenants: Mutex<HashMap<String, Commits>>,
}

impl CommitTraces {
    pub(crate) fn record(&self, tenant: &str, revision: i64, meshes: Vec<String>, sc: SpanContext) {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let commits = tenants.entry(tenant.to_owned()).or_default();
        commits.insert(revision, (meshes, sc));
        while commits.len() > PER_TENANT {
            commits.pop_first();
        }
    }

    fn find(
        &self,
        tenant: &str,
        after: i64,
        through: i64,
        keep: impl Fn(&[String]) -> bool,
    ) -> Vec<SpanContext> {
        if after >= through {
            return Vec::new();
        }
        let tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(commits) = tenants.get(tenant) else {
            return Vec::new();
        };
        commits
            .range(after + 1..=through)
            .filter(|(_, (meshes, _))| keep(meshes))
            .map(|(_, (_, sc))| sc.clone())
            .take(MAX_LINKED_COMMITS)
            .collect()
    }
}

impl crate::Store {
    /// The spans of this replica's commits of `tenant` after revision `after` through
    /// `through` that changed `mesh`, oldest first (at most [`MAX_LINKED_COMMITS`]).
    pub fn commit_traces(
        &self,
        tenant: &str,
        mesh: &str,
        after: i64,
        through: i64,
    ) -> Vec<SpanContext> {
        self.inner
            .commit_traces
            .find(tenant, after, through, |meshes| {
                meshes.iter().any(|m| m == mesh)
            })
    }

    /// The span of this replica's commit of `tenant` at `revision`, whatever it changed.
    pub fn commit_trace(&self, tenant: &str, revision: i64) -> Option<SpanContext> {
        self.inner
            .commit_traces
            .find(tenant, revision - 1, revision, |_| true)
            .pop()
    }

    /// Records the commit span `span` of `revision`, which changed `meshes`; nothing when
    /// no OTLP layer records it.
    pub(crate) fn record_commit_trace(
        &self,
        span: &tracing::Span,
        tenant: &str,
        revision: i64,
        meshes: Vec<String>,
    ) {
        if let Some(sc) = switchboard_runtime::otel::span_context(span) {
            self.inner
                .commit_traces
                .record(tenant, revision, meshes, sc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_runtime::otel::{SpanId, TraceFlags, TraceId, TraceState};

    fn sc(n: u8) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes([n; 16]),
            SpanId::from_bytes([n; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }

    #[test]
    fn finds_the_commits_of_a_mesh_in_a_range_and_forgets_the_oldest() {
        let t = CommitTraces::default();
        t.record("acme", 1, vec!["prod".into()], sc(1));
        t.record("acme", 2, vec!["dev".into()], sc(2));
        t.record("acme", 3, vec!["prod".into(), "dev".into()], sc(3));
        t.record("globex", 3, vec!["prod".into()], sc(9));
        let prod = |a, b| t.find("acme", a, b, |m| m.iter().any(|m| m == "prod"));
        assert_eq!(prod(0, 3), vec![sc(1), sc(3)]);
        assert_eq!(prod(1, 3), vec![sc(3)]);
        assert!(prod(3, 3).is_empty());
        assert_eq!(t.find("acme", 1, 2, |_| true), vec![sc(2)]);
        for r in 4..(4 + PER_TENANT as i64) {
            t.record("acme", r, vec!["prod".into()], sc(4));
        }
        assert!(t.find("acme", 0, 3, |_| true).is_empty());
        assert_eq!(prod(0, 1000).len(), MAX_LINKED_COMMITS);
    }
}
