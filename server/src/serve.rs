//! Start-up: logging and traces (`telemetry`), store, admin token, listeners; a graceful
//! drain on SIGINT or SIGTERM.
//!
//! The drain, bounded by `drain_period`: readiness fails at once (the admin port keeps
//! answering until the end, so a load balancer sees it), the REST and xDS listeners close,
//! in-flight REST requests finish (axum's graceful shutdown), and xDS connections are sent
//! GOAWAY spread uniformly over the period, each closed shortly after its own, so clients
//! reconnect (to other replicas) spread out too. The process exits 0 when all that is done,
//! at the end of the period at the latest, or at once on a second signal.

use crate::settings::Settings;
use crate::tls;
use crate::write_private;
use anyhow::{Context, Result};
use base64::Engine;
use rand::RngCore;
use std::path::Path;
use std::time::Duration;
use switchboard_api::{AdminToken, AppState};
use switchboard_store::Store;
use switchboard_store::jwt::ProxyJwtKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    crate::telemetry::init_logging(&s);
    open_store(&s).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// The key signing JWT proxy tokens: from `proxy_jwt_key_file`; else, on the embedded
/// database (one replica), generated at first start into data_dir (mode 0600) as the admin
/// token is. With PostgreSQL and no file there is none (JWT proxy tokens are off): a key
/// generated per replica would make one replica's JWTs fail on the others.
fn proxy_jwt_key(s: &Settings) -> Result<Option<ProxyJwtKey>> {
    let read = |path: &Path| -> Result<ProxyJwtKey> {
        let bytes = std::fs::read(path).with_context(|| {
            format!("setting proxy_jwt_key_file: cannot read {}", path.display())
        })?;
        let text = String::from_utf8_lossy(&bytes);
        ProxyJwtKey::new(text.trim().as_bytes())
            .with_context(|| format!("setting proxy_jwt_key_file: {}", path.display()))
    };
    if !s.proxy_jwt_key_file.as_os_str().is_empty() {
        return read(&s.proxy_jwt_key_file).map(Some);
    }
    if !s.database_url.is_empty() {
        tracing::info!(
            "JWT proxy tokens are off: set proxy_jwt_key_file (the same file on every replica)"
        );
        return Ok(None);
    }
    let path = s.data_dir.join("proxy-jwt-key");
    if path.exists() {
        return read(&path).map(Some);
    }
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("cannot create data_dir {}", s.data_dir.display()))?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    write_private(&path, &key)?;
    tracing::info!(path = %path.display(), "generated the key of JWT proxy tokens");
    Ok(Some(ProxyJwtKey::new(key.as_bytes())?))
}

/// Warns, once per port, when `addr` takes credentials in plaintext from beyond loopback.
fn warn_if_exposed(setting: &str, addr: std::net::SocketAddr, tls: bool) {
    if crate::tls::plaintext_is_exposed(addr, tls) {
        tracing::warn!(
            %addr,
            "{setting} listens beyond loopback without TLS: tokens and API keys cross the \
             network in plaintext; set tls_cert_file and tls_key_file"
        );
    }
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

/// Cancels `draining` at the first SIGTERM or Ctrl-C (the runtime crate's one signal
/// function), and `stop_now` at the second, or when the drain period is over.
fn on_signals(draining: CancellationToken, stop_now: CancellationToken, period: Duration) {
    tokio::spawn(async move {
        let signal = switchboard_runtime::shutdown_signal().await;
        tracing::info!(
            signal,
            ?period,
            "draining: readiness fails, the ports stop accepting, xDS connections are sent \
             GOAWAY spread over the drain period"
        );
        draining.cancel();
        tokio::select! {
            signal = switchboard_runtime::shutdown_signal() => {
                tracing::warn!(signal, "second signal: stopping without waiting for the drain");
            }
            () = tokio::time::sleep(period) => {
                tracing::info!("the drain period is over");
            }
        }
        stop_now.cancel();
    });
}

pub async fn run(s: Settings) -> Result<()> {
    let otlp = crate::telemetry::init(&s)?;
    let prometheus = crate::metrics::install()?;
    let store = open_store(&s).await?;
    let admin = admin_token(&s)?;
    let kek = std::sync::Arc::new(crate::ca_key::load(&s, &store).await?);
    if let Some(key) = proxy_jwt_key(&s)? {
        store.set_proxy_jwt_key(key);
    }
    store.set_quota_defaults(s.quota_defaults());
    let cert = match s.tls() {
        Some(files) => Some(tls::ReloadingCert::load(files).context("cannot serve TLS")?),
        None => None,
    };
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
        backend = ?store.backend(), tls = cert.is_some(), "switchboard serving"
    );
    warn_if_exposed("rest_addr", rest.local_addr()?, cert.is_some());
    warn_if_exposed("xds_addr", xds.local_addr()?, cert.is_some());
    let _reload = cert.as_ref().map(|c| {
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(c.clone().watch(tls::POLL_INTERVAL)))
    });
    let xds_running = switchboard_xds_server::XdsServer::start(
        store.clone(),
        switchboard_xds_server::XdsConfig {
            sidecar_grace_period: s.sidecar_grace_period,
            connections: s.xds_connections(),
            max_concurrent_initial_pushes: s.xds_max_concurrent_initial_pushes,
            trust_domain: s.trust_domain.clone(),
            issuer: Some(std::sync::Arc::new(crate::issuer::StoreIssuer::new(
                store.clone(),
                kek.clone(),
            ))),
            drain: Some(s.xds_drain()),
            ..Default::default()
        },
    );
    let xds_server = xds_running.server().clone();
    let _pruning =
        (!s.change_retention.is_zero()).then(|| store.spawn_change_pruning(s.change_retention));
    let _history_pruning =
        (!s.history_retention.is_zero()).then(|| store.spawn_history_pruning(s.history_retention));
    let app = switchboard_api::router(AppState {
        store: store.clone(),
        admin,
        node_configs: std::sync::Arc::new(crate::node_configs::XdsNodeConfigs::new(
            xds_server.clone(),
        )),
        kek,
    });
    let draining = CancellationToken::new();
    let stop_now = CancellationToken::new();
    on_signals(draining.clone(), stop_now.clone(), s.drain_period);
    let admin_app = crate::admin::router(
        store.clone(),
        xds_server.clone(),
        prometheus,
        draining.clone(),
    );
    // The admin port answers (readiness: draining) until the REST and xDS ports are done.
    let admin_done = CancellationToken::new();
    let admin_task = axum::serve(admin_listener, admin_app)
        .with_graceful_shutdown(admin_done.clone().cancelled_owned());
    let rest_task = async {
        match &cert {
            Some(cert) => tls::serve_rest(rest, cert.clone(), app, draining.cancelled())
                .await
                .context("REST server failed"),
            None => axum::serve(rest, app)
                .with_graceful_shutdown(draining.clone().cancelled_owned())
                .await
                .context("REST server failed"),
        }
    };
    // Stops registering sidecars at the signal (a stopping replica deregisters nothing), then
    // drains the port and ends the xDS server's tasks.
    let xds_task = async {
        match &cert {
            Some(cert) => tls::serve_xds(xds, cert.clone(), xds_running, draining.cancelled())
                .await
                .context("xDS server failed"),
            None => xds_running
                .serve(xds, draining.cancelled())
                .await
                .context("xDS server failed"),
        }
    };
    let ports = async {
        let done = tokio::select! {
            done = async { tokio::try_join!(rest_task, xds_task) } => done.map(|_| ()),
            () = stop_now.cancelled() => {
                tracing::warn!("exiting with connections or requests still open");
                Ok(())
            }
        };
        admin_done.cancel();
        done
    };
    tokio::try_join!(ports, async {
        admin_task.await.context("admin server failed")
    })?;
    tracing::info!("switchboard stopped");
    crate::telemetry::shutdown(otlp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ServeArgs;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load(&ServeArgs::default(), env).unwrap()
    }

    #[test]
    fn the_proxy_jwt_key_is_generated_once_on_sqlite_and_configured_on_postgres() {
        use switchboard_store::jwt::{ISSUER, ProxyClaims};
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let sqlite = settings(&[("SWITCHBOARD_DATA_DIR", data.to_str().unwrap())]);
        let first = proxy_jwt_key(&sqlite).unwrap().unwrap();
        let again = proxy_jwt_key(&sqlite).unwrap().unwrap();
        let claims = ProxyClaims {
            iss: ISSUER.into(),
            sub: "id".into(),
            iat: 0,
            exp: i64::MAX / 2,
            tenant: "acme".into(),
            mesh: None,
        };
        // A restart reads the same key: the JWTs it issued still verify.
        assert!(again.verify(&first.sign(&claims).unwrap()).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join("proxy-jwt-key"))
                .unwrap()
                .permissions();
            assert_eq!(mode.mode() & 0o777, 0o600);
        }
        // PostgreSQL: none unless configured (every replica must hold the same key).
        let pg = [("SWITCHBOARD_DATABASE_URL", "postgres://u@h/db")];
        assert!(proxy_jwt_key(&settings(&pg)).unwrap().is_none());
        let file = dir.path().join("jwt.key");
        std::fs::write(&file, "too short\n").unwrap();
        let configured = [
            pg[0],
            ("SWITCHBOARD_PROXY_JWT_KEY_FILE", file.to_str().unwrap()),
        ];
        let e = format!("{:#}", proxy_jwt_key(&settings(&configured)).unwrap_err());
        assert!(
            e.contains("proxy_jwt_key_file") && e.contains("32 bytes"),
            "{e}"
        );
        std::fs::write(&file, "k".repeat(40)).unwrap();
        assert!(proxy_jwt_key(&settings(&configured)).unwrap().is_some());
    }
}
