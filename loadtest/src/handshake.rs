//! A closed loop of new connections: each connection carries one request and is closed, so
//! every request pays for a TCP connect and, with a TLS client configuration, a full TLS
//! handshake (the configuration disables resumption). The handshake rate at a proxy's
//! mTLS port, and its cost, are what this measures; without TLS it gives the plaintext
//! baseline of the same loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::rt::{Read, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::load::{Errors, Failure, Outcome, Saturation, Target, histogram};

/// TLS towards the target: the client configuration and the SNI to send.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// `GET` over `io` with `Connection: close`; checks status and body length.
async fn request<T>(io: T, target: &Target) -> Result<(), Failure>
where
    T: Read + Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| Failure::Connect)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get(target.path.as_str())
        .header(header::HOST, target.host.as_str())
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|_| Failure::Io)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| Failure::Io)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| Failure::Io)?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(Failure::Status);
    }
    if body.len() != target.body_len {
        return Err(Failure::Body);
    }
    Ok(())
}

/// One new connection (TLS when `tls` is given; a failed handshake is a `Connect` failure)
/// with one request, within the target's timeout.
pub async fn one_request(target: &Target, tls: Option<&Tls>) -> Result<(), Failure> {
    let attempt = async {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|_| Failure::Connect)?;
        tcp.set_nodelay(true).map_err(|_| Failure::Connect)?;
        match tls {
            None => request(TokioIo::new(tcp), target).await,
            Some(tls) => {
                let stream = TlsConnector::from(Arc::clone(&tls.config))
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|_| Failure::Connect)?;
                request(TokioIo::new(stream), target).await
            }
        }
    };
    tokio::time::timeout(target.timeout, attempt)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

/// `shape.connections` tasks, each opening a new connection per request as soon as the
/// previous one is done; unrecorded for `shape.warmup`, then recorded for `shape.duration`.
/// `mark` is called when the recorded window starts and when it ends. Latency is connect +
/// handshake + request + response. Bounded by `warmup + duration` plus one timeout.
pub async fn closed_loop(
    target: &Target,
    tls: Option<Tls>,
    shape: Saturation,
    mut mark: impl FnMut(),
) -> Result<Outcome> {
    let window_start = Instant::now() + shape.warmup;
    let window_end = window_start + shape.duration;
    let mut tasks = JoinSet::new();
    for _ in 0..shape.connections.max(1) {
        let target = target.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let mut latency = histogram()?;
            let mut errors = Errors::default();
            let mut ok = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= window_end {
                    break;
                }
                let result = one_request(&target, tls.as_ref()).await;
                let done = Instant::now();
                let refused = result == Err(Failure::Connect);
                if sent >= window_start {
                    match result {
                        Ok(()) => {
                            let micros = u64::try_from((done - sent).as_micros())
                                .unwrap_or(u64::MAX)
                                .max(1);
                            latency.saturating_record(micros);
                            if done <= window_end {
                                ok += 1;
                            }
                        }
                        Err(f) => errors.add(f),
                    }
                }
                if refused {
                    // Do not spin on a target that refuses connections.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            anyhow::Ok((latency, ok, errors))
        });
    }
    tokio::time::sleep_until(window_start.into()).await;
    mark();
    tokio::time::sleep_until(window_end.into()).await;
    mark();
    let mut latency = histogram()?;
    let mut ok = 0;
    let mut errors = Errors::default();
    while let Some(t) = tasks.join_next().await {
        let (l, o, e) = t.context("a connection task panicked")??;
        latency.add(&l).context("merging histograms")?;
        ok += o;
        errors.connect += e.connect;
        errors.io += e.io;
        errors.status += e.status;
        errors.body += e.body;
        errors.timeout += e.timeout;
    }
    Ok(Outcome {
        latency,
        ok,
        errors,
        reconnects: 0,
        elapsed: shape.duration,
        pacer_lag: None,
    })
}
