//! nginx as a reverse proxy, for comparison: a master and `worker_processes` workers run as
//! the current user in the foreground (`-g 'daemon off;'`), every path (prefix, pid, logs,
//! temp files) inside a temporary directory. The configuration is the plain keep-alive
//! reverse proxy, over HTTP/1.1, h2c or gRPC (see [`config`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::control_plane::{send_term, spawn, terminate};
use crate::load::Protocol;
use crate::procfs;

/// The nginx to run: `NGINX_BIN`, else `nginx` on `PATH`, else `/usr/sbin/nginx` (where
/// Debian puts it, off a normal user's `PATH`).
pub fn binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NGINX_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("NGINX_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
        .context(
            "nginx is not installed: `apt-get install -y --no-install-recommends nginx-light` \
             (scripts/bench does), or set NGINX_BIN",
        )
}

/// `nginx -v`, e.g. `nginx/1.22.1`.
pub fn version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .and_then(|v| v.strip_prefix("nginx version: ").map(str::to_owned))
        .unwrap_or_else(|| "nginx (unknown version)".into())
}

/// The configuration: `listen` on 127.0.0.1, everything to one upstream with a pool of 64
/// idle keep-alive connections, no access log. Both keep-alive request limits are raised
/// from their default of 1,000 so that nginx, like switchboard-proxy, never closes a busy
/// connection (`keepalive_requests` also bounds HTTP/2 streams per connection since nginx
/// 1.19.7). By protocol:
/// - HTTP/1.1: `proxy_pass` over HTTP/1.1 (`Connection ""` so nginx does not ask the
///   backend to close);
/// - HTTP/2: `listen … http2` without TLS, which before nginx 1.25 is h2c with prior
///   knowledge only; upstream the same `proxy_pass` over HTTP/1.1, the only upstream
///   protocol nginx's proxy module speaks;
/// - gRPC: h2c downstream and `grpc_pass grpc://` upstream (HTTP/2, one call per upstream
///   connection at a time, the connections kept alive).
pub fn config(
    dir: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    workers: usize,
    protocol: Protocol,
) -> String {
    let d = dir.display();
    let (http2, pass) = match protocol {
        Protocol::Http1 | Protocol::Http2 => (
            if protocol == Protocol::Http2 {
                " http2"
            } else {
                ""
            },
            "proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";",
        ),
        Protocol::Grpc => (" http2", "grpc_pass grpc://backend;"),
    };
    format!(
        "worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server {backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen}{http2};
        location / {{
            {pass}
        }}
    }}
}}
"
    )
}

/// A running nginx. Stopped with SIGTERM to the master and its workers (by pid) when
/// stopped or dropped.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    pub master: u32,
    pub workers: Vec<u32>,
    pub addr: SocketAddr,
    pub version: String,
    dir: tempfile::TempDir,
    stopped: bool,
}

impl Nginx {
    /// Starts nginx in front of `backend` with `workers` worker processes on a free loopback
    /// port, speaking `protocol`, and waits until every worker runs and the port accepts
    /// connections.
    pub async fn start(backend: SocketAddr, workers: usize, protocol: Protocol) -> Result<Nginx> {
        let bin = binary()?;
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], switchboard_runtime::ports::try_free_port()?));
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), addr, backend, workers, protocol))?;
        let log = std::fs::File::create(dir.path().join("stderr.log"))?;
        let (child, master) = spawn(
            Command::new(&bin)
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(&conf)
                .arg("-g")
                .arg("daemon off;")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
            &bin,
            "nginx",
        )?;
        let mut nginx = Nginx {
            child,
            master,
            workers: Vec::new(),
            addr,
            version: version(&bin),
            dir,
            stopped: false,
        };
        if let Err(e) = nginx.wait_ready(workers, Duration::from_secs(10)).await {
            let log = nginx.log();
            nginx.stop().await;
            return Err(e.context(format!("nginx did not start; its log:\n{log}")));
        }
        Ok(nginx)
    }

    async fn wait_ready(&mut self, workers: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("nginx exited with {status}");
            }
            self.workers = procfs::children(self.master);
            if self.workers.len() >= workers
                && tokio::net::TcpStream::connect(self.addr).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {workers} workers running and port {} not open after {timeout:?}",
                    self.workers.len(),
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.master];
        pids.extend(&self.workers);
        pids
    }

    /// nginx's error log and standard error.
    pub fn log(&self) -> String {
        ["error.log", "stderr.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.path().join(f)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM (fast shutdown) to the master and the workers; SIGKILL to the master if it has
    /// not exited within 5 s.
    pub async fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pids = self.pids();
        terminate(&mut self.child, &pids, Duration::from_secs(5)).await;
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if !self.stopped {
            send_term(&self.pids());
        }
    }
}
