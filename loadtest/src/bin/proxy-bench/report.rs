//! The printed report: the run's shape, the summary and detail tables of every target, the
//! processes' memory and CPU, and the "vs nginx" table that puts each proxy row beside
//! nginx's of the same protocol and worker count.

use switchboard_loadtest::load::Protocol;
use switchboard_loadtest::mib;

use super::{Config, Kind, Measured, ms, plural};

/// What the report says about the machine and the run.
pub struct RunInfo<'a> {
    pub cores: usize,
    pub ticks: u64,
    pub load_before: &'a str,
    pub load_after: &'a str,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn join(values: &[usize]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

pub fn report(cfg: &Config, results: &[Measured], notes: &[String], info: &RunInfo<'_>) {
    let f = cfg.fixed;
    let s = cfg.saturation;
    let (cores, ticks) = (info.cores, info.ticks);
    println!(
        "## Proxy benchmark (loopback, {} B responses)\n",
        cfg.backend.body_bytes
    );
    println!(
        "Machine: {cores} cores ({}), load average {} before and {} after the run; CLK_TCK \
         {ticks}.",
        cpu_model(),
        info.load_before,
        info.load_after
    );
    println!(
        "Everything shares those {cores} cores: the load generator ({} thread{}), the backend \
         ({} thread{}) and the proxy or nginx ({} worker{}), so the saturation figures are of \
         the whole system on this machine, not of the proxy alone.",
        cfg.client_threads,
        plural(cfg.client_threads),
        cfg.backend.threads,
        plural(cfg.backend.threads),
        join(&cfg.workers),
        plural(cfg.workers.iter().copied().max().unwrap_or(1)),
    );
    println!(
        "Fixed rate: open loop, {} rps over {} keep-alive connections for {} s after {} s \
         unrecorded, latency from each request's intended send time. Saturation: closed loop, \
         {} connections with one request in flight each, for {} s after {} s unrecorded. \
         HTTP/2 and gRPC: the same {} and {} requests in flight as streams over {} h2c \
         connections (prior knowledge), one stream per request; gRPC is a unary call with a \
         {} B message each way.\n",
        f.rate,
        f.connections,
        f.duration.as_secs(),
        f.warmup.as_secs(),
        s.connections,
        s.duration.as_secs(),
        s.warmup.as_secs(),
        f.connections,
        cfg.h2_connections * cfg.h2_streams,
        cfg.h2_connections,
        cfg.backend.body_bytes,
    );
    for n in notes {
        println!("- {n}");
    }
    println!();

    println!(
        "| target | protocol | {} rps: achieved | p50 ms | p99 ms | errors | saturation: rps | p50 ms | p99 ms | errors |",
        f.rate
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {:.0} | {} | {} | {} |",
            r.name,
            r.kind.protocol().label(),
            r.fixed.rps(),
            ms(r.fixed.ms(50.0)),
            ms(r.fixed.ms(99.0)),
            r.fixed.errors.describe(),
            r.saturation.rps(),
            ms(r.saturation.ms(50.0)),
            ms(r.saturation.ms(99.0)),
            r.saturation.errors.describe(),
        );
    }
    println!();

    println!("Latency detail (ms):\n");
    println!(
        "| target | phase | responses | rps | p50 | p90 | p99 | max | errors | client reconnects | backend connections opened |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        for (phase, o, opened) in [
            ("fixed rate", &r.fixed, r.backend_connections[0]),
            ("saturation", &r.saturation, r.backend_connections[1]),
        ] {
            println!(
                "| {} | {phase} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {opened} |",
                r.name,
                o.ok,
                o.rps(),
                ms(o.ms(50.0)),
                ms(o.ms(90.0)),
                ms(o.ms(99.0)),
                ms(o.max_ms()),
                o.errors.describe(),
                o.reconnects,
            );
        }
    }
    println!(
        "\nClient reconnects: connections the target closed and the client reopened. Backend \
         connections opened: connections the backend accepted during the phase, warm-up \
         included (direct, that is the client's own; through a proxy, how well it pools).\n"
    );
    let lags: Vec<String> = results
        .iter()
        .filter_map(|r| {
            let lag = r.fixed.pacer_lag.as_ref()?;
            Some(format!(
                "{} p50 {} / p99 {}",
                r.name,
                ms(lag.value_at_quantile(0.5) as f64 / 1000.0),
                ms(lag.value_at_quantile(0.99) as f64 / 1000.0)
            ))
        })
        .collect();
    println!(
        "Pacer lateness at the fixed rate (ms; the floor of the fixed-rate latencies, a cost \
         of this client): {}.\n",
        lags.join("; ")
    );

    println!("Processes (RSS in MiB; CPU as cores busy and CPU-ms per 1,000 requests):\n");
    println!(
        "| target | process | threads | RSS idle | RSS peak under load | VmHWM | CPU @ {} rps | CPU-ms / 1k req @ {} rps | CPU @ saturation | CPU-ms / 1k req @ saturation |",
        f.rate, f.rate
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let fixed_requests = r.fixed.ok + r.fixed.errors.total();
        for p in &r.processes {
            println!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.1} | {:.3} | {:.1} |",
                r.name,
                p.label,
                p.end.threads,
                mib(p.idle.rss_kib),
                mib(p.peak_rss_kib),
                mib(p.end.hwm_kib),
                p.fixed_cpu.cores(),
                p.fixed_cpu.ms_per_1k(fixed_requests),
                p.saturation_cpu.cores(),
                p.saturation_cpu.ms_per_1k(r.saturation.ok),
            );
        }
    }
    let windows = results
        .iter()
        .flat_map(|r| &r.processes)
        .flat_map(|p| [p.fixed_cpu, p.saturation_cpu]);
    let (all, in_ticks) = windows.fold((0, 0), |(n, t), c| (n + 1, t + usize::from(!c.precise)));
    println!(
        "\nCPU times are each thread's time on a CPU, user and kernel, in nanoseconds \
         (/proc/<pid>/task/*/schedstat), except in {in_ticks} of {all} windows, where a thread \
         came or went and utime + stime in clock ticks of 1/{ticks} s stood in (over {} s at \
         {} rps good to about ±{:.1} CPU-ms per 1,000 requests). CPU-ms per 1,000 requests at \
         {} rps equals ten times the percent of one core that {} rps costs.",
        f.duration.as_secs(),
        f.rate,
        resolution(cfg, ticks),
        f.rate,
        f.rate,
    );
    versus_nginx(cfg, results);
}

/// One CPU tick in CPU-ms per 1,000 requests of the fixed-rate window.
pub(super) fn resolution(cfg: &Config, ticks: u64) -> f64 {
    let f = cfg.fixed;
    1000.0 / ticks.max(1) as f64 / (f64::from(f.rate) * f.duration.as_secs_f64() / 1000.0)
}

/// The proxy's or nginx's own figures: saturation rps, CPU-ms per 1,000 requests at the
/// fixed rate, p99 at the fixed rate, idle RSS (MiB). Its process is the first listed.
fn own(m: &Measured) -> (f64, Option<f64>, f64, Option<f64>) {
    let requests = m.fixed.ok + m.fixed.errors.total();
    let first = m.processes.first();
    (
        m.saturation.rps(),
        first.map(|p| p.fixed_cpu.ms_per_1k(requests)),
        m.fixed.ms(99.0),
        first.map(|p| mib(p.idle.rss_kib)),
    )
}

pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// Per protocol and worker count, each proxy row against nginx's and direct's of the same
/// round; with several rounds, a table per round and then the median of the rounds.
fn versus_nginx(cfg: &Config, results: &[Measured]) {
    let rate = cfg.fixed.rate;
    let mut printed = false;
    for round in 1..=cfg.rounds {
        let of_round: Vec<&Measured> = results.iter().filter(|r| r.round == round).collect();
        let rows: Vec<String> = pairs(cfg, &of_round).into_iter().map(|p| row(&p)).collect();
        if rows.is_empty() {
            continue;
        }
        if !printed {
            println!("\n## vs nginx\n");
            println!(
                "Each proxy row against nginx with the same protocol and worker count, from the \
                 tables above: saturation rps and CPU-ms per 1,000 requests at {rate} rps (the \
                 proxy's process against nginx's master and workers; their resolution is \
                 above) as proxy / nginx = ratio; p99 at {rate} rps minus direct's p99 of the \
                 same protocol; RSS when idle.{}\n",
                if cfg.rounds > 1 {
                    " Each round's proxy, nginx and direct rows are compared with one another."
                } else {
                    ""
                }
            );
            printed = true;
        }
        if cfg.rounds > 1 {
            println!("Round {round} of {}:\n", cfg.rounds);
        }
        println!(
            "| protocol | workers | target | saturation rps: proxy / nginx | CPU-ms / 1k req @ {rate} rps: proxy / nginx | p99 @ {rate} rps − direct, ms: proxy / nginx | RSS idle MiB: proxy / nginx |"
        );
        println!("|---|---:|---|---:|---:|---:|---:|");
        for r in rows {
            println!("{r}");
        }
        println!();
    }
    if !printed {
        return;
    }
    if cfg.rounds > 1 {
        medians(cfg, results);
    }
    println!(
        "Ratios above 1.0× in rps and at or below 1.0× in CPU favour the proxy. Over HTTP/2, \
         nginx's upstream is HTTP/1.1 (its proxy module speaks nothing else upstream) while the \
         proxy's is h2c; over gRPC both are HTTP/2 upstream."
    );
}

/// One proxy row with nginx's and direct's rows of the same round, protocol and worker
/// count.
struct Pair<'a> {
    protocol: Protocol,
    workers: usize,
    proxy: &'a Measured,
    nginx: Option<&'a Measured>,
    direct: Option<&'a Measured>,
}

/// Each proxy row of `results` (one round's) with nginx's and direct's rows it is compared
/// with.
fn pairs<'a>(cfg: &Config, results: &[&'a Measured]) -> Vec<Pair<'a>> {
    let mut out = Vec::new();
    for protocol in Protocol::ALL {
        let direct = results
            .iter()
            .copied()
            .find(|r| r.kind == Kind::Direct(protocol));
        for &w in &cfg.workers {
            let nginx = results
                .iter()
                .copied()
                .find(|r| r.kind == Kind::Nginx(protocol) && r.workers == Some(w));
            let proxies = results.iter().copied().filter(|r| {
                r.workers == Some(w)
                    && (r.kind == Kind::Proxy(protocol)
                        || (r.kind == Kind::ProxyLog && protocol == Protocol::Http1))
            });
            for p in proxies {
                out.push(Pair {
                    protocol,
                    workers: w,
                    proxy: p,
                    nginx,
                    direct,
                });
            }
        }
    }
    out
}

/// With several rounds: per proxy row, the median over the rounds of each round's ratio
/// (and p99 over direct), each round's figure in brackets. A round's proxy, nginx and direct
/// ran minutes apart at most, so the VM's slow spells, which last longer than one target's
/// run but shorter than a round, move fewer of the ratios than of the absolute figures.
fn medians(cfg: &Config, results: &[Measured]) {
    #[derive(Default)]
    struct Figures {
        rps: Vec<f64>,
        cpu: Vec<f64>,
        p99: Vec<f64>,
        nginx_p99: Vec<f64>,
        rss: Vec<f64>,
        nginx_rss: Vec<f64>,
    }
    let mut rows: Vec<((Protocol, usize, Kind), Figures)> = Vec::new();
    for round in 1..=cfg.rounds {
        let of_round: Vec<&Measured> = results.iter().filter(|r| r.round == round).collect();
        for Pair {
            protocol,
            workers: w,
            proxy: p,
            nginx,
            direct,
        } in pairs(cfg, &of_round)
        {
            let key = (protocol, w, p.kind);
            let at = match rows.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    rows.push((key, Figures::default()));
                    rows.len() - 1
                }
            };
            let f = &mut rows[at].1;
            let (rps, cpu, p99, rss) = own(p);
            let n = nginx.map(own);
            let d99 = direct.map(|d| d.fixed.ms(99.0));
            if let Some((nrps, ncpu, n99, nrss)) = n {
                if nrps > 0.0 {
                    f.rps.push(rps / nrps);
                }
                if let (Some(c), Some(nc)) = (cpu, ncpu)
                    && nc > 0.0
                {
                    f.cpu.push(c / nc);
                }
                if let Some(d) = d99 {
                    f.nginx_p99.push(n99 - d);
                }
                f.nginx_rss.extend(nrss);
            }
            if let Some(d) = d99 {
                f.p99.push(p99 - d);
            }
            f.rss.extend(rss);
        }
    }
    let rate = cfg.fixed.rate;
    println!(
        "Median of the {} rounds (each round's figure in brackets):\n",
        cfg.rounds
    );
    println!(
        "| protocol | workers | target | saturation rps, proxy ÷ nginx | CPU-ms / 1k req @ {rate} rps, proxy ÷ nginx | p99 @ {rate} rps − direct, ms: proxy | nginx | RSS idle MiB, highest: proxy / nginx |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for ((protocol, w, kind), f) in rows {
        let highest = |v: &[f64]| v.iter().copied().reduce(f64::max);
        let rss = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
        println!(
            "| {} | {w} | {} | {} | {} | {} | {} | {} / {} |",
            protocol.label(),
            kind.name(),
            spread(&f.rps, |v| format!("{v:.2}×")),
            spread(&f.cpu, |v| format!("{v:.2}×")),
            spread(&f.p99, |v| format!("{v:+.3}")),
            spread(&f.nginx_p99, |v| format!("{v:+.3}")),
            rss(highest(&f.rss)),
            rss(highest(&f.nginx_rss)),
        );
    }
    println!();
}

/// `median (a / b / c)`, or `–` with no values.
pub fn spread(values: &[f64], show: impl Fn(f64) -> String) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    let each: Vec<String> = values.iter().map(|v| show(*v)).collect();
    format!("**{}** ({})", show(median), each.join(" / "))
}

fn row(pair: &Pair<'_>) -> String {
    let Pair {
        protocol,
        workers,
        proxy: p,
        nginx,
        direct,
    } = *pair;
    let (rps, cpu, p99, rss) = own(p);
    let n = nginx.map(own);
    let d99 = direct.map(|d| d.fixed.ms(99.0));
    let opt = |v: Option<f64>, digits: usize| v.map_or("–".into(), |v| format!("{v:.digits$}"));
    let over = |v: f64| d99.map_or("–".into(), |d| format!("{:+.3}", v - d));
    let rps_cell = match n {
        Some((nrps, ..)) => format!("{rps:.0} / {nrps:.0} = {}", ratio(rps, nrps)),
        None => format!("{rps:.0} / –"),
    };
    let cpu_cell = match (cpu, n.and_then(|n| n.1)) {
        (Some(c), Some(nc)) => format!("{c:.1} / {nc:.1} = {}", ratio(c, nc)),
        (c, nc) => format!("{} / {}", opt(c, 1), opt(nc, 1)),
    };
    format!(
        "| {} | {workers} | {} | {rps_cell} | {cpu_cell} | {} / {} | {} / {} |",
        protocol.label(),
        p.kind.name(),
        over(p99),
        n.map_or("–".into(), |n| over(n.2)),
        opt(rss, 1),
        opt(n.and_then(|n| n.3), 1),
    )
}
