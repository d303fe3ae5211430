//! Shared by the tests that run the built binary: free loopback ports, a `switchboard serve`
//! child killed on drop, and a small REST call helper. Every `serve` logs into a file (at
//! trace level unless the test chooses a level) that is scanned for secrets when it stops
//! (`switchboard_runtime::leaks`): a secret in any line fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod pg;
pub mod tls;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use switchboard_runtime::leaks;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

pub use switchboard_runtime::ports::free_port;

/// The last `max` bytes of a log file, for failure messages.
pub fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    format!(
        "--- {} (last {} bytes) ---\n{}",
        path.display(),
        text.len() - start,
        &text[start..]
    )
}

/// A running `switchboard serve`, killed on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:port` of the REST API and of the admin port.
    pub rest: String,
    pub admin: String,
    /// `127.0.0.1:port` of the xDS port.
    pub xds_addr: String,
    /// Where its logs go: the file asked for, else one of its own in the test's directory.
    pub log: Option<PathBuf>,
    /// Its data_dir, where it keeps what it generates (CA key, JWT key, admin token).
    data: PathBuf,
}

impl Server {
    /// The xDS port as a URL, for tonic clients.
    pub fn xds_url(&self) -> String {
        format!("http://{}", self.xds_addr)
    }

    /// Sends the process a signal (`TERM`, `INT`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} failed");
    }

    /// Waits up to `patience` for the process to exit, and says how; `None` if it is still
    /// running.
    pub async fn exited_within(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id, to send it a signal.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    /// Stops the process, then scans its whole log for secrets: those it generated, those
    /// the test gave it, and every pattern `leaks` knows.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remember_generated(&self.data);
        if let Some(log) = &self.log {
            leaks::assert_no_leaks(log);
        }
    }
}

/// The level a `serve` logs at unless the test chooses one: everything.
pub const LOG_LEVEL: &str = "trace";

/// Remembers the secrets in `extra` flags (the admin token, the CA key) for the log scan.
pub fn remember_flags(extra: &[&str]) {
    for pair in extra.windows(2) {
        match pair[0] {
            "--admin-token" => leaks::remember("admin token", pair[1]),
            "--ca-key" => leaks::remember("CA key-encryption key", pair[1]),
            _ => {}
        }
    }
}

/// Remembers the secrets a `serve` generated into `data` (its data_dir).
pub fn remember_generated(data: &Path) {
    for (what, file) in [
        ("CA key-encryption key", "ca-key"),
        ("proxy JWT signing key", "proxy-jwt-key"),
        ("admin token", "admin-token"),
    ] {
        if let Ok(text) = std::fs::read_to_string(data.join(file)) {
            leaks::remember(what, &text);
        }
    }
}

/// A log file of its own for each `serve` of this test process that was given none.
fn own_log(dir: &Path) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!(
        "switchboard-{}.log",
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Starts `switchboard serve` in `dir` on free ports with `extra` flags (its stderr into `log`
/// when given, else into a file of its own in `dir`; at [`LOG_LEVEL`] unless `extra` sets
/// one), and waits until `/readyz` answers 200.
pub async fn start(dir: &Path, extra: &[&str], log: Option<&Path>) -> Server {
    let (rest, xds, admin) = (free_port(), free_port(), free_port());
    remember_flags(extra);
    let log = log.map_or_else(|| own_log(dir), Path::to_path_buf);
    let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
    let data = extra
        .windows(2)
        .find(|p| p[0] == "--data-dir")
        .map_or_else(|| dir.join("data"), |p| dir.join(p[1]));
    let level: &[&str] = if extra.contains(&"--log-level") {
        &[]
    } else {
        &["--log-level", LOG_LEVEL]
    };
    let child = Command::new(BIN)
        .current_dir(dir)
        .args([
            "serve",
            "--rest-addr",
            &format!("127.0.0.1:{rest}"),
            "--xds-addr",
            &format!("127.0.0.1:{xds}"),
        ])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(extra)
        .args(level)
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .env_remove("SWITCHBOARD_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let server = Server {
        child,
        rest: format!("http://127.0.0.1:{rest}"),
        admin: format!("http://127.0.0.1:{admin}"),
        xds_addr: format!("127.0.0.1:{xds}"),
        log: Some(log),
        data,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", server.admin)).send().await
            && r.status() == 200
        {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "switchboard did not become ready\n{}",
            server
                .log
                .as_deref()
                .map(|p| tail(p, 4000))
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A REST call with a bearer token; the body parsed as JSON (a JSON string when it isn't).
pub async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
    if_match: Option<&str>,
) -> (u16, Value) {
    let mut req = c.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The admin port's Prometheus text.
pub async fn metrics(c: &reqwest::Client, server: &Server) -> String {
    c.get(format!("{}/metrics", server.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Runs the CLI (`switchboard ARGS`) with `stdin` fed in, its config file `config` when given,
/// and none of the test's own `SWITCHBOARD_*` API settings.
pub fn cli(config: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SWITCHBOARD_TOKEN")
        .env_remove("SWITCHBOARD_API_URL")
        .env_remove("SWITCHBOARD_TENANT")
        .env_remove("SWITCHBOARD_CONTEXT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(config) = config {
        cmd.env("SWITCHBOARD_CONFIG", config);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// A CLI run's standard output.
pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A CLI run's standard error.
pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a CLI run's exit code, showing both streams when it is not.
pub fn code(o: &Output, expected: i32) {
    assert_eq!(
        o.status.code(),
        Some(expected),
        "stdout:\n{}\nstderr:\n{}",
        out(o),
        err(o)
    );
}
