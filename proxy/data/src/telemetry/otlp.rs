//! Span export over OTLP/gRPC: a `tracing` layer turning spans (the per-request
//! `proxy_request` span among them) into OpenTelemetry spans sent to a collector.

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

use super::TelemetryError;
use super::trace_context::trace_sampling_ratio;

/// The exporter's layer and guard: the control plane's too ([`switchboard_runtime::otel`]).
pub use switchboard_runtime::otel::{OtlpGuard, OtlpLayer};

/// A `tracing` layer exporting spans over OTLP/gRPC to `endpoint` (`http://host:4317`; a
/// bare `host:port` means `http://`) as service `service_name`, in batches. Spans of new
/// traces are sampled at [`set_trace_sampling_ratio`](super::set_trace_sampling_ratio);
/// spans with a parent (the request's `traceparent`) follow the parent's decision.
///
/// Must be called inside a Tokio runtime (the gRPC channel lives on it). Keep the guard,
/// and call [`OtlpGuard::shutdown`] before exiting so the last spans are sent.
pub fn otlp_layer<S>(
    endpoint: &str,
    service_name: &str,
) -> Result<(OtlpLayer<S>, OtlpGuard), TelemetryError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    switchboard_runtime::otel::otlp_layer(endpoint, service_name, ProcessSampler).map_err(|e| {
        TelemetryError::Otlp {
            endpoint: e.endpoint,
            message: e.message,
        }
    })
}

/// Parent-based sampling (a valid parent's `sampled` flag decides), else trace-id ratio
/// sampling at the process's ratio, read per span so that it can be set at any time.
#[derive(Debug, Clone)]
struct ProcessSampler;

impl ShouldSample for ProcessSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context
            .filter(|cx| cx.has_active_span())
            .map(|cx| cx.span().span_context().clone())
            .filter(|sc| sc.is_valid());
        match parent {
            Some(sc) => SamplingResult {
                decision: if sc.is_sampled() {
                    SamplingDecision::RecordAndSample
                } else {
                    SamplingDecision::Drop
                },
                attributes: Vec::new(),
                trace_state: sc.trace_state().clone(),
            },
            None => SamplingResult {
                decision: Sampler::TraceIdRatioBased(trace_sampling_ratio())
                    .should_sample(None, trace_id, name, span_kind, attributes, links)
                    .decision,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            },
        }
    }
}
