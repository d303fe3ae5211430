//! `switchboard-proxy`: the bundled data-plane proxy.
//!
//! - [`cli`]: bootstrap file and flags.
//! - [`listeners`]: the LDS handler that binds, keeps and drains sockets.
//! - [`admin`]: `/ready`, `/stats`, `/config_dump`, `/clusters`.
//! - [`workers`]: the data path's threads, one single-threaded runtime each.
//! - [`log_output`]: stderr, written in batches.
//!
//! Everything else is in the libraries: the xDS client (`switchboard-proxy-xds`) and the
//! data path (`switchboard-proxy-data`). The process needs no privileges: it binds the ports
//! its listeners name (sidecars use 15001/15006, above 1024), writes nothing to disk, and
//! reads only its bootstrap and token files.

mod admin;
mod cli;
mod listeners;
mod log_output;
mod workers;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard_proxy_data::listener::ConnectionLimit;
use switchboard_proxy_data::{ClusterManager, telemetry};
use switchboard_proxy_xds::client::Handlers;
use switchboard_proxy_xds::{ClientOptions, ConfigStore, XdsClient};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use cli::{Args, LogFormat};
use listeners::ListenerManager;
use log_output::{BareAccessLines, LogOutput, LogWriter};
use workers::Workers;

fn main() -> ExitCode {
    let args = Args::parse();
    let bootstrap = match args.bootstrap() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("switchboard-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = telemetry::set_trace_sampling_ratio(args.trace_sampling_ratio) {
        eprintln!("switchboard-proxy: --trace-sampling-ratio: {e}");
        return ExitCode::from(2);
    }
    if let Some(format) = &args.access_log_format {
        match telemetry::AccessLog::parse(format) {
            Ok(log) => telemetry::set_access_log(log),
            Err(e) => {
                eprintln!("switchboard-proxy: --access-log-format: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let concurrency = args
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    // Before anything logs, and dropped last, so that every line is written out.
    let log = match LogOutput::stderr() {
        Ok(log) => log,
        Err(e) => {
            eprintln!("switchboard-proxy: cannot start the log output: {e}");
            return ExitCode::FAILURE;
        }
    };
    log.flush_on_panic();
    let workers = match Workers::start(concurrency) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("switchboard-proxy: cannot start the worker threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The control runtime: xDS, admin and signals, on this thread.
    let runtime = match workers::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args, bootstrap, &workers, log.writer()));
    // The listeners have drained (or timed out): stop the workers, then the rest.
    drop(workers);
    drop(runtime);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "switchboard-proxy failed");
            // The log's lines first, then this one.
            drop(log);
            eprintln!("switchboard-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to `writer` (stderr, in batches: see [`log_output`]); colours only on a terminal.
/// In the text format, access log lines are written bare, as Envoy writes them; in JSON
/// each is the `message` of a log object, so that every line of the stream is JSON.
fn init_logging(args: &Args, writer: LogWriter) -> anyhow::Result<Option<telemetry::OtlpGuard>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let fmt = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .event_format(BareAccessLines(tracing_subscriber::fmt::format()))
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
    };
    let (otlp, guard) = match &args.otlp_endpoint {
        Some(endpoint) => {
            let (layer, guard) =
                telemetry::otlp_layer(endpoint, "switchboard-proxy").context("--otlp-endpoint")?;
            // Only request spans leave the process: the proxy's own spans (xDS stream,
            // listeners) are logs, not traces of anyone's request.
            let requests_only = tracing_subscriber::filter::filter_fn(|meta| {
                !meta.is_span() || meta.name() == "proxy_request"
            });
            (Some(layer.with_filter(requests_only)), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otlp)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(guard)
}

/// Installs the recorder and starts its upkeep on the current runtime.
fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            telemetry::LATENCY_BUCKETS,
        )
        .context("latency buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    telemetry::describe_metrics();
    // Without it, every request's latency sample is held until /stats is scraped.
    switchboard_runtime::metrics::spawn_upkeep(handle.clone());
    Ok(handle)
}

async fn run(
    args: Args,
    bootstrap: switchboard_proxy_xds::Bootstrap,
    workers: &Workers,
    log: LogWriter,
) -> anyhow::Result<()> {
    let otlp = init_logging(&args, log)?;
    let prometheus = init_metrics()?;
    let store = ConfigStore::new();
    let clusters = Arc::new(ClusterManager::new());
    // Each worker pools its own upstream connections; cluster state is shared.
    let per_worker = workers
        .handles()
        .iter()
        .map(|h| (h.clone(), Arc::new(clusters.for_worker())))
        .collect();
    let limit = ConnectionLimit::new(
        usize::try_from(args.max_downstream_connections).unwrap_or(usize::MAX),
    );
    let (listeners, shutdown) =
        ListenerManager::new(store.clone(), per_worker, limit, args.drain_timeout);
    let warming = listeners.warming();
    let handlers = Handlers {
        listeners: Box::new(listeners),
        ..Handlers::store(&store)
    };
    let node = bootstrap.node();
    tracing::info!(node = %bootstrap.node_id, xds = %bootstrap.xds_address, "starting");
    let client = XdsClient::with_handlers(bootstrap, handlers, ClientOptions::default());
    let dump = client.config_dump();
    let xds = client.spawn();

    let admin_tcp = tokio::net::TcpListener::bind(args.admin_address)
        .await
        .with_context(|| format!("binding the admin port {}", args.admin_address))?;
    let admin = admin::router(admin::Admin {
        ready: xds.readiness(),
        warming,
        prometheus,
        dump,
        store,
        clusters,
        node,
    });
    tracing::info!(address = %args.admin_address, "admin port listening");
    let admin_task = tokio::spawn(async move { axum::serve(admin_tcp, admin).await });

    let reason = switchboard_runtime::shutdown_signal().await;
    tracing::info!(%reason, drain_timeout = ?args.drain_timeout, "draining listeners");
    drop(xds);
    // Every listener drains in parallel, each bounded by the drain timeout; the outer bound
    // covers a listener task that does not honour it.
    let _ = tokio::time::timeout(args.drain_timeout * 2, shutdown.drain_all()).await;
    admin_task.abort();
    if let Some(guard) = otlp {
        guard.shutdown();
    }
    tracing::info!("stopped");
    Ok(())
}
