//! The xDS end of a write's trace: each snapshot build's span ([`BuildTrace`], kept in the
//! snapshot) is the parent of the push spans of the streams that send it, and each push span
//! of its ACK or NACK span.
//!
//! Bounded: the first [`PUSH_SPANS_PER_SNAPSHOT`] streams to send a snapshot trace their
//! pushes of it (one span per response, open until the client answers it); the others are
//! counted, and when the snapshot goes the count is reported as one `xds.pushes_untraced`
//! span (attribute `streams`) under the build and in the
//! `switchboard_xds_push_spans_skipped_total` counter. So 10,000 streams make about 200
//! spans per change, not 20,000. Nothing is recorded unless the build span is sampled.
//!
//! Attributes are names and numbers only (tenant, mesh, node, revision, type, version,
//! nonce, resource count, the client's NACK message): never a token, key or certificate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use switchboard_runtime::otel::{SpanContext, TRACE_TARGET, set_parent};
use switchboard_xds_proto::ResourceType;

use crate::node::NodeId;
use crate::status::Sent;

/// How many streams trace their pushes of one snapshot.
pub const PUSH_SPANS_PER_SNAPSHOT: u32 = 100;

/// A snapshot build's span context and what is left of its push span budget.
#[derive(Debug, Default)]
pub struct BuildTrace {
    /// The build span, if sampled.
    context: Option<SpanContext>,
    left: AtomicU32,
    untraced: AtomicU64,
}

impl BuildTrace {
    /// The trace of a build whose span is `context` (nothing unless it is sampled).
    pub fn new(context: Option<SpanContext>) -> Self {
        Self {
            context: context.filter(SpanContext::is_sampled),
            left: AtomicU32::new(PUSH_SPANS_PER_SNAPSHOT),
            untraced: AtomicU64::new(0),
        }
    }

    /// The build span, if sampled.
    pub fn context(&self) -> Option<&SpanContext> {
        self.context.as_ref()
    }

    /// A stream's turn to trace its pushes of this snapshot: the parent of its push spans,
    /// or `None` (not sampled, or the budget is spent: then the stream is counted).
    fn take_turn(&self) -> Option<SpanContext> {
        let context = self.context.as_ref()?;
        let took = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if took {
            Some(context.clone())
        } else {
            self.untraced.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Streams that sent the snapshot without tracing it.
    pub fn untraced(&self) -> u64 {
        self.untraced.load(Ordering::Relaxed)
    }
}

impl Drop for BuildTrace {
    fn drop(&mut self) {
        let untraced = self.untraced();
        let Some(context) = &self.context else {
            return;
        };
        if untraced == 0 {
            return;
        }
        metrics::counter!("switchboard_xds_push_spans_skipped_total").increment(untraced);
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            parent: None,
            "xds.pushes_untraced",
            streams = untraced,
            limit = PUSH_SPANS_PER_SNAPSHOT,
        );
        set_parent(&span, context);
        // Started and ended here: a marker under the build span.
        drop(span);
    }
}

/// One stream's open push spans: per type, the nonce of the traced response awaiting its
/// answer.
#[derive(Debug)]
pub(crate) struct PushTraces {
    node: String,
    /// The revision of the last snapshot the stream asked a turn of, and the answer.
    turn: Option<(i64, Option<SpanContext>)>,
    open: BTreeMap<ResourceType, (String, tracing::Span)>,
}

impl PushTraces {
    pub(crate) fn new(node: &NodeId) -> Self {
        Self {
            node: node.to_string(),
            turn: None,
            open: BTreeMap::new(),
        }
    }

    /// A response of `rtype` built from the snapshot of `sent.revision` (of `tenant`'s
    /// `mesh`), whose build is `build`, is about to be written.
    pub(crate) fn pushed(
        &mut self,
        build: &BuildTrace,
        (tenant, mesh): (&str, &str),
        rtype: ResourceType,
        sent: &Sent,
    ) {
        if build.context().is_none() {
            // Not sampled: nothing to trace, and no open span outlives its snapshot's turn.
            self.open.remove(&rtype);
            return;
        }
        let parent = match &self.turn {
            Some((revision, parent)) if *revision == sent.revision => parent.clone(),
            _ => {
                let parent = build.take_turn();
                self.turn = Some((sent.revision, parent.clone()));
                parent
            }
        };
        let Some(parent) = parent else {
            self.open.remove(&rtype);
            return;
        };
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            parent: None,
            "xds.push",
            tenant,
            mesh,
            node = %self.node,
            revision = sent.revision,
            r#type = rtype.short_name(),
            version = %sent.version,
            nonce = %sent.nonce,
        );
        set_parent(&span, &parent);
        // Replacing an unanswered push ends its span.
        self.open.insert(rtype, (sent.nonce.clone(), span));
    }

    /// The client answered the response `nonce` of `rtype`: ACK, or NACK with `error`.
    pub(crate) fn answered(&mut self, rtype: ResourceType, nonce: &str, error: Option<&str>) {
        if self.open.get(&rtype).is_none_or(|(n, _)| n != nonce) {
            return;
        }
        let Some((_, push)) = self.open.remove(&rtype) else {
            return;
        };
        let answer = match error {
            None => tracing::info_span!(
                target: TRACE_TARGET,
                parent: &push,
                "xds.ack",
                node = %self.node,
                r#type = rtype.short_name(),
                nonce,
            ),
            Some(error) => tracing::info_span!(
                target: TRACE_TARGET,
                parent: &push,
                "xds.nack",
                node = %self.node,
                r#type = rtype.short_name(),
                nonce,
                error,
            ),
        };
        // Both end here: the push span lasted until the client's answer.
        drop(answer);
        drop(push);
    }
}
