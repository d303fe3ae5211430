//! Logs and traces: the log subscriber (`log_format`, `log_level`) and, when `otlp_endpoint`
//! (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`) is set, the OTLP/gRPC span exporter
//! (batched, parent-based sampling at `trace_sampling_ratio`).
//!
//! Only the spans of a write's trace leave the process: the REST request span and the
//! `switchboard::trace` spans (store commit, change notice, snapshot build, push, ACK or
//! NACK). Per-stream and per-mesh spans stay logs: 10,000 streams are not 10,000 traces.

use crate::settings::{LogFormat, Settings};
use anyhow::{Context, Result};
use switchboard_runtime::otel::{OtlpGuard, TRACE_TARGET, otlp_layer, parent_based_ratio};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The request spans' target (`switchboard_api`'s `observe` module).
const REQUEST_TARGET: &str = "switchboard_api::observe";

/// Logs only, for commands that serve nothing (`migrate`).
pub fn init_logging(s: &Settings) {
    let _ = tracing_subscriber::registry().with(fmt_layer(s)).try_init();
}

/// Logs, and traces exported to `otlp_endpoint` when it is set. Keep the guard and give it
/// to [`shutdown`] at exit, so the last spans are sent. Inside the Tokio runtime.
pub fn init(s: &Settings) -> Result<Option<OtlpGuard>> {
    if s.otlp_endpoint.is_empty() {
        init_logging(s);
        return Ok(None);
    }
    let (layer, guard) = otlp_layer(
        &s.otlp_endpoint,
        "switchboard",
        parent_based_ratio(s.trace_sampling_ratio),
    )
    .context("setting otlp_endpoint")?;
    let traced = tracing_subscriber::filter::filter_fn(|meta| {
        meta.target() == TRACE_TARGET || meta.target() == REQUEST_TARGET
    });
    let _ = tracing_subscriber::registry()
        .with(fmt_layer(s))
        .with(layer.with_filter(traced))
        .try_init();
    tracing::info!(endpoint = %s.otlp_endpoint, ratio = s.trace_sampling_ratio, "exporting traces over OTLP");
    Ok(Some(guard))
}

/// Sends the spans not exported yet (waiting a few seconds at most).
pub fn shutdown(guard: Option<OtlpGuard>) {
    if let Some(guard) = guard {
        guard.shutdown();
    }
}

/// The log layer, filtered by `log_level` alone (the trace layer has its own filter).
fn fmt_layer<S>(s: &Settings) -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let filter =
        tracing_subscriber::EnvFilter::try_new(&s.log_level).unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match s.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    fmt.with_filter(filter)
}
