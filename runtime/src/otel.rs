//! OpenTelemetry for Switchboard's binaries: spans are `tracing` spans, and
//! `tracing-opentelemetry` turns them into OpenTelemetry spans when the OTLP layer
//! ([`otlp_layer`], feature `otlp`) is installed. Without it every helper here is a no-op, so
//! libraries call them unconditionally.
//!
//! A trace that crosses tasks (a REST write committed by the store's group task, a snapshot
//! built by a mesh task, pushed by every stream's task) is carried explicitly as a
//! [`SpanContext`]: taken from one span with [`span_context`], given to another with
//! [`set_parent`] or [`add_link`].

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
pub use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of the spans that make up a write's trace (REST request aside); the OTLP
/// layer's filter lets them, and the request spans, through.
pub const TRACE_TARGET: &str = "switchboard::trace";

/// The OpenTelemetry identity of `span`, if the OTLP layer records it (sampled or not: a
/// child given a non-sampled parent is dropped too, as parent-based sampling wants).
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Makes `parent` the parent of `span`. Call before `span` is first entered.
pub fn set_parent(span: &tracing::Span, parent: &SpanContext) {
    // An error means no OTLP layer, or a span already started: nothing to attach then.
    let _ = span.set_parent(Context::new().with_remote_span_context(parent.clone()));
}

/// Links `span` to `other` (a span it follows from without being its child).
pub fn add_link(span: &tracing::Span, other: &SpanContext) {
    span.add_link(other.clone());
}

/// Makes the caller's W3C `traceparent` (with its `tracestate`) the parent of `span`: the
/// span joins the caller's trace and follows its sampling decision. False when the value is
/// not a valid `traceparent` (then `span` starts a trace of its own).
pub fn continue_trace(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) -> bool {
    match remote_parent(traceparent, tracestate) {
        Some(cx) => span.set_parent(cx).is_ok(),
        None => false,
    }
}

/// OpenTelemetry's propagator over one `traceparent`, plus the one W3C rule it leaves out
/// (fixed field widths); `None` unless it yields a valid span context.
pub fn remote_parent(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    if !w3c_field_widths(traceparent) {
        return None;
    }
    let headers = W3cHeaders {
        traceparent,
        tracestate,
    };
    let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &headers);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The first 55 bytes are `vv-` 32 `-` 16 `-ff` hex digits (case and values are the
/// propagator's to check), and only a version after `00` may continue, with a `-`.
fn w3c_field_widths(value: &str) -> bool {
    let b = value.as_bytes();
    let fields = b.len() >= 55
        && b.iter().take(55).enumerate().all(|(i, c)| match i {
            2 | 35 | 52 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    fields && (b.len() == 55 || (b.get(55) == Some(&b'-') && !value.starts_with("00")))
}

struct W3cHeaders<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for W3cHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = vec!["traceparent"];
        if self.tracestate.is_some() {
            keys.push("tracestate");
        }
        keys
    }
}

#[cfg(feature = "otlp")]
pub use exporter::{OtlpError, OtlpGuard, OtlpLayer, otlp_layer, parent_based_ratio};

#[cfg(feature = "otlp")]
mod exporter {
    use std::time::Duration;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, ShouldSample};
    use tokio::runtime::{Handle, RuntimeFlavor};
    use tracing::Subscriber;
    use tracing_subscriber::registry::LookupSpan;

    /// The layer [`otlp_layer`] returns.
    pub type OtlpLayer<S> = tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>;

    /// How long [`OtlpGuard::shutdown`] waits for the last spans to be exported.
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

    /// The exporter could not be set up, or could not deliver.
    #[derive(Debug, thiserror::Error)]
    #[error("OTLP exporter to {endpoint}: {message}")]
    pub struct OtlpError {
        pub endpoint: String,
        pub message: String,
    }

    /// Parent-based sampling (a valid parent's `sampled` flag decides; a REST caller's
    /// `traceparent` is such a parent), and trace-id ratio sampling at `ratio` for traces
    /// that start here.
    pub fn parent_based_ratio(ratio: f64) -> Sampler {
        Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
    }

    /// A `tracing` layer exporting spans over OTLP/gRPC to `endpoint` (`http://host:4317`;
    /// a bare `host:port` means `http://`) as service `service_name`, in batches, sampled
    /// by `sampler`.
    ///
    /// Must be called inside a Tokio runtime (the gRPC channel lives on it). Keep the guard,
    /// and call [`OtlpGuard::shutdown`] before exiting so the last spans are sent.
    pub fn otlp_layer<S>(
        endpoint: &str,
        service_name: &str,
        sampler: impl ShouldSample + 'static,
    ) -> Result<(OtlpLayer<S>, OtlpGuard), OtlpError>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let fail = |message: String| OtlpError {
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
            .with_sampler(sampler)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .build();
        let tracer = provider.tracer(service_name.to_owned());
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
        pub fn flush(&self) -> Result<(), OtlpError> {
            blocking(|| self.provider.force_flush()).map_err(|e| OtlpError {
                endpoint: self.endpoint.clone(),
                message: format!("flush: {e}"),
            })
        }

        /// Exports the remaining spans (waiting up to 5 s) and stops the exporter; later
        /// spans are dropped. Safe to call from a multi-threaded runtime's task; on a
        /// current-thread runtime it finishes in the background, as blocking would stall
        /// the export.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_traceparent_by_the_w3c_rules() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = remote_parent(good, None).unwrap();
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled());
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert!(remote_parent(bad, None).is_none(), "{bad:?}");
        }
        // Without the OTLP layer, nothing is recorded and nothing fails.
        let span = tracing::info_span!("x");
        assert!(!continue_trace(&span, good, None));
        assert!(span_context(&span).is_none());
    }
}
