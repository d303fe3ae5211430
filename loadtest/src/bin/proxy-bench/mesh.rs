//! The `mesh` target: one sidecar hop, plaintext and mutual TLS, measured in one run.
//!
//! One control plane, tenant `bench`, two meshes that differ only in `mtls.mode`: `plain`
//! (`off`) and `mtls` (`strict`). In each, a pair of sidecars ([`switchboard_loadtest::mesh`]):
//! load → client sidecar outbound → server sidecar inbound → backend, measured like the
//! other targets (1,000 rps and saturation). The sidecars pool their upstream connections,
//! so the hop's mTLS cost under that load is record encryption, not handshakes; the
//! handshakes are measured apart: a closed loop of new connections, one request each,
//! straight to the server sidecar's inbound port (plaintext in `plain`; a full mTLS
//! handshake in `mtls`, as the client service with a certificate the control plane issued
//! over SDS, and the server's SPIFFE ID checked). Then both pairs again, up at once and
//! measured in turns ([`turns`]), so that the mTLS pair's cost against the plaintext pair's
//! is not the machine's weather.

// Beside `mesh.rs` in `mesh/` (this file is loaded by `#[path]`, so its own modules are
// looked for beside it).
#[path = "mesh/turns.rs"]
mod turns;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use switchboard_loadtest::backend::BackendProcess;
use switchboard_loadtest::handshake::{self, Tls};
use switchboard_loadtest::load::{Outcome, Saturation};
use switchboard_loadtest::mesh::{self, CLIENT, PairOptions, SERVER, SidecarPair};
use switchboard_loadtest::procfs::CpuUse;
use switchboard_loadtest::{ControlPlane, Options, Rest, sds, tls};
use tokio_rustls::rustls::pki_types::ServerName;

use super::{
    ADMIN_TOKEN, Config, Group, Kind, Label, Measured, measure, ms, plural, sample_groups,
};

const TENANT: &str = "bench";
/// (mesh, its `mtls.mode`, label).
const MESHES: [(&str, &str, &str); 2] = [("plain", "off", "plaintext"), ("mtls", "strict", "mTLS")];

/// The new-connection loop at one server sidecar's inbound port.
pub struct HandshakeRun {
    label: &'static str,
    outcome: Outcome,
    server_cpu: CpuUse,
    loadgen_cpu: CpuUse,
}

/// One worker count's figures: the two pairs (indices into the run's results) and the
/// new-connection loops.
pub struct MeshRun {
    workers: usize,
    /// Plaintext pair, mTLS pair.
    pairs: [usize; 2],
    handshakes: Vec<HandshakeRun>,
    /// The two pairs in turns, one per round.
    turns: Vec<turns::PairTurns>,
}

/// Starts the control plane, configures both meshes, and measures each pair once per worker
/// count; the pairs' figures go to `results`, the rest is returned for [`report`].
pub async fn run(
    cfg: &Config,
    backend: &BackendProcess,
    ticks: u64,
    results: &mut Vec<Measured>,
    notes: &mut Vec<String>,
) -> Result<Vec<MeshRun>> {
    let mut cp = ControlPlane::start(&Options {
        admin_token: ADMIN_TOKEN.into(),
        log_level: "warn".into(),
        ready_timeout: Duration::from_secs(60),
    })
    .await?;
    let outcome = run_with(cfg, &mut cp, backend, ticks, results, notes).await;
    cp.stop().await;
    outcome
}

async fn run_with(
    cfg: &Config,
    cp: &mut ControlPlane,
    backend: &BackendProcess,
    ticks: u64,
    results: &mut Vec<Measured>,
    notes: &mut Vec<String>,
) -> Result<Vec<MeshRun>> {
    let rest = Rest::new(&cp.rest_url, ADMIN_TOKEN, Duration::from_secs(30))?;
    rest.post("/v1/tenants", &serde_json::json!({"name": TENANT}))
        .await?;
    let mut tokens = Vec::new();
    for (name, mode, _) in MESHES {
        tokens.push(mesh::configure(&rest, TENANT, name, mode).await?);
    }
    // The handshake loop's identity: a certificate for the client service of the mTLS mesh,
    // issued by the control plane to an SDS subscription as any sidecar gets one.
    let (mtls_mesh, _, _) = MESHES[1];
    let node = sds::sidecar_node(
        TENANT,
        mtls_mesh,
        "handshake-client",
        CLIENT,
        switchboard_loadtest::proxy::free_port()?,
        switchboard_loadtest::proxy::free_port()?,
    );
    let cert = sds::fetch(&cp.xds_url, &tokens[1], node, Duration::from_secs(30))
        .await
        .context("a workload certificate for the handshake loop")?;
    let client_tls = Tls {
        config: tls::client_config(&cert, &mesh::spiffe_id(TENANT, mtls_mesh, SERVER))?,
        server_name: ServerName::try_from(SERVER)?.to_owned(),
    };
    notes.push(format!(
        "mesh: sidecars `--concurrency {}`, access log off; meshes `plain` (`mtls.mode: off`) \
         and `mtls` (`strict`, ECDSA P-256 workload certificates over SDS); load → client \
         sidecar outbound (`Host: server`) → server sidecar inbound → backend; checked before \
         measuring: the strict server sidecar refuses plaintext, so that hop is mTLS",
        cfg.workers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("/")
    ));

    let mut runs = Vec::new();
    for &workers in &cfg.workers {
        let mut pairs = [0; 2];
        let mut handshakes = Vec::new();
        let options = |i: usize| PairOptions {
            xds_url: cp.xds_url.clone(),
            tenant: TENANT.into(),
            mesh: MESHES[i].0.into(),
            token: tokens[i].clone(),
            workers,
            log_filter: cfg.proxy_log.clone(),
            backend: backend.addr,
            body_len: cfg.backend.body_bytes,
            timeout: cfg.request_timeout,
        };
        for (i, (mesh_name, _, label)) in MESHES.into_iter().enumerate() {
            let mut pair = SidecarPair::start(&options(i), Duration::from_secs(60)).await?;
            let tls = (i == 1).then(|| client_tls.clone());
            if tls.is_some() && handshake::one_request(&pair.inbound, None).await.is_ok() {
                pair.stop().await;
                bail!("the strict mesh's server sidecar answered plaintext: the hop is not mTLS");
            }
            let measured = measure_pair(cfg, cp, &mut pair, backend, ticks, workers, label, tls)
                .await
                .and_then(|m| pair.check_alive().map(|()| m));
            let logs = format!(
                "client sidecar:\n{}\nserver sidecar:\n{}",
                pair.client.log_tail(20),
                pair.server.log_tail(20)
            );
            pair.stop().await;
            let (m, h) = measured.with_context(|| format!("mesh {mesh_name}; {logs}"))?;
            pairs[i] = results.len();
            results.push(m);
            handshakes.push(h);
        }
        let turns = in_turns(cfg, [options(0), options(1)], ticks).await?;
        runs.push(MeshRun {
            workers,
            pairs,
            handshakes,
            turns,
        });
    }
    cp.check_alive()?;
    let (warnings, first) = cp.log_problems(5);
    if warnings > 0 {
        notes.push(format!(
            "the mesh's control plane logged {warnings} warnings or errors, first: {}",
            first.join(" | ")
        ));
    }
    Ok(runs)
}

/// Both pairs started again, up at once, and measured in turns `cfg.rounds` times.
async fn in_turns(
    cfg: &Config,
    options: [PairOptions; 2],
    ticks: u64,
) -> Result<Vec<turns::PairTurns>> {
    eprintln!(
        "==> mesh: the plaintext and the mTLS pair in turns, {} round{}",
        cfg.rounds,
        plural(cfg.rounds)
    );
    let mut plain = SidecarPair::start(&options[0], Duration::from_secs(60)).await?;
    let mut mtls = match SidecarPair::start(&options[1], Duration::from_secs(60)).await {
        Ok(p) => p,
        Err(e) => {
            plain.stop().await;
            return Err(e);
        }
    };
    let outcome = async {
        let mut rounds = Vec::new();
        for _ in 0..cfg.rounds {
            rounds.push(turns::measure(cfg, [&plain, &mtls], ticks).await?);
        }
        plain.check_alive()?;
        mtls.check_alive()?;
        Ok::<_, anyhow::Error>(rounds)
    }
    .await;
    let logs = format!(
        "plaintext client sidecar:\n{}\nmTLS client sidecar:\n{}\nmTLS server sidecar:\n{}",
        plain.client.log_tail(20),
        mtls.client.log_tail(20),
        mtls.server.log_tail(20)
    );
    plain.stop().await;
    mtls.stop().await;
    outcome.with_context(|| format!("mesh in turns; {logs}"))
}

/// The pair under the usual load, then the new-connection loop at its server's inbound port.
#[allow(clippy::too_many_arguments)]
async fn measure_pair(
    cfg: &Config,
    cp: &ControlPlane,
    pair: &mut SidecarPair,
    backend: &BackendProcess,
    ticks: u64,
    workers: usize,
    label: &'static str,
    tls: Option<Tls>,
) -> Result<(Measured, HandshakeRun)> {
    let groups = vec![
        Group::new("client sidecar", vec![pair.client.pid]),
        Group::new("server sidecar", vec![pair.server.pid]),
        Group::new("backend", vec![backend.pid]),
        Group::new("load generator", vec![std::process::id()]),
        Group::new("control plane (idle)", vec![cp.pid()]),
    ];
    let name = format!("mesh {label} pair ({workers} worker{})", plural(workers));
    let row = Label {
        name,
        kind: Kind::Mesh,
        workers: Some(workers),
        round: 1,
    };
    let measured = measure(row, &pair.outbound, backend, groups, cfg, ticks).await?;

    eprintln!(
        "==> mesh {label}: new connections to the server sidecar's inbound port, {} at a time",
        cfg.handshake_connections
    );
    let groups = [
        Group::new("server sidecar", vec![pair.server.pid]),
        Group::new("load generator", vec![std::process::id()]),
    ];
    let shape = Saturation {
        connections: cfg.handshake_connections,
        warmup: Duration::from_secs(1),
        duration: cfg.saturation.duration,
    };
    let mut marks = Vec::new();
    let outcome = handshake::closed_loop(&pair.inbound, tls, shape, || {
        marks.push(sample_groups(&groups));
    })
    .await?;
    let marks = marks.into_iter().collect::<Result<Vec<_>>>()?;
    let [start, end] = marks.as_slice() else {
        bail!("expected 2 CPU samples, got {}", marks.len());
    };
    let cpu = |i: usize| CpuUse::between(&start[i], &end[i], ticks);
    Ok((
        measured,
        HandshakeRun {
            label,
            outcome,
            server_cpu: cpu(0),
            loadgen_cpu: cpu(1),
        },
    ))
}

/// CPU-ms per 1,000 requests at the fixed rate of the processes labelled `labels`, summed.
fn cpu_ms_per_1k(m: &Measured, labels: &[&str]) -> f64 {
    let requests = m.fixed.ok + m.fixed.errors.total();
    m.processes
        .iter()
        .filter(|p| labels.contains(&p.label.as_str()))
        .map(|p| p.fixed_cpu.ms_per_1k(requests))
        .sum()
}

/// The mesh's tables, after the main report.
pub fn report(cfg: &Config, results: &[Measured], runs: &[MeshRun], ticks: u64) {
    let rate = cfg.fixed.rate;
    let direct = results.iter().find(|r| r.name == "direct");
    for run in runs {
        let [plain, mtls] = run.pairs.map(|i| &results[i]);
        println!(
            "\n## Mesh: one sidecar hop, plaintext and mTLS ({} worker{} per sidecar)\n",
            run.workers,
            plural(run.workers)
        );
        println!(
            "| path | {rate} rps: p50 ms | p99 ms | errors | CPU-ms / 1k req, both sidecars | saturation: rps | p99 ms |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let row = |name: &str, m: &Measured, cpu: Option<f64>| {
            println!(
                "| {name} | {} | {} | {} | {} | {:.0} | {} |",
                ms(m.fixed.ms(50.0)),
                ms(m.fixed.ms(99.0)),
                m.fixed.errors.describe(),
                cpu.map_or("–".into(), |c| format!("{c:.1}")),
                m.saturation.rps(),
                ms(m.saturation.ms(99.0)),
            );
        };
        if let Some(d) = direct {
            row("direct (no proxy)", d, None);
        }
        let sidecars = ["client sidecar", "server sidecar"];
        let (cpu_plain, cpu_mtls) = (
            cpu_ms_per_1k(plain, &sidecars),
            cpu_ms_per_1k(mtls, &sidecars),
        );
        row("plaintext pair", plain, Some(cpu_plain));
        row("mTLS pair", mtls, Some(cpu_mtls));
        let added = |p: f64| mtls.fixed.ms(p) - plain.fixed.ms(p);
        // Only the sidecars' windows count here: the load generator's threads come and go,
        // which sends its own windows (not in these figures) back to clock ticks.
        let precise = [plain, mtls]
            .iter()
            .flat_map(|m| &m.processes)
            .filter(|p| sidecars.contains(&p.label.as_str()))
            .all(|p| p.fixed_cpu.precise);
        let resolution = if precise {
            "each figure from the scheduler's nanoseconds".to_owned()
        } else {
            format!(
                "at {ticks} ticks/s each figure is good to about ±{:.1} ms",
                2.0 * super::report::resolution(cfg, ticks)
            )
        };
        println!(
            "\nAdded by mTLS on the hop at {rate} rps (mTLS pair − plaintext pair): p50 {:+.3} ms, \
             p99 {:+.3} ms (target: under 1 ms at p99). CPU of the two sidecars per 1,000 \
             requests: mTLS {cpu_mtls:.1} ms / plaintext {cpu_plain:.1} ms = {}× (target: within \
             1.5×); {resolution}.",
            added(50.0),
            added(99.0),
            if cpu_plain > 0.0 {
                format!("{:.2}", cpu_mtls / cpu_plain)
            } else {
                "–".into()
            },
        );
        println!(
            "The sidecars keep their upstream connections open (see the backend connections \
             column above), so these figures are the cost of TLS records on a warm connection; \
             handshakes follow.\n"
        );
        println!(
            "New connections to the server sidecar's inbound port, one request each, {} at a \
             time for {} s (mTLS: a full handshake each, no resumption, client certificate of \
             service `client`, the server's SPIFFE ID checked):\n",
            cfg.handshake_connections,
            cfg.saturation.duration.as_secs()
        );
        println!(
            "| inbound port | connections/s | p50 ms | p99 ms | errors | server sidecar cores | server sidecar CPU-ms per connection | load generator cores |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for h in &run.handshakes {
            let per = if h.outcome.ok > 0 {
                h.server_cpu.cpu_secs * 1000.0 / h.outcome.ok as f64
            } else {
                0.0
            };
            println!(
                "| {} | {:.0} | {} | {} | {} | {:.3} | {per:.3} | {:.3} |",
                h.label,
                h.outcome.rps(),
                ms(h.outcome.ms(50.0)),
                ms(h.outcome.ms(99.0)),
                h.outcome.errors.describe(),
                h.server_cpu.cores(),
                h.loadgen_cpu.cores(),
            );
        }
        println!(
            "\nThe load generator does the client's half of every handshake on the same cores, \
             so the rate is of the whole machine; the server sidecar's CPU per connection is \
             its own cost.\n"
        );
        turns::report(cfg, &run.turns);
    }
}
