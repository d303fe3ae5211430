//! The control plane under test: the real `switchboard` binary as a child process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use sqlx::Connection;
use tokio::process::{Child, Command};

/// How to start the control plane.
#[derive(Debug, Clone)]
pub struct Options {
    /// The platform admin token (`--admin-token`, at least 16 characters).
    pub admin_token: String,
    /// `--log-level` of the child (its log goes to a file, shown if it fails).
    pub log_level: String,
    /// How long to wait for `/readyz`.
    pub ready_timeout: Duration,
}

/// A running `switchboard serve`, killed when stopped or dropped.
#[derive(Debug)]
pub struct ControlPlane {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:port` of each listener.
    pub rest_url: String,
    pub xds_url: String,
    pub admin_url: String,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    log: PathBuf,
    /// The binary and its arguments, to start it again on the same ports and data.
    bin: PathBuf,
    args: Vec<std::ffi::OsString>,
    /// The child's working and data directory.
    dir: tempfile::TempDir,
    /// The PostgreSQL database created for this run: (server URL, database name).
    database: Option<(String, String)>,
}

/// The child's memory, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set size now (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set size since start (VmHWM).
    pub peak_kib: u64,
    /// The anonymous part of the RSS (RssAnon): the heap, what the process itself holds. The
    /// rest is mostly its program text paged in from the binary (RssFile), which the kernel
    /// can drop at any time and which grows as a run executes more of the code.
    pub anon_kib: u64,
}

/// The binary to start: `SWITCHBOARD_BIN`, else `target/release/switchboard` of this
/// workspace (honouring `CARGO_TARGET_DIR`).
fn binary() -> Result<PathBuf> {
    built_binary("SWITCHBOARD_BIN", "switchboard", "release")
}

/// Spawns `cmd`, which runs `bin`, and returns the child with its process id; `what` names
/// the child when it exits before it has one.
pub(crate) fn spawn(cmd: &mut Command, bin: &Path, what: &str) -> Result<(Child, u32)> {
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child
        .id()
        .with_context(|| format!("{what} exited at once"))?;
    Ok((child, pid))
}

/// Sends SIGTERM to each of `pids` (a process, and nginx's workers too).
pub(crate) fn send_term(pids: &[u32]) {
    for pid in pids.iter().filter_map(|p| i32::try_from(*p).ok()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

/// Stops `child` as its user would: SIGTERM to `pids` (the child's first), then SIGKILL if it
/// has not exited within `grace`.
pub(crate) async fn terminate(child: &mut Child, pids: &[u32], grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    send_term(pids);
    if tokio::time::timeout(grace, child.wait()).await.is_ok() {
        return;
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// A binary of this workspace: the file that `env_var` names, else `target/{profile}/{name}`
/// (honouring `CARGO_TARGET_DIR`), which must have been built (`cargo build --profile
/// {profile} -p {name}`; the profile `release` is `--release`).
pub(crate) fn built_binary(env_var: &str, name: &str, profile: &str) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(env_var) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("{env_var}={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let bin = target_dir().join(profile).join(name);
    if !bin.is_file() {
        let flag = match profile {
            "release" => "--release".to_owned(),
            other => format!("--profile {other}"),
        };
        bail!(
            "{} does not exist: build it with `cargo build {flag} -p {name}`, or set \
             {env_var} to the binary to test",
            bin.display()
        );
    }
    Ok(bin)
}

/// Three distinct free loopback ports (another process could still take one before the
/// child binds it).
fn free_ports() -> Result<[SocketAddr; 3]> {
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    Ok([
        loopback(switchboard_runtime::ports::try_free_port()?),
        loopback(switchboard_runtime::ports::try_free_port()?),
        loopback(switchboard_runtime::ports::try_free_port()?),
    ])
}

/// Creates a fresh database on the PostgreSQL server of `admin_url` (as the store's test
/// helper does); returns its URL and name.
async fn create_database(admin_url: &str) -> Result<(String, String)> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let name = format!("sbload_{}_{nanos}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .context("connecting to SWITCHBOARD_TEST_DATABASE_URL")?;
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    let _ = conn.close().await;
    let (without_query, query) = match admin_url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (admin_url, None),
    };
    let Some((base, _)) = without_query.rsplit_once('/') else {
        bail!("SWITCHBOARD_TEST_DATABASE_URL has no database path");
    };
    let url = match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    };
    Ok((url, name))
}

async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    // FORCE (PostgreSQL 13+) in case the child's connections are not gone yet.
    let forced = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    if sqlx::Executor::execute(&mut conn, forced.as_str())
        .await
        .is_err()
    {
        let plain = format!("DROP DATABASE IF EXISTS {name}");
        sqlx::Executor::execute(&mut conn, plain.as_str()).await?;
    }
    let _ = conn.close().await;
    Ok(())
}

impl ControlPlane {
    /// Starts `switchboard serve` on free loopback ports, on a fresh PostgreSQL database when
    /// `SWITCHBOARD_TEST_DATABASE_URL` is set and on SQLite (in a temporary directory)
    /// otherwise, and waits until `/readyz` answers 200.
    pub async fn start(options: &Options) -> Result<ControlPlane> {
        let bin = binary()?;
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let database = match std::env::var("SWITCHBOARD_TEST_DATABASE_URL") {
            Ok(admin) if !admin.is_empty() => {
                let (url, name) = create_database(&admin).await?;
                Some((admin, name, url))
            }
            _ => None,
        };
        let [rest, xds, admin] = free_ports()?;
        let log = dir.path().join("switchboard.log");
        let mut args: Vec<std::ffi::OsString> = vec![
            "serve".into(),
            "--rest-addr".into(),
            rest.to_string().into(),
            "--xds-addr".into(),
            xds.to_string().into(),
            "--admin-addr".into(),
            admin.to_string().into(),
            "--data-dir".into(),
            dir.path().join("data").into(),
            "--admin-token".into(),
            options.admin_token.clone().into(),
            "--log-level".into(),
            options.log_level.clone().into(),
        ];
        if let Some((_, _, url)) = &database {
            // PostgreSQL needs the CA key-encryption key configured (a throwaway one here).
            args.extend([
                "--database-url".into(),
                url.into(),
                "--ca-key".into(),
                "5a".repeat(32).into(),
            ]);
        }
        let (child, pid) = launch(&bin, &args, dir.path(), &log)?;
        let mut cp = ControlPlane {
            child,
            pid,
            rest_url: format!("http://{rest}"),
            xds_url: format!("http://{xds}"),
            admin_url: format!("http://{admin}"),
            backend: if database.is_some() {
                "postgres"
            } else {
                "sqlite"
            },
            log,
            bin,
            args,
            dir,
            database: database.map(|(admin, name, _)| (admin, name)),
        };
        if let Err(e) = cp.wait_ready(options.ready_timeout).await {
            let tail = cp.log_tail(40);
            cp.stop().await;
            return Err(e.context(format!(
                "the control plane did not become ready; its log:\n{tail}"
            )));
        }
        Ok(cp)
    }

    /// Kills the child with SIGKILL and starts it again with the same arguments (the same
    /// ports and database), without waiting until it is ready: a crash and a restart. Returns
    /// the instant it was killed.
    pub async fn kill_and_restart(&mut self) -> Result<Instant> {
        let killed = Instant::now();
        self.child.start_kill()?;
        self.child.wait().await?;
        let (child, pid) = launch(&self.bin, &self.args, self.dir.path(), &self.log)?;
        self.child = child;
        self.pid = pid;
        Ok(killed)
    }

    /// Waits until `/readyz` answers 200, failing if the child exits or after `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let url = format!("{}/readyz", self.admin_url);
        wait_for_200(&mut self.child, "the control plane", &url, timeout).await
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the child has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the control plane exited with {status}; its log:\n{}",
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// The child's memory now.
    pub fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
            anon_kib: field("RssAnon:")?,
        })
    }

    /// The child's log without terminal colours.
    fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// The last `lines` lines of the child's log.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(&self.log_text(), lines)
    }

    /// How many lines of the child's log are at WARN or ERROR, and the first `max` of them.
    pub fn log_problems(&self, max: usize) -> (usize, Vec<String>) {
        let text = self.log_text();
        let problems: Vec<String> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_owned)
            .collect();
        let n = problems.len();
        (n, problems.into_iter().take(max).collect())
    }

    /// Kills the child, waits for it, and drops the PostgreSQL database it used.
    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        if let Some((admin, name)) = self.database.take()
            && let Err(e) = drop_database(&admin, &name).await
        {
            eprintln!("could not drop the load-test database {name}: {e:#}");
        }
    }
}

/// Starts `bin args` in `dir`, its output appended to `log`.
fn launch(bin: &Path, args: &[std::ffi::OsString], dir: &Path, log: &Path) -> Result<(Child, u32)> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true);
    // Only the arguments configure the child, not this environment's settings.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(key);
        }
    }
    spawn(&mut cmd, bin, "the control plane")
}

/// The workspace's target directory (`CARGO_TARGET_DIR`, else `target`).
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), which the text log format may contain.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `url` until it answers 2xx, failing as soon as `child` (`what`) exits or after
/// `timeout`: the readiness wait of every process a load test starts.
pub(crate) async fn wait_for_200(
    child: &mut Child,
    what: &str,
    url: &str,
    timeout: Duration,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status}");
        }
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer 200 within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
