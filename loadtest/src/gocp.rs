//! go-control-plane's ADS server (`loadtest/go-control-plane`) as a child process: the
//! reference xds-convergence compares switchboard with. Built with the machine's Go into
//! `target/gocp-loadtest/` (again only when its sources are newer), fed whole configurations
//! over its loopback control endpoint.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use prost::Message;
use switchboard_xds_proto::{Any, DiscoveryResponse};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::Memory;
use crate::control_plane::{spawn, target_dir};

/// The Go program's sources, relative to this crate.
const SOURCES: [&str; 3] = ["main.go", "go.mod", "go.sum"];

/// A running go-control-plane server, killed when stopped or dropped.
pub struct GoControlPlane {
    child: Child,
    /// Closing it asks the program to exit.
    _stdin: ChildStdin,
    pid: u32,
    /// `http://127.0.0.1:port` of its ADS listener.
    pub xds_url: String,
    /// `http://127.0.0.1:port/snapshot`.
    snapshot_url: String,
    http: reqwest::Client,
}

/// The Go toolchain: `GO`, else `go` on the path, else `/usr/local/go/bin/go`.
fn go_tool() -> PathBuf {
    if let Some(go) = std::env::var_os("GO") {
        return PathBuf::from(go);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("go"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/local/go/bin/go"))
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The program: `SWITCHBOARD_GOCP_LOADTEST_BIN` when set, else built (when missing or older
/// than its sources) into `target/gocp-loadtest/gocp-loadtest`. The pinned modules are those
/// of the proxy's interop peer (proxy/tests/go-control-plane), so Go's module cache serves
/// both; `GOTOOLCHAIN=local`: no toolchain is downloaded.
pub async fn build() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SWITCHBOARD_GOCP_LOADTEST_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go-control-plane");
    let out = target_dir().join("gocp-loadtest");
    let bin = out.join("gocp-loadtest");
    let built = modified(&bin);
    let stale = SOURCES
        .iter()
        .any(|f| match (modified(&src.join(f)), built) {
            (Some(s), Some(b)) => s > b,
            _ => true,
        });
    if !stale {
        return Ok(bin);
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let go = go_tool();
    let tmp = out.join("gocp-loadtest.tmp");
    println!(
        "building go-control-plane's server into {} with {}",
        bin.display(),
        go.display()
    );
    let output = Command::new(&go)
        .arg("build")
        .arg("-o")
        .arg(&tmp)
        .arg(".")
        .current_dir(&src)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod -modcacherw -buildvcs=false")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} (Go 1.26 or newer is needed to build {})",
                go.display(),
                src.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "go build in {} failed ({}):\n{}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&tmp, &bin).with_context(|| format!("renaming to {}", bin.display()))?;
    Ok(bin)
}

impl GoControlPlane {
    /// Builds (if needed) and starts the program, and waits until it prints its addresses.
    pub async fn start() -> Result<GoControlPlane> {
        let bin = build().await?;
        let mut cmd = Command::new(&bin);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let (mut child, pid) = spawn(&mut cmd, &bin, "go-control-plane")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("go-control-plane's stdin or stdout is not a pipe");
        };
        let mut lines = BufReader::new(stdout).lines();
        let (mut xds, mut control) = (None, None);
        let read = async {
            while xds.is_none() || control.is_none() {
                let Some(line) = lines.next_line().await? else {
                    bail!("go-control-plane exited before printing its addresses");
                };
                match line.split_once(' ') {
                    Some(("xds", a)) => xds = Some(a.to_owned()),
                    Some(("control", a)) => control = Some(a.to_owned()),
                    _ => {}
                }
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .context("go-control-plane did not print its addresses within 30 s")??;
        let (Some(xds), Some(control)) = (xds, control) else {
            bail!("go-control-plane printed no addresses");
        };
        Ok(GoControlPlane {
            child,
            _stdin: stdin,
            pid,
            xds_url: format!("http://{xds}"),
            snapshot_url: format!("http://{control}/snapshot"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the program has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("go-control-plane exited with {status}");
        }
        Ok(())
    }

    /// Makes `resources` (every resource of the configuration, of any type) the snapshot every
    /// node is served; returns once the cache has answered the open watches.
    pub async fn set_snapshot(&self, resources: Vec<Any>) -> Result<()> {
        let body = DiscoveryResponse {
            resources,
            ..Default::default()
        }
        .encode_to_vec();
        let response = self
            .http
            .post(&self.snapshot_url)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .context("handing a snapshot to go-control-plane")?;
        let status = response.status();
        if status != reqwest::StatusCode::NO_CONTENT {
            let text = response.text().await.unwrap_or_default();
            bail!("go-control-plane answered the snapshot with {status}: {text}");
        }
        Ok(())
    }

    /// The program's memory now.
    pub fn memory(&self) -> Result<Memory> {
        let s = crate::procfs::sample(self.pid)?;
        Ok(Memory {
            rss_kib: s.rss_kib,
            peak_kib: s.hwm_kib,
            anon_kib: s.anon_kib,
        })
    }

    /// Kills the program and waits for it.
    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
