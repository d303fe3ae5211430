//! The benchmark backend: a hyper 1 server on 127.0.0.1 that answers every request with 200
//! and the same body, run as its own process ([`BackendProcess`]) so that its CPU time is not
//! the load generator's. Each connection speaks HTTP/1.1 or HTTP/2 (h2c with prior
//! knowledge), told apart by its first bytes (hyper-util's `auto` server), so a proxy may
//! pool either. A request with `content-type: application/grpc` is a call of the benchmark's
//! gRPC method ([`crate::grpc`]): its message must be well framed, and the answer is the
//! body's length in one framed message with the trailer `grpc-status: 0` (`3` for a
//! malformed request).
//!
//! The process is the calling binary itself, started again with the arguments
//! `backend --threads N --body-bytes N`: [`run`] is that subcommand. It binds a free port,
//! prints `listening <address>` on standard output, and serves until its standard input
//! closes (its parent is gone) or an hour has passed. It counts the connections it accepts,
//! so a benchmark can tell how many upstream connections a proxy opened.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::future::{Ready, ready};
use std::io::Read;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, Command};

/// The longest a backend process lives, whatever happens to its parent.
const MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// The path that answers, instead of the body, how many connections the backend has accepted
/// other than those that asked this (each on a connection of its own).
pub const CONNECTIONS_PATH: &str = "/__bench/connections";

/// A gRPC answer: one framed message, then the trailers.
type GrpcBody = WithTrailers<Full<Bytes>, Ready<Option<Result<HeaderMap, Infallible>>>>;
type Reply = Response<Either<Full<Bytes>, GrpcBody>>;

/// What every connection answers with.
struct Answers {
    /// The plain body.
    body: Bytes,
    /// The plain body's length as one gRPC message, framed.
    grpc_message: Bytes,
    accepted: AtomicU64,
    asked: AtomicU64,
}

impl Answers {
    async fn answer(&self, request: Request<Incoming>) -> Reply {
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| {
                v.as_bytes()
                    .starts_with(crate::grpc::CONTENT_TYPE.as_bytes())
            });
        if grpc {
            return self.answer_grpc(request).await;
        }
        let body = if request.uri().path() == CONNECTIONS_PATH {
            let asked = self.asked.fetch_add(1, Ordering::Relaxed) + 1;
            let others = self.accepted.load(Ordering::Relaxed).saturating_sub(asked);
            Bytes::from(others.to_string())
        } else {
            self.body.clone()
        };
        let mut response = Response::new(Either::Left(Full::new(body)));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    }

    /// Reads the whole request (a proxy still sending it must not see it reset), checks its
    /// framing and answers the message with `grpc-status: 0`, or no message with `3`.
    async fn answer_grpc(&self, request: Request<Incoming>) -> Reply {
        let well_framed = match request.into_body().collect().await {
            Ok(body) => crate::grpc::message_len(&body.to_bytes()).is_some(),
            Err(_) => false,
        };
        let (message, status) = if well_framed {
            (self.grpc_message.clone(), crate::grpc::OK)
        } else {
            (Bytes::new(), crate::grpc::INVALID_ARGUMENT)
        };
        let mut trailers = HeaderMap::new();
        trailers.insert(crate::grpc::STATUS, HeaderValue::from_static(status));
        let body = Full::new(message).with_trailers(ready(Some(Ok(trailers))));
        let mut response = Response::new(Either::Right(body));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::grpc::CONTENT_TYPE),
        );
        response
    }
}

/// Serves `body` to every request on every connection `listener` accepts, forever (HTTP/1.1
/// or h2c, and the gRPC method); and the number of connections accepted at
/// [`CONNECTIONS_PATH`].
pub async fn serve(listener: TcpListener, body: Bytes) {
    let answers = Arc::new(Answers {
        grpc_message: crate::grpc::frame(body.len(), b'x'),
        body,
        accepted: AtomicU64::new(0),
        asked: AtomicU64::new(0),
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, say: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        answers.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let answers = Arc::clone(&answers);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let answers = Arc::clone(&answers);
                async move { Ok::<_, Infallible>(answers.answer(request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What the `backend` subcommand takes.
#[derive(Debug, Clone, Copy)]
pub struct BackendArgs {
    pub threads: usize,
    pub body_bytes: usize,
}

impl BackendArgs {
    fn to_args(self) -> Vec<String> {
        vec![
            "backend".into(),
            "--threads".into(),
            self.threads.to_string(),
            "--body-bytes".into(),
            self.body_bytes.to_string(),
        ]
    }

    /// Parses the arguments after `backend`.
    pub fn parse(args: &[String]) -> Result<BackendArgs> {
        let mut parsed = BackendArgs {
            threads: 1,
            body_bytes: 1024,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let n: usize = value
                .parse()
                .with_context(|| format!("{flag} {value:?}: expected a whole number"))?;
            match flag.as_str() {
                "--threads" => parsed.threads = n.max(1),
                "--body-bytes" => parsed.body_bytes = n,
                _ => bail!("unknown backend flag {flag}; expected --threads or --body-bytes"),
            }
        }
        Ok(parsed)
    }
}

/// The `backend` subcommand: builds its own runtime of `threads` workers and serves.
pub fn run(args: BackendArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .context("building the backend's runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1:0")?;
        announce(listener.local_addr()?)?;
        serve(listener, Bytes::from(vec![b'x'; args.body_bytes])).await;
        Ok(())
    })
}

/// The child's side of [`ChildServer`]: prints `listening <addr>` for the parent, then ends
/// this process when its standard input closes (the parent is gone) or after
/// [`MAX_LIFETIME`], whatever the serving threads are doing.
pub(crate) fn announce(addr: SocketAddr) -> Result<()> {
    println!("listening {addr}");
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(|| {
            // Standard input reaches EOF (or fails) when the parent is gone.
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            std::process::exit(0);
        })
        .context("starting the stdin thread")?;
    std::thread::Builder::new()
        .name("lifetime".into())
        .spawn(|| {
            std::thread::sleep(MAX_LIFETIME);
            std::process::exit(0);
        })
        .context("starting the lifetime thread")?;
    Ok(())
}

/// A child process that is this executable started again as one of its subcommands, which
/// prints `listening <address>` and serves until its standard input closes; killed when
/// dropped. The backend and the relay are run this way.
#[derive(Debug)]
pub(crate) struct ChildServer {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    /// Held open: the child exits when it closes.
    _stdin: ChildStdin,
}

impl ChildServer {
    /// Starts this executable with `args` and waits for the address it listens on; `what`
    /// names it in errors.
    pub async fn start(args: &[String], what: &str) -> Result<ChildServer> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = Command::new(&exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} {what}", exe.display()))?;
        let pid = child
            .id()
            .with_context(|| format!("the {what} exited at once"))?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .with_context(|| format!("the {what} did not print its address within 10 s"))??;
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("the {what} printed {line:?}, not `listening <address>`"))?;
        Ok(ChildServer {
            child,
            pid,
            addr,
            _stdin: stdin,
        })
    }

    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// A backend child process, killed when dropped.
#[derive(Debug)]
pub struct BackendProcess {
    process: ChildServer,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl BackendProcess {
    /// Starts this executable again as `backend` and waits for the address it listens on.
    pub async fn start(args: BackendArgs) -> Result<BackendProcess> {
        let process = ChildServer::start(&args.to_args(), "backend").await?;
        Ok(BackendProcess {
            pid: process.pid,
            addr: process.addr,
            process,
        })
    }

    /// How many connections the backend has accepted, not counting those that asked this.
    pub async fn connections(&self) -> Result<u64> {
        let body = crate::load::get(self.addr, CONNECTIONS_PATH).await?;
        let n: u64 = std::str::from_utf8(&body)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .with_context(|| format!("{CONNECTIONS_PATH} answered {body:?}"))?;
        Ok(n)
    }

    pub async fn stop(&mut self) {
        self.process.stop().await;
    }
}
