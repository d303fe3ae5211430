//! The fault tests' harness: an installation of `deploy/local/switchboard-local` in a temp
//! directory, data-plane traffic through its two sidecars, and a writer changing a route
//! through its load balancer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod streams;

use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The directory holding `switchboard` and `switchboard-proxy`: $SWITCHBOARD_LOCAL_BIN_DIR,
/// else the one this test binary was built into (`cargo test --workspace` builds both there),
/// built here when they are missing.
fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SWITCHBOARD_LOCAL_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    if !dir.join("switchboard").exists() || !dir.join("switchboard-proxy").exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .current_dir(ROOT)
            .args([
                "build",
                "-p",
                "switchboard",
                "-p",
                "switchboard-proxy",
                "--bins",
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "building switchboard and switchboard-proxy failed"
        );
    }
    dir
}

/// One running installation; `down` when dropped (every process stopped, the directory gone).
pub struct Local {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    token: String,
    pub client: reqwest::Client,
}

impl Local {
    /// `switchboard-local up` in a fresh directory.
    pub fn up() -> Local {
        Local::up_with(&[])
    }

    /// `switchboard-local up` with more options (`--drain-period 15s`).
    pub fn up_with(options: &[&str]) -> Local {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-faults")
            .tempdir()
            .unwrap();
        // Under root, deploy/local's PostgreSQL runs as user postgres, which must reach it.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let local = dir.path().join("local");
        let out = script(&local, &[&["up"], options].concat());
        eprintln!("{out}");
        let mut env = HashMap::new();
        let text = std::fs::read_to_string(local.join("env")).unwrap();
        for word in text.split_whitespace() {
            if let Some((k, v)) = word.split_once('=') {
                env.insert(k.to_owned(), v.to_owned());
            }
        }
        let token = std::fs::read_to_string(local.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        Local {
            dir,
            env,
            token,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    fn local(&self) -> PathBuf {
        self.dir.path().join("local")
    }

    /// A `switchboard-local` command on this installation (`kill-replica 2`, …).
    pub fn run(&self, args: &[&str]) {
        script(&self.local(), args);
    }

    pub fn port(&self, key: &str) -> u16 {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not in the installation's env file"))
            .parse()
            .unwrap()
    }

    pub fn rest_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/v1{path}", self.port("LB_REST"))
    }

    /// A REST call through the load balancer as the platform admin.
    pub async fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        rest(
            &self.client,
            &self.rest_url(path),
            &self.token,
            method,
            body,
        )
        .await
    }

    /// The highest revision `node` has ACKed (any type, any of its streams), as the REST API
    /// reports it; `None` while it cannot tell.
    pub async fn acked_revision(&self, node: &str) -> Option<i64> {
        let path = format!("/tenants/local/meshes/demo/proxies/{node}");
        let (status, body) = self.rest(reqwest::Method::GET, &path, None).await.ok()?;
        if status != 200 {
            return None;
        }
        body["streams"]
            .as_array()?
            .iter()
            .flat_map(|s| s["types"].as_array().into_iter().flatten())
            .filter_map(|t| t["acked"]["revision"].as_i64())
            .max()
    }

    /// Waits (up to `patience`) until both sidecars have ACKed `revision`; the time it took.
    pub async fn converged(&self, revision: i64, patience: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let mut behind = Vec::new();
            for node in NODES {
                let r = self.acked_revision(node).await;
                if r.is_none_or(|r| r < revision) {
                    behind.push(format!("{node} at {r:?}"));
                }
            }
            if behind.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > patience {
                return Err(format!(
                    "not every sidecar ACKed revision {revision} within {patience:?}: {}",
                    behind.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Open xDS connections HAProxy holds to each replica (`scur` of backend `xds`, by
    /// replica number), from its stats page.
    pub async fn xds_connections(&self) -> HashMap<u32, u64> {
        self.xds_stat("scur").await
    }

    /// A column of HAProxy's stats for backend `xds`, by replica number (`scur`: open
    /// connections; `stot`: connections ever made).
    pub async fn xds_stat(&self, column: &str) -> HashMap<u32, u64> {
        let url = format!("http://127.0.0.1:{}/stats;csv", self.port("LB_STATS"));
        let Ok(resp) = self.client.get(&url).send().await else {
            return HashMap::new();
        };
        let text = resp.text().await.unwrap_or_default();
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(scur)) = (col("pxname"), col("svname"), col(column)) else {
            return HashMap::new();
        };
        lines
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let n = f.get(sv)?.strip_prefix("replica-")?.parse().ok()?;
                (*f.get(px)? == "xds").then_some((n, f.get(scur)?.parse().ok()?))
            })
            .collect()
    }

    /// The pid of one of the installation's processes (`replica-2`, `sidecar-web`), from
    /// its pid file.
    pub fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.local().join("pids").join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// How many lines of process `name`'s log contain `needle`.
    pub fn log_lines(&self, name: &str, needle: &str) -> usize {
        let log = self.local().join("logs").join(format!("{name}.log"));
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Replica `i`'s open xDS streams of tenant `local` that asked for Clusters (its
    /// `switchboard_xds_streams` gauge); `None` when its admin port does not answer.
    pub async fn replica_cds_streams(&self, i: u32) -> Option<u64> {
        let url = format!(
            "http://127.0.0.1:{}/metrics",
            self.port(&format!("ADMIN_{i}"))
        );
        let text = self.client.get(url).send().await.ok()?.text().await.ok()?;
        Some(
            text.lines()
                .filter(|l| {
                    l.starts_with("switchboard_xds_streams{")
                        && l.contains("tenant=\"local\"")
                        && l.contains("type=\"CDS\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }

    /// The platform admin token.
    pub fn admin_token(&self) -> &str {
        &self.token
    }

    /// The proxy token of the installation's sidecars (tenant `local`, mesh `demo`).
    pub fn proxy_token(&self) -> String {
        std::fs::read_to_string(self.local().join("proxy-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Every log of the installation, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(dir) = std::fs::read_dir(self.local().join("logs")) {
            for e in dir.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let start = text.len().saturating_sub(3000);
                let start = (start..text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(text.len());
                out += &format!("--- {}\n{}\n", e.path().display(), &text[start..]);
            }
        }
        out
    }
}

/// Whether `pid` is a live process (a zombie, which init has yet to reap, is not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

impl Drop for Local {
    /// `down`, then (unless the test already failed) asserts that it left no process and
    /// removed the directory.
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("{}", self.logs());
        }
        let mut pids: Vec<(String, u32)> = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.local().join("pids")) {
            for e in dir.flatten() {
                let pid = std::fs::read_to_string(e.path()).unwrap_or_default();
                if let Ok(pid) = pid.trim().parse() {
                    pids.push((e.file_name().to_string_lossy().into_owned(), pid));
                }
            }
        }
        // PostgreSQL's postmaster, started by pg_ctl, is in its own pid file.
        let postmaster = std::fs::read_to_string(self.local().join("pg/data/postmaster.pid"));
        if let Some(pid) = postmaster
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse().ok())
        {
            pids.push(("postgres".to_owned(), pid));
        }
        let out = Command::new(Path::new(ROOT).join("deploy/local/switchboard-local"))
            .args(["--dir", self.local().to_str().unwrap(), "down"])
            .output();
        if let Ok(o) = &out {
            eprint!("{}", String::from_utf8_lossy(&o.stderr));
        }
        if !panicking {
            assert!(
                out.is_ok_and(|o| o.status.success()),
                "switchboard-local down failed"
            );
            let left: Vec<_> = pids.iter().filter(|(_, pid)| running(*pid)).collect();
            assert!(left.is_empty(), "down left processes running: {left:?}");
            assert!(
                !self.local().exists(),
                "down left {}",
                self.local().display()
            );
        }
    }
}

/// Runs `switchboard-local --dir DIR ARGS…`, asserting success; its output.
fn script(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(Path::new(ROOT).join("deploy/local/switchboard-local"))
        .args(["--dir", dir.to_str().unwrap()])
        .args(["--bin-dir", bin_dir().to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "switchboard-local {args:?} failed:\n{text}"
    );
    text
}

async fn rest(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    method: reqwest::Method,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let (status, _, body) = send(client, url, token, method, body).await?;
    Ok((status, body))
}

/// A REST call: its status, its `Retry-After` and its body (JSON, else the text).
async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    method: reqwest::Method,
    body: Option<Value>,
) -> Result<(u16, Option<String>, Value), String> {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok((
        status,
        retry_after,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// The two sidecars' node names.
pub const NODES: [&str; 2] = ["web-1", "api-1"];

/// What a traffic loop saw.
#[derive(Debug, Default)]
pub struct TrafficReport {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, with the time since the loop started.
    pub failures: Vec<String>,
}

/// Requests at a steady rate through both sidecars (web's to route `api.local`, api's to
/// service `web`), each of which must answer 200 from the other's app.
pub struct Traffic {
    stop: watch::Sender<bool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<TrafficReport>,
}

impl Traffic {
    /// Starts `rps` requests a second, for at most `max` (then it stops by itself).
    pub fn start(local: &Local, rps: u32, max: Duration) -> Traffic {
        let targets = [
            (local.port("OUT_web"), "api.local", "hello from api"),
            (local.port("OUT_api"), "web", "hello from web"),
        ];
        // Generous against a loaded machine: a request fails on a stall, not on slowness.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        let (stop, mut stopped) = watch::channel(false);
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ok_count = ok.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let limit = u64::from(rps) * max.as_secs();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rps);
            let mut inflight = tokio::task::JoinSet::new();
            let mut report = TrafficReport::default();
            let mut sent = 0u64;
            let note = |report: &mut TrafficReport, r: Result<(), String>| match r {
                Ok(()) => {
                    report.ok += 1;
                    ok_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    report.failed += 1;
                    if report.failures.len() < 10 {
                        report.failures.push(e);
                    }
                }
            };
            while sent < limit && start.elapsed() < max && !*stopped.borrow() {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let (port, host, want) = targets[(sent % 2) as usize];
                sent += 1;
                let client = client.clone();
                inflight.spawn(async move {
                    let at = start.elapsed();
                    let r = client
                        .get(format!("http://127.0.0.1:{port}/"))
                        .header("host", host)
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status() == 200 => {
                            let body = resp.text().await.unwrap_or_default();
                            if body.contains(want) {
                                Ok(())
                            } else {
                                Err(format!("{at:?} {host}: 200 with body {body:?}"))
                            }
                        }
                        Ok(resp) => Err(format!(
                            "{at:?} {host}: {} {}",
                            resp.status(),
                            resp.text().await.unwrap_or_default()
                        )),
                        Err(e) => Err(format!("{at:?} {host}: {e}")),
                    }
                });
                while let Some(done) = inflight.try_join_next() {
                    note(&mut report, done.unwrap_or_else(|e| Err(e.to_string())));
                }
            }
            while let Some(done) = inflight.join_next().await {
                note(&mut report, done.unwrap_or_else(|e| Err(e.to_string())));
            }
            report
        });
        Traffic { stop, ok, task }
    }

    /// Requests answered 200 so far.
    pub fn ok_so_far(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn stop(self) -> TrafficReport {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// One acknowledged write: the route's timeout it set, its revision, when it was answered.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    pub timeout_ms: u64,
    pub revision: i64,
    pub at: Instant,
}

/// One write as the writer sent it: when, how long its answer took, and the answer (`None`:
/// no answer within the client's 5 s timeout, or a connection error).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub sent: Instant,
    pub took: Duration,
    pub status: Option<u16>,
    pub retry_after: Option<String>,
}

#[derive(Debug, Default)]
pub struct WriterReport {
    pub acked: Vec<Acked>,
    /// Every write, answered or not.
    pub attempts: Vec<Attempt>,
    /// Writes that got no 2xx (an error or another status): not promised to be stored.
    pub unacknowledged: u64,
    pub errors: Vec<String>,
}

/// PUTs route `api` through the load balancer with a new timeout each time, `per_second`
/// times a second, for at most `max`.
pub struct Writer {
    stop: watch::Sender<bool>,
    acked: watch::Receiver<Vec<Acked>>,
    task: JoinHandle<WriterReport>,
}

/// The route `api` as the writer writes it, `timeout_ms` telling the writes apart (from 10 s
/// up: the route's timeout must not fail requests that are merely slow on a busy machine).
pub fn route(timeout_ms: u64) -> Value {
    json!({"spec": {"hostnames": ["api.local"],
                    "rules": [{"backends": [{"service": "api"}], "timeout": format!("{timeout_ms}ms")}]}})
}

impl Writer {
    /// `first` is the first timeout written (ms); each write adds one.
    pub fn start(local: &Local, per_second: u32, max: Duration, first: u64) -> Writer {
        let client = local.client.clone();
        let url = local.rest_url("/tenants/local/meshes/demo/routes/api");
        let token = local.token.clone();
        let (stop, mut stopped) = watch::channel(false);
        let (acked_tx, acked) = watch::channel(Vec::new());
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut report = WriterReport::default();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
            let mut next = first;
            let limit = u64::from(per_second) * max.as_secs();
            while next - first < limit && start.elapsed() < max && !*stopped.borrow() {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let timeout_ms = next;
                next += 1;
                let sent = Instant::now();
                let r = send(
                    &client,
                    &url,
                    &token,
                    reqwest::Method::PUT,
                    Some(route(timeout_ms)),
                )
                .await;
                report.attempts.push(Attempt {
                    sent,
                    took: sent.elapsed(),
                    status: r.as_ref().ok().map(|(s, _, _)| *s),
                    retry_after: r.as_ref().ok().and_then(|(_, ra, _)| ra.clone()),
                });
                let r = r.map(|(s, _, body)| (s, body));
                match r {
                    Ok((s, body)) if (200..300).contains(&s) => {
                        let revision = body["revision"].as_i64().unwrap_or(-1);
                        let a = Acked {
                            timeout_ms,
                            revision,
                            at: Instant::now(),
                        };
                        report.acked.push(a);
                        acked_tx.send_modify(|v| v.push(a));
                    }
                    other => {
                        report.unacknowledged += 1;
                        if report.errors.len() < 10 {
                            report
                                .errors
                                .push(format!("{:?}: {other:?}", start.elapsed()));
                        }
                    }
                }
            }
            report
        });
        Writer { stop, acked, task }
    }

    /// The first write acknowledged after `t`, waiting for it up to `patience`.
    pub async fn first_acked_after(&mut self, t: Instant, patience: Duration) -> Option<Acked> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(a) = self.acked.borrow().iter().find(|a| a.at > t) {
                return Some(*a);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left, self.acked.changed()).await;
        }
    }

    pub async fn stop(self) -> WriterReport {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// A duration of whole milliseconds as the API writes it back (`1001ms` is `1s1ms`).
fn duration_text(ms: u64) -> String {
    let (s, ms) = (ms / 1000, ms % 1000);
    match (s, ms) {
        (0, ms) => format!("{ms}ms"),
        (s, 0) => format!("{s}s"),
        (s, ms) => format!("{s}s{ms}ms"),
    }
}

/// Every acknowledged write is in the store: its revision is in the tenant's change log as a
/// change of route `api`, and the route now holds the last acknowledged write or a later one.
/// The number of acknowledged writes not found (to be 0).
pub async fn lost_writes(local: &Local, acked: &[Acked]) -> Vec<i64> {
    let Some(first) = acked.iter().map(|a| a.revision).min() else {
        return Vec::new();
    };
    let mut logged = BTreeSet::new();
    let mut since = first - 1;
    loop {
        let path = format!("/tenants/local/changes?since={since}");
        let (s, body) = local.rest(reqwest::Method::GET, &path, None).await.unwrap();
        assert_eq!(s, 200, "GET {path}: {body}");
        let changes = body["changes"].as_array().cloned().unwrap_or_default();
        if changes.is_empty() {
            break;
        }
        for c in &changes {
            let r = c["revision"].as_i64().unwrap();
            since = since.max(r);
            if c["kind"].as_str().is_some_and(|k| k.contains("route")) && c["name"] == "api" {
                logged.insert(r);
            }
        }
    }
    let (s, current) = local
        .rest(
            reqwest::Method::GET,
            "/tenants/local/meshes/demo/routes/api",
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "GET route api: {current}");
    let last = acked.iter().max_by_key(|a| a.revision).unwrap();
    let now = current["revision"].as_i64().unwrap();
    assert!(
        now >= last.revision,
        "route api is at revision {now}, before the last acknowledged write ({})",
        last.revision
    );
    if now == last.revision {
        assert_eq!(
            current["spec"]["rules"][0]["timeout"],
            duration_text(last.timeout_ms),
            "route api does not hold the last acknowledged write"
        );
    }
    acked
        .iter()
        .map(|a| a.revision)
        .filter(|r| !logged.contains(r))
        .collect()
}
