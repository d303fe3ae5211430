//! Start-up: logging, store, admin token, listeners; shutdown on SIGINT or SIGTERM.

use crate::settings::{LogFormat, Settings};
use anyhow::{Context, Result};
use base64::Engine;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use rand::RngCore;
use switchboard_api::{AdminToken, AppState};
use switchboard_store::Store;
use tokio::net::TcpListener;

fn init_logging(s: &Settings) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&s.log_level).unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match s.log_format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text => b.try_init(),
    };
}

async fn open_store(s: &Settings) -> Result<Store> {
    if s.database_url.is_empty() {
        std::fs::create_dir_all(&s.data_dir)
            .with_context(|| format!("cannot create data_dir {}", s.data_dir.display()))?;
    }
    let url = s.database_url();
    Store::open(&url).await.with_context(|| {
        format!(
            "cannot open the store at {}",
            switchboard_store::redact(&url)
        )
    })
}

pub async fn migrate(s: Settings) -> Result<()> {
    init_logging(&s);
    open_store(&s).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// The configured admin token, or the one generated at first start (printed once).
fn admin_token(s: &Settings) -> Result<AdminToken> {
    if !s.admin_token.is_empty() {
        return Ok(AdminToken::new(&s.admin_token));
    }
    let path = s.data_dir.join("admin-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let t = existing.trim();
        if !t.is_empty() {
            return Ok(AdminToken::new(t));
        }
    }
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("cannot create data_dir {}", s.data_dir.display()))?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = format!(
        "sba_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    crate::write_private(&path, &token)?;
    // Shown once, on the terminal, never in the logs.
    println!(
        "switchboard: generated the platform admin token (shown once; stored in {}):\n{token}",
        path.display()
    );
    Ok(AdminToken::new(&token))
}

/// SIGTERM or Ctrl-C (the runtime crate's one signal function), as the `()` future each
/// listener's graceful shutdown takes.
async fn shutdown_signal() {
    switchboard_runtime::shutdown_signal().await;
}

pub async fn run(s: Settings) -> Result<()> {
    init_logging(&s);
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )
        .context("metrics buckets")?
        .set_buckets_for_metric(
            Matcher::Suffix("_bytes".into()),
            &[
                256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
            ],
        )
        .context("metrics buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let store = open_store(&s).await?;
    let admin = admin_token(&s)?;
    let kek = std::sync::Arc::new(crate::ca_key::load(&s, &store).await?);
    let rest = TcpListener::bind(s.rest_addr)
        .await
        .with_context(|| format!("cannot listen on rest_addr {}", s.rest_addr))?;
    let xds = TcpListener::bind(s.xds_addr)
        .await
        .with_context(|| format!("cannot listen on xds_addr {}", s.xds_addr))?;
    let admin_listener = TcpListener::bind(s.admin_addr)
        .await
        .with_context(|| format!("cannot listen on admin_addr {}", s.admin_addr))?;
    tracing::info!(
        rest = %rest.local_addr()?, xds = %xds.local_addr()?, admin = %admin_listener.local_addr()?,
        backend = ?store.backend(), "switchboard serving"
    );
    let xds_running = switchboard_xds_server::XdsServer::start(
        store.clone(),
        switchboard_xds_server::XdsConfig {
            sidecar_grace_period: s.sidecar_grace_period,
            trust_domain: s.trust_domain.clone(),
            issuer: Some(std::sync::Arc::new(crate::issuer::StoreIssuer::new(
                store.clone(),
                kek.clone(),
            ))),
            ..Default::default()
        },
    );
    let xds_server = xds_running.server().clone();
    let _pruning =
        (!s.change_retention.is_zero()).then(|| store.spawn_change_pruning(s.change_retention));
    let app = switchboard_api::router(AppState {
        store: store.clone(),
        admin,
        node_configs: std::sync::Arc::new(crate::node_configs::XdsNodeConfigs(xds_server.clone())),
        kek,
    });
    let admin_app = crate::admin::router(store.clone(), prometheus);
    let rest_task = axum::serve(rest, app).with_graceful_shutdown(shutdown_signal());
    let admin_task =
        axum::serve(admin_listener, admin_app).with_graceful_shutdown(shutdown_signal());
    // Stops registering sidecars at the signal (a stopping replica deregisters nothing), then
    // drains the port and ends the xDS server's tasks.
    let xds_task = xds_running.serve(xds, shutdown_signal());
    tokio::try_join!(
        async { rest_task.await.context("REST server failed") },
        async { xds_task.await.context("xDS server failed") },
        async { admin_task.await.context("admin server failed") },
    )?;
    tracing::info!("switchboard stopped");
    Ok(())
}
