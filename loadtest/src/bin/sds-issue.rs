//! Workload certificates issued per second by the control plane: many sidecars subscribing
//! to SDS at once, as a fleet does when it starts or when a replica's streams move.
//!
//! Not a test: a bounded workload that prints figures. It starts the real `switchboard`
//! binary (`SWITCHBOARD_BIN`, default `target/release/switchboard`) on free loopback ports,
//! on SQLite, or on a fresh database of the PostgreSQL server named by
//! `SWITCHBOARD_TEST_DATABASE_URL` when that is set, then:
//!
//! 1. Setup through REST, as the platform admin: tenant `t`, mesh `m` (`mtls.mode: strict`;
//!    its CA is generated when the mesh is created), service `svc`, a proxy token of the mesh.
//! 2. One warm-up stream that gets a certificate (the CA is read from the store and opened
//!    once per CA, not per certificate), then closed.
//! 3. `SDS_ISSUE_STREAMS` (1000) ADS streams over `SDS_ISSUE_CHANNELS` (10) HTTP/2
//!    connections, opened at once with the proxy token, each a distinct sidecar node
//!    `n-{i}` of service `svc` (so each also registers itself as an endpoint of `svc`, as
//!    sidecars do), subscribing to Secrets `default` and `ROOTCA` and ACKing them. Each
//!    certificate received is checked: its URI SAN is the service's SPIFFE ID. The window
//!    runs from just before the first stream opens until the last certificate arrives.
//! 4. Figures: certificates received per second of the window; the server's own counter
//!    `switchboard_certificates_issued_total` over the same window (its delta, from the admin
//!    port's `/metrics`, read before and after); time from the window's start to each
//!    stream's certificate (p50, p99, max); the control plane's CPU time over the window
//!    (CPU-ms per certificate) and its memory with every stream open.
//!
//! Bounds: REST requests time out after 30 s, the certificates after
//! `SDS_ISSUE_TIMEOUT_SECS` (300, the whole run). The child is killed on every exit path
//! (and on Ctrl-C). The run fails when a stream is refused or ends, or a certificate is
//! missing or carries another identity.
//!
//! Run after `cargo build --release -p switchboard`:
//! `cargo run --release -p switchboard-loadtest --bin sds-issue` (`scripts/bench` does).
//! The load generator's streams share the machine's cores with the control plane.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use switchboard_loadtest::procfs::{self, CpuUse};
use switchboard_loadtest::sds::{self, SecretStream};
use switchboard_loadtest::{ControlPlane, Options, Rest, Summary, count_from_env, mesh, mib, ms};
use tokio::task::JoinSet;

const ADMIN_TOKEN: &str = "sds-issue-admin-token-not-secret";
const TENANT: &str = "t";
const MESH: &str = "m";
const SERVICE: &str = "svc";
/// Sidecar `n-{i}` says it takes mesh traffic on this port plus `i` (only registered, never
/// listened on), so that no two registered endpoints are the same address and port.
const FIRST_INBOUND_PORT: usize = 20_000;

struct Config {
    streams: usize,
    channels: usize,
    deadline: Duration,
}

impl Config {
    fn from_env() -> Result<Config> {
        let c = Config {
            streams: count_from_env("SDS_ISSUE_STREAMS", 1000)?,
            channels: count_from_env("SDS_ISSUE_CHANNELS", 10)?,
            deadline: Duration::from_secs(count_from_env("SDS_ISSUE_TIMEOUT_SECS", 300)? as u64),
        };
        if c.streams > usize::from(u16::MAX) - FIRST_INBOUND_PORT {
            bail!(
                "SDS_ISSUE_STREAMS must be at most {}",
                usize::from(u16::MAX) - FIRST_INBOUND_PORT
            );
        }
        Ok(c)
    }
}

/// The sum of every series of `name` in a Prometheus text exposition.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split_once('{').map_or(series, |(n, _)| n);
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Whether the first certificate of `chain_pem` has `uri` as a URI SAN.
fn leaf_has_uri(chain_pem: &str, uri: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Some(Ok(pem)) = x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes()).next() else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value
        .general_names
        .iter()
        .any(|n| matches!(n, GeneralName::URI(u) if *u == uri))
}

fn node(i: usize) -> Result<switchboard_xds_proto::Node> {
    Ok(sds::sidecar_node(
        TENANT,
        MESH,
        &format!("n-{i}"),
        SERVICE,
        8080,
        u16::try_from(FIRST_INBOUND_PORT + i)?,
    ))
}

async fn run(cfg: &Config, cp: &mut ControlPlane) -> Result<()> {
    let rest = Rest::new(&cp.rest_url, ADMIN_TOKEN, Duration::from_secs(30))?;
    rest.post("/v1/tenants", &json!({"name": TENANT})).await?;
    let m = format!("/v1/tenants/{TENANT}/meshes/{MESH}");
    rest.put(&m, &json!({"spec": {"mtls": {"mode": "strict"}}}))
        .await?;
    rest.put(
        &format!("{m}/services/{SERVICE}"),
        &json!({"spec": {"protocol": "http", "port": 8080}}),
    )
    .await?;
    let created = rest
        .post(
            &format!("/v1/tenants/{TENANT}/proxy-tokens"),
            &json!({"description": "sds-issue", "mesh": MESH}),
        )
        .await?;
    let created: serde_json::Value = serde_json::from_slice(&created)?;
    let token = created["secret"]
        .as_str()
        .context("the proxy token response has no secret")?
        .to_owned();
    let identity = mesh::spiffe_id(TENANT, MESH, SERVICE);
    let timeout = cfg.deadline;

    let warm = sds::fetch(&cp.xds_url, &token, node(cfg.streams)?, timeout).await?;
    if !leaf_has_uri(&warm.chain_pem, &identity) {
        bail!("the warm-up certificate is not for {identity}");
    }

    let mut channels = Vec::with_capacity(cfg.channels);
    for _ in 0..cfg.channels {
        channels.push(sds::connect(&cp.xds_url).await?);
    }
    let metrics_url = format!("{}/metrics", cp.admin_url);
    let before = rest.get_text(&metrics_url).await?;
    let ticks = procfs::clock_ticks_per_second();
    let cpu_before = procfs::sample(cp.pid())?;

    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..cfg.streams {
        let channel = channels[i % channels.len()].clone();
        let token = token.clone();
        let identity = identity.clone();
        let node = node(i)?;
        tasks.spawn(async move {
            let mut stream = SecretStream::open(channel, &token, node).await?;
            let cert = stream.certificate(timeout).await?;
            let after = start.elapsed();
            if !leaf_has_uri(&cert.chain_pem, &identity) {
                bail!("stream n-{i} got a certificate that is not for {identity}");
            }
            // Held open until every stream has its certificate.
            anyhow::Ok((after, stream))
        });
    }
    let mut times = Vec::with_capacity(cfg.streams);
    let mut streams = Vec::with_capacity(cfg.streams);
    while let Some(t) = tasks.join_next().await {
        let (after, stream) = t.context("a stream task panicked")??;
        times.push(after);
        streams.push(stream);
    }
    let window = start.elapsed();
    let cpu_after = procfs::sample(cp.pid())?;
    let held = cp.memory()?;
    let after = rest.get_text(&metrics_url).await?;
    drop(streams);

    let name = "switchboard_certificates_issued_total";
    let issued = counter(&after, name) - counter(&before, name);
    let registrations_name = "switchboard_sidecar_registrations_total";
    let registrations = counter(&after, registrations_name) - counter(&before, registrations_name);
    let cpu = CpuUse::between(&cpu_before, &cpu_after, ticks);
    let s = Summary::of(&times);
    let secs = window.as_secs_f64();
    println!("## Certificates issued by the control plane over SDS\n");
    println!(
        "{} control plane; {} sidecar streams over {} HTTP/2 connections, opened at once, each \
         subscribing to `default` and `ROOTCA`; ECDSA P-256 workload certificates.\n",
        cp.backend, cfg.streams, cfg.channels
    );
    println!(
        "| streams | window s | certificates received | issued (server counter) | issued/s | time to certificate p50 ms | p99 ms | max ms | control plane cores | CPU-ms per certificate | RSS with streams open MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {secs:.2} | {} | {issued:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.3} | {:.1} |",
        cfg.streams,
        times.len(),
        issued / secs,
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        cpu.cores(),
        if issued > 0.0 {
            cpu.cpu_secs * 1000.0 / issued
        } else {
            0.0
        },
        mib(held.rss_kib),
    );
    println!(
        "\nSidecar endpoints the control plane registered during the window: {registrations:.0} \
         (each stream is a sidecar of `svc`; registration runs off the streams' path). CPU \
         time in ticks of 1/{ticks} s: over this window the CPU-ms per certificate is good to \
         about ±{:.3}.",
        if issued > 0.0 {
            1000.0 / ticks.max(1) as f64 / issued
        } else {
            0.0
        }
    );
    let (warnings, first) = cp.log_problems(5);
    if warnings > 0 {
        println!(
            "\nThe control plane logged {warnings} warnings or errors, first: {}",
            first.join(" | ")
        );
    }
    cp.check_alive()
}

fn main() -> Result<()> {
    if std::env::args().len() > 1 {
        bail!("sds-issue takes no arguments (it is configured with SDS_ISSUE_* variables)");
    }
    let cfg = Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async move {
        let mut cp = ControlPlane::start(&Options {
            admin_token: ADMIN_TOKEN.into(),
            log_level: "warn".into(),
            ready_timeout: Duration::from_secs(60),
        })
        .await?;
        let deadline = cfg.deadline;
        let outcome = tokio::select! {
            r = tokio::time::timeout(deadline, run(&cfg, &mut cp)) => {
                r.map_err(|_| anyhow!("the run did not finish within {deadline:?}"))
                    .and_then(|r| r)
            }
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        };
        if outcome.is_err() {
            eprintln!("the control plane's log:\n{}", cp.log_tail(40));
        }
        cp.stop().await;
        outcome
    })
}
