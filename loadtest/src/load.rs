//! A load generator over keep-alive connections (hyper 1 client connections), in two shapes,
//! each driving a number of *lanes* that send one request at a time: over HTTP/1.1 a lane is
//! a connection of its own; over HTTP/2 (h2c) and gRPC ([`crate::h2load`]) the lanes share
//! [`Target::h2_connections`] connections, one stream each.
//!
//! - [`fixed_rate`]: an open loop. A pacer thread releases request `i` at its intended time
//!   `t0 + i / rate` into a queue that every connection takes from when it is idle. Latency is
//!   measured from the intended time, so a slow response delays the requests queued behind it
//!   and that wait is counted (no coordinated omission). The pacer's own lateness is recorded
//!   too: it is the floor of what this client can measure.
//! - [`saturation`]: a closed loop. Each lane sends its next request as soon as the
//!   previous response has been read; latency is measured from the actual send.
//!
//! Every response must be a 200 whose body has the expected length (gRPC: one well-framed
//! message of that length and `grpc-status: 0`); anything else is counted as an error of its
//! kind, never silently dropped. A connection the server closed gracefully (as nginx does
//! after `keepalive_requests`) is reopened before the next request and counted as a
//! reconnect, not an error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use crate::h2load;
pub use crate::target::{Failure, Protocol, Target};

/// The open loop: `rate` requests per second over `connections` lanes (HTTP/1.1:
/// connections; HTTP/2: streams over the target's connections), unrecorded for `warmup`,
/// then recorded for `duration`.
#[derive(Debug, Clone, Copy)]
pub struct FixedRate {
    pub rate: u32,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// The closed loop: `connections` lanes, so as many requests in flight (HTTP/2: streams
/// over the target's connections), unrecorded for `warmup`, then recorded for `duration`.
#[derive(Debug, Clone, Copy)]
pub struct Saturation {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Failed requests by kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Errors {
    pub connect: u64,
    pub io: u64,
    pub status: u64,
    pub body: u64,
    pub grpc: u64,
    pub timeout: u64,
}

impl Errors {
    pub fn add(&mut self, f: Failure) {
        match f {
            Failure::Connect => self.connect += 1,
            Failure::Io => self.io += 1,
            Failure::Status => self.status += 1,
            Failure::Body => self.body += 1,
            Failure::Grpc => self.grpc += 1,
            Failure::Timeout => self.timeout += 1,
        }
    }

    fn merge(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.io += o.io;
        self.status += o.status;
        self.body += o.body;
        self.grpc += o.grpc;
        self.timeout += o.timeout;
    }

    pub fn total(&self) -> u64 {
        self.connect + self.io + self.status + self.body + self.grpc + self.timeout
    }

    /// `0`, or the total with its kinds, e.g. `3 (io 2, timeout 1)`.
    pub fn describe(&self) -> String {
        if self.total() == 0 {
            return "0".into();
        }
        let kinds: Vec<String> = [
            ("connect", self.connect),
            ("io", self.io),
            ("status", self.status),
            ("body", self.body),
            ("grpc", self.grpc),
            ("timeout", self.timeout),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
        format!("{} ({})", self.total(), kinds.join(", "))
    }
}

/// What one phase measured. Latencies are in microseconds.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub latency: Histogram<u64>,
    /// Good responses counted towards the rate.
    pub ok: u64,
    pub errors: Errors,
    pub reconnects: u64,
    /// The recorded window: from its start to the last response (fixed rate) or to its end
    /// (saturation).
    pub elapsed: Duration,
    /// Fixed rate only: how late the pacer released each request, in microseconds.
    pub pacer_lag: Option<Histogram<u64>>,
}

impl Outcome {
    /// Good responses per second of the recorded window.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// A percentile of the latency, in milliseconds.
    pub fn ms(&self, percentile: f64) -> f64 {
        self.latency.value_at_quantile(percentile / 100.0) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating a latency histogram")
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// One keep-alive HTTP/1.1 connection, reopened when the server closed it or a request
/// failed (counted in [`Connection::reconnects`]). The load's lanes drive it; proxy-bench's
/// `connections` target holds many of them open.
#[derive(Default)]
pub struct Connection {
    sender: Option<SendRequest<Empty<Bytes>>>,
    reconnects: u64,
    opened: bool,
}

impl Connection {
    /// How many times the connection was reopened after its first request.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    async fn open(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, Failure> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|_| Failure::Connect)?;
        tcp.set_nodelay(true).map_err(|_| Failure::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A sender ready for a request: the current one if the server kept it open, else a new
    /// connection.
    async fn ready(&mut self, addr: SocketAddr) -> Result<&mut SendRequest<Empty<Bytes>>, Failure> {
        if let Some(mut s) = self.sender.take()
            && s.ready().await.is_ok()
        {
            return Ok(self.sender.insert(s));
        }
        if self.opened {
            self.reconnects += 1;
        }
        let s = Connection::open(addr).await?;
        self.opened = true;
        Ok(self.sender.insert(s))
    }

    async fn get(&mut self, target: &Target) -> Result<(), Failure> {
        let request = Request::get(target.path.as_str())
            .header(header::HOST, target.host.as_str())
            .body(Empty::new())
            .map_err(|_| Failure::Io)?;
        let sender = self.ready(target.addr).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| Failure::Io)?;
        crate::target::check_response(response, target).await
    }

    /// One GET within the target's timeout, answered as the target expects. After a failure
    /// the connection is dropped: its state is unknown.
    pub async fn request(&mut self, target: &Target) -> Result<(), Failure> {
        let result = match tokio::time::timeout(target.timeout, self.get(target)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// One request at a time: over HTTP/1.1 on a connection of its own, over HTTP/2 on a
/// stream of a shared connection.
pub(crate) enum Lane {
    H1(Connection),
    H2(h2load::Lane),
}

/// The lanes of one phase (`n` of them; over HTTP/2 spread evenly over the target's
/// connections), and the HTTP/2 connections they share.
pub(crate) fn lanes(target: &Target, n: usize) -> Result<(Vec<Lane>, Vec<Arc<h2load::Shared>>)> {
    if target.protocol == Protocol::Http1 {
        return Ok((
            (0..n).map(|_| Lane::H1(Connection::default())).collect(),
            Vec::new(),
        ));
    }
    let shared: Vec<_> = (0..target.h2_connections.clamp(1, n.max(1)))
        .map(|_| h2load::Shared::new(target.addr))
        .collect();
    let lanes = (0..n)
        .map(|i| {
            h2load::Lane::new(Arc::clone(&shared[i % shared.len()]), target)
                .map(Lane::H2)
                .with_context(|| format!("the request URI of {}", target.host))
        })
        .collect::<Result<_>>()?;
    Ok((lanes, shared))
}

impl Lane {
    /// Opens the lane's connection if it has none.
    pub(crate) async fn ready(&mut self, target: &Target) -> Result<(), Failure> {
        match self {
            Lane::H1(c) => c.ready(target.addr).await.map(|_| ()),
            Lane::H2(l) => l.ready().await.map(|_| ()),
        }
    }

    /// One request within the target's timeout. After a failure the lane drops its
    /// connection (HTTP/2: its handle on the shared one): its state is unknown.
    pub(crate) async fn request(&mut self, target: &Target) -> Result<(), Failure> {
        match self {
            Lane::H1(c) => c.request(target).await,
            Lane::H2(l) => {
                let result = match tokio::time::timeout(target.timeout, l.request(target)).await {
                    Ok(r) => r,
                    Err(_) => Err(Failure::Timeout),
                };
                if result.is_err() {
                    l.reset();
                }
                result
            }
        }
    }

    /// HTTP/1.1: the connections the server closed and this lane reopened (HTTP/2 counts
    /// them per shared connection).
    pub(crate) fn reconnects(&self) -> u64 {
        match self {
            Lane::H1(c) => c.reconnects,
            Lane::H2(_) => 0,
        }
    }
}

/// The body of a 200 answer to `GET path` on a fresh connection to `addr`, within 5 s.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Bytes> {
    let fetch = async {
        let mut sender = Connection::open(addr)
            .await
            .map_err(|f| anyhow::anyhow!("connecting: {f:?}"))?;
        let request = Request::get(path)
            .header(header::HOST, addr.to_string())
            .body(Empty::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status == StatusCode::OK, "{status}");
        Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

/// One request on a fresh connection: checks that `target` answers as a load run expects.
pub async fn probe(target: &Target) -> Result<(), Failure> {
    let Ok((mut lanes, _)) = lanes(target, 1) else {
        return Err(Failure::Io);
    };
    match lanes.first_mut() {
        Some(lane) => lane.request(target).await,
        None => Err(Failure::Io),
    }
}

/// What one connection task recorded.
pub(crate) struct Tally {
    pub(crate) latency: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: Errors,
    pub(crate) reconnects: u64,
    /// Fixed rate: when its last recorded response arrived.
    pub(crate) last: Option<Instant>,
}

impl Tally {
    pub(crate) fn new() -> Result<Tally> {
        Ok(Tally {
            latency: histogram()?,
            ok: 0,
            errors: Errors::default(),
            reconnects: 0,
            last: None,
        })
    }

    pub(crate) fn record(&mut self, result: Result<(), Failure>, latency: Duration) {
        match result {
            Ok(()) => {
                self.ok += 1;
                // Saturating: a value past the histogram's range counts as its maximum.
                self.latency.saturating_record(micros(latency));
            }
            Err(f) => self.errors.add(f),
        }
    }
}

/// The tallies of a phase's lanes, with the reconnects of its HTTP/2 connections.
pub(crate) async fn merge(
    mut tasks: JoinSet<Result<Tally>>,
    shared: &[Arc<h2load::Shared>],
) -> Result<Tally> {
    let mut total = Tally::new()?;
    total.reconnects = shared.iter().map(|s| s.reconnects()).sum();
    while let Some(t) = tasks.join_next().await {
        let t = t.context("a load task panicked")??;
        total
            .latency
            .add(&t.latency)
            .context("merging histograms")?;
        total.ok += t.ok;
        total.errors.merge(&t.errors);
        total.reconnects += t.reconnects;
        total.last = total.last.max(t.last);
    }
    Ok(total)
}

/// A request the pacer released: whether it is in the recorded window, and its intended
/// send time.
pub(crate) struct Ticket {
    pub(crate) recorded: bool,
    pub(crate) intended: Instant,
}

/// `n` lanes to `target`, connected: an open loop opens its connections before its pacer
/// starts, so that no window measures handshakes.
pub(crate) async fn connected_lanes(
    target: &Target,
    n: usize,
) -> Result<(Vec<Lane>, Vec<Arc<h2load::Shared>>)> {
    let (mut connections, shared) = lanes(target, n.max(1))?;
    for c in &mut connections {
        c.ready(target)
            .await
            .map_err(|f| anyhow::anyhow!("connecting to {}: {f:?}", target.addr))?;
    }
    Ok((connections, shared))
}

/// An open loop's lanes at work: each takes the next ticket from one queue when it is idle
/// and sends its request, unless `cutoff` has passed (then the request is counted as timed
/// out, unsent). They stop once the pacer drops the queue's sender and it is empty.
pub(crate) fn take_tickets(
    connections: Vec<Lane>,
    target: &Target,
    cutoff: Instant,
) -> (mpsc::UnboundedSender<Ticket>, JoinSet<Result<Tally>>) {
    let (tx, rx) = mpsc::unbounded_channel::<Ticket>();
    let rx = Arc::new(Mutex::new(rx));
    let mut tasks = JoinSet::new();
    for mut conn in connections {
        let rx = Arc::clone(&rx);
        let target = target.clone();
        tasks.spawn(async move {
            let mut tally = Tally::new()?;
            loop {
                let ticket = rx.lock().await.recv().await;
                let Some(ticket) = ticket else { break };
                let result = if Instant::now() > cutoff {
                    Err(Failure::Timeout)
                } else {
                    conn.request(&target).await
                };
                let done = Instant::now();
                if ticket.recorded {
                    tally.record(result, done.saturating_duration_since(ticket.intended));
                    tally.last = Some(done);
                }
            }
            tally.reconnects = conn.reconnects();
            Ok(tally)
        });
    }
    (tx, tasks)
}

/// The open loop (see the module doc). `mark` is called when the recorded window starts and
/// once its last response has arrived (to sample processes' CPU time there). Bounded: every
/// request is released by `warmup + duration`; one still queued a timeout after that is
/// counted as timed out without being sent.
pub async fn fixed_rate(
    target: &Target,
    shape: FixedRate,
    mut mark: impl FnMut(),
) -> Result<Outcome> {
    let rate = u64::from(shape.rate.max(1));
    let period = Duration::from_secs(1) / u32::try_from(rate)?;
    let warm = shape.warmup.as_secs_f64() * rate as f64;
    let warm = warm.round() as u64;
    let measured = (shape.duration.as_secs_f64() * rate as f64).round() as u64;
    let total = warm + measured;

    // Open the connections first, so the first second does not measure handshakes.
    let (connections, shared) = connected_lanes(target, shape.connections).await?;
    let t0 = Instant::now() + Duration::from_millis(20);
    // A request whose turn comes after this is not sent but counted as timed out, so a
    // target that stalls cannot stretch the phase beyond this plus one timeout.
    let cutoff = t0 + shape.warmup + shape.duration + target.timeout;
    let (tx, tasks) = take_tickets(connections, target, cutoff);

    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || -> Result<Histogram<u64>> {
            let mut lag = histogram()?;
            for index in 0..total {
                let intended = t0 + period * u32::try_from(index)?;
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                if index >= warm {
                    lag.saturating_record(micros(
                        Instant::now().saturating_duration_since(intended),
                    ));
                }
                let recorded = index >= warm;
                if tx.send(Ticket { recorded, intended }).is_err() {
                    break;
                }
            }
            Ok(lag)
        })
        .context("starting the pacer thread")?;

    let window_start = t0 + period * u32::try_from(warm)?;
    tokio::time::sleep_until(window_start.into()).await;
    mark();
    let tally = merge(tasks, &shared).await?;
    mark();
    let lag = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))??;
    Ok(Outcome {
        latency: tally.latency,
        ok: tally.ok,
        errors: tally.errors,
        reconnects: tally.reconnects,
        elapsed: tally.last.map_or(Duration::ZERO, |l| {
            l.saturating_duration_since(window_start)
        }),
        pacer_lag: Some(lag),
    })
}

/// The closed loop (see the module doc). `mark` is called when the recorded window starts
/// and when it ends. Requests started in the window are recorded; a response counts towards
/// the rate if it arrived in the window. Bounded by `warmup + duration` plus one timeout.
pub async fn saturation(
    target: &Target,
    shape: Saturation,
    mut mark: impl FnMut(),
) -> Result<Outcome> {
    let start = Instant::now();
    let window_start = start + shape.warmup;
    let window_end = window_start + shape.duration;
    let mut tasks = JoinSet::new();
    let (connections, shared) = lanes(target, shape.connections.max(1))?;
    for mut conn in connections {
        let target = target.clone();
        tasks.spawn(async move {
            let mut tally = Tally::new()?;
            let mut in_window = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= window_end {
                    break;
                }
                let result = conn.request(&target).await;
                let done = Instant::now();
                let refused = result == Err(Failure::Connect);
                if sent >= window_start {
                    let ok = result.is_ok();
                    tally.record(result, done - sent);
                    if ok && done <= window_end {
                        in_window += 1;
                    }
                }
                if refused {
                    // Do not spin on a target that refuses connections.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            tally.ok = in_window;
            tally.reconnects = conn.reconnects();
            Ok(tally)
        });
    }
    tokio::time::sleep_until(window_start.into()).await;
    mark();
    tokio::time::sleep_until(window_end.into()).await;
    mark();
    let tally = merge(tasks, &shared).await?;
    Ok(Outcome {
        latency: tally.latency,
        ok: tally.ok,
        errors: tally.errors,
        reconnects: tally.reconnects,
        elapsed: shape.duration,
        pacer_lag: None,
    })
}
