//! The `connections` target: memory against how many downstream connections are open, and
//! the proxy's cap on them (`--max-downstream-connections`).
//!
//! The issue asks for memory under load to be bounded by configuration, not by traffic. An
//! open connection is the part of the proxy's memory that clients choose. So this opens
//! keep-alive HTTP/1.1 connections to the gateway in steps, one `GET` on each, up to twice
//! the cap. After each step it reads the proxy's VmRSS and counts the connections the proxy
//! kept and those it closed at once. At the end every kept connection is asked once more, to
//! show that the refusals did not disturb them, and the proxy's overflow counter is read
//! from its admin `/stats`. nginx with the same worker count takes the same steps, for its
//! memory per connection beside the proxy's (its own cap is `worker_connections`, 4,096 per
//! worker in the bench's configuration). Bounded: at most twice the cap of connections per
//! target, opened one after another, each request under the run's request timeout.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use switchboard_loadtest::load::{self, Connection, Failure, Protocol, Target};
use switchboard_loadtest::nginx::Nginx;
use switchboard_loadtest::procfs;
use switchboard_loadtest::proxy::ProxyProcess;

use super::{BackendProcess, Config, HOST, ProxyEnv, proxy_options, target};

/// The overflow counter's name in the proxy's Prometheus text.
const OVERFLOW_METRIC: &str = "switchboard_proxy_listener_connections_overflow_total";

/// One worker count's figures.
pub struct ConnectionsRun {
    workers: usize,
    cap: usize,
    proxy: Stepped,
    nginx: Stepped,
    /// The proxy's own count of connections closed at the cap.
    overflow_counted: u64,
}

/// One target's steps.
struct Stepped {
    idle_rss_kib: u64,
    steps: Vec<Step>,
    /// Kept connections that answered a second request at the end.
    answered_again: usize,
}

/// After opening connections up to `attempted` in all.
struct Step {
    attempted: usize,
    kept: usize,
    refused: usize,
    rss_kib: u64,
}

/// Runs the target once per worker count of `cfg`: the proxy, then nginx.
pub async fn run(
    cfg: &Config,
    env: &ProxyEnv,
    backend: &BackendProcess,
) -> Result<Vec<ConnectionsRun>> {
    let mut runs = Vec::new();
    for &workers in &cfg.workers {
        let cap = cfg.connection_cap;
        eprintln!(
            "==> connections ({workers} worker{}): up to {} keep-alive connections to the \
             proxy (cap {cap}), then to nginx",
            super::plural(workers),
            2 * cap
        );
        let mut options = proxy_options(cfg, env, workers, false);
        options.max_downstream_connections = Some(cap as u64);
        let mut p = ProxyProcess::start(&options, Duration::from_secs(60)).await?;
        let addr = SocketAddr::from(([127, 0, 0, 1], env.gateway.port));
        let host = env.gateway.host(Protocol::Http1);

        let measured = async {
            let stepped = measure(&target(addr, Protocol::Http1, host, cfg), &[p.pid], cap).await?;
            Ok::<_, anyhow::Error>((stepped, overflow_counted(&p).await?))
        }
        .await;
        let alive = p.check_alive();
        p.stop().await;
        let (proxy, overflow_counted) = match (measured, alive) {
            (Ok(m), Ok(())) => m,
            (Err(e), _) | (Ok(_), Err(e)) => {
                return Err(e.context(format!("the proxy's log:\n{}", p.log_tail(40))));
            }
        };
        let mut n = Nginx::start(backend.addr, workers, Protocol::Http1).await?;
        let nginx_target = target(n.addr, Protocol::Http1, HOST.into(), cfg);
        let measured = measure(&nginx_target, &n.pids(), cap).await;
        let log = n.log();
        n.stop().await;
        let nginx = measured.map_err(|e| e.context(format!("nginx's log:\n{log}")))?;
        runs.push(ConnectionsRun {
            workers,
            cap,
            proxy,
            nginx,
            overflow_counted,
        });
    }
    Ok(runs)
}

/// Opens connections to `target` in steps up to twice `cap`, reading the memory of `pids`
/// (summed) after each step, then asks every kept connection once more.
async fn measure(target: &Target, pids: &[u32], cap: usize) -> Result<Stepped> {
    let idle_rss_kib = procfs::sample_all(pids)?.rss_kib;
    let mut kept: Vec<Connection> = Vec::with_capacity(cap);
    let mut refused = 0;
    let mut steps = Vec::new();
    let mut attempted = 0;
    for step in [cap / 4, cap / 2, 3 * cap / 4, cap, 3 * cap / 2, 2 * cap] {
        while attempted < step {
            attempted += 1;
            let mut connection = Connection::default();
            match connection.request(target).await {
                Ok(()) => kept.push(connection),
                // Closed at accept (or refused at connect): what a server over its cap does.
                Err(Failure::Io | Failure::Connect) => refused += 1,
                Err(f) => bail!("{}: a new connection's request failed: {f:?}", target.addr),
            }
        }
        // Let the closes of refused connections and the allocator settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
        steps.push(Step {
            attempted,
            kept: kept.len(),
            refused,
            rss_kib: procfs::sample_all(pids)?.rss_kib,
        });
    }
    // Answered on the same connection: a request the connection had to be reopened for
    // does not count.
    let mut answered_again = 0;
    for connection in &mut kept {
        if connection.request(target).await.is_ok() && connection.reconnects() == 0 {
            answered_again += 1;
        }
    }
    Ok(Stepped {
        idle_rss_kib,
        steps,
        answered_again,
    })
}

/// The proxy's overflow counter, summed over its listeners.
async fn overflow_counted(p: &ProxyProcess) -> Result<u64> {
    let stats = load::get(p.admin, "/stats").await?;
    let text = String::from_utf8_lossy(&stats);
    let mut total = 0.0;
    for line in text.lines().filter(|l| l.starts_with(OVERFLOW_METRIC)) {
        match line.rsplit(' ').next().map(str::parse::<f64>) {
            Some(Ok(v)) => total += v,
            _ => bail!("the proxy's /stats: cannot read {line:?}"),
        }
    }
    Ok(total as u64)
}

/// The target's table, after the main report.
pub fn report(runs: &[ConnectionsRun]) {
    if runs.is_empty() {
        return;
    }
    println!(
        "\n## Open connections: memory per connection, and the proxy's cap \
         (`--max-downstream-connections`)\n"
    );
    println!(
        "Keep-alive HTTP/1.1 connections, opened one after another, one `GET` each, up to \
         twice the proxy's cap; the same steps against nginx (its cap: `worker_connections` \
         4096 per worker). Kept: answered 200 and left open. Refused: closed at accept. VmRSS \
         after each step (nginx: master and workers); per kept connection: the rise over idle \
         divided by the connections kept.\n"
    );
    for run in runs {
        println!(
            "{} worker{} each, the proxy's cap {}; idle VmRSS: proxy {:.1} MiB, nginx {:.1} \
             MiB:\n",
            run.workers,
            super::plural(run.workers),
            run.cap,
            switchboard_loadtest::mib(run.proxy.idle_rss_kib),
            switchboard_loadtest::mib(run.nginx.idle_rss_kib),
        );
        println!(
            "| connections opened | proxy: kept | refused | VmRSS MiB | KiB per kept \
             connection | nginx: kept | refused | VmRSS MiB | KiB per kept connection |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (p, n) in run.proxy.steps.iter().zip(&run.nginx.steps) {
            println!(
                "| {} | {} | {} | {:.1} | {} | {} | {} | {:.1} | {} |",
                p.attempted,
                p.kept,
                p.refused,
                switchboard_loadtest::mib(p.rss_kib),
                per_connection(p, run.proxy.idle_rss_kib),
                n.kept,
                n.refused,
                switchboard_loadtest::mib(n.rss_kib),
                per_connection(n, run.nginx.idle_rss_kib),
            );
        }
        let last = |s: &Stepped| s.steps.last().map_or((0, 0), |s| (s.kept, s.refused));
        let ((kept, refused), (nginx_kept, _)) = (last(&run.proxy), last(&run.nginx));
        println!(
            "\nThe proxy counted {} connections closed at its cap ({OVERFLOW_METRIC}); the \
             client saw {refused}. After the last step, {} of the proxy's {kept} kept \
             connections and {} of nginx's {nginx_kept} answered a second request.\n",
            run.overflow_counted, run.proxy.answered_again, run.nginx.answered_again
        );
    }
}

/// A step's VmRSS over idle, per kept connection, in KiB.
fn per_connection(s: &Step, idle_rss_kib: u64) -> String {
    if s.kept == 0 {
        return "–".into();
    }
    format!(
        "{:.1}",
        s.rss_kib.saturating_sub(idle_rss_kib) as f64 / s.kept as f64
    )
}
