//! Span export over OTLP/gRPC: a `tracing` layer turning spans (the per-request
//! `proxy_request` span among them) into OpenTelemetry spans sent to a collector.

use std::time::Duration;

use opentelemetry::trace::{
    Link, SpanKind, TraceContextExt, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, SdkTracer, SdkTracerProvider, ShouldSample,
};
use tokio::runtime::{Handle, RuntimeFlavor};
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

use super::TelemetryError;
use super::trace_context::trace_sampling_ratio;

/// The layer [`otlp_layer`] returns.
pub type OtlpLayer<S> = tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>;

/// How long [`OtlpGuard::shutdown`] waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

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
    let fail = |message: String| TelemetryError::Otlp {
        endpoint: endpoint.to_owned(),
        message,
    };
    if Handle::try_current().is_err() {
        return Err(fail("must be set up inside a Tokio runtime".into()));
    }
    let url = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(ProcessSampler)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("switchboard-proxy");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false);
    let guard = OtlpGuard {
        provider,
        endpoint: endpoint.to_owned(),
    };
    Ok((layer, guard))
}

/// Owns the exporter of [`otlp_layer`]: flush or shut it down through this.
#[derive(Debug)]
pub struct OtlpGuard {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl OtlpGuard {
    /// Exports every span ended so far, waiting for the collector's answer.
    pub fn flush(&self) -> Result<(), TelemetryError> {
        blocking(|| self.provider.force_flush()).map_err(|e| TelemetryError::Otlp {
            endpoint: self.endpoint.clone(),
            message: format!("flush: {e}"),
        })
    }

    /// Exports the remaining spans (waiting up to 5 s) and stops the exporter; later spans
    /// are dropped. Safe to call from a multi-threaded runtime's task; on a current-thread
    /// runtime it finishes in the background, as blocking would stall the export.
    pub fn shutdown(self) {
        let provider = self.provider;
        let run = move || {
            if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                tracing::warn!(error = %e, "OTLP exporter shutdown");
            }
        };
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::CurrentThread) => {
                std::thread::spawn(run);
            }
            Ok(_) => tokio::task::block_in_place(run),
            Err(_) => run(),
        }
    }
}

/// Runs a blocking exporter call without stalling a multi-threaded runtime's worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
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
