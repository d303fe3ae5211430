//! The xDS port's connections: HTTP/2 only, keepalive pings that drop clients which stopped
//! answering, and a maximum connection age with jitter.
//!
//! The age is what spreads long-lived streams across replicas again: after `age ± jitter`
//! (drawn per connection, so connections opened together by a restart storm do not all
//! leave together) the server sends GOAWAY; clients open a new connection, possibly to
//! another replica, for their next stream, and after `grace` the old connection is closed,
//! ending the streams still on it (their clients reconnect).
//!
//! Stopping drains ([`Drain`]): the listener closes at once, and each connection is sent
//! GOAWAY at a time drawn uniformly over the drain period and closed a short grace later, so
//! the clients of a stopping replica (of every replica, in a rolling restart) reconnect
//! spread over the period rather than all at once.
//!
//! tonic's own server has a fixed `max_connection_age` with no jitter, so the port serves
//! its routes here with hyper, as tonic does, adding each connection's
//! [`Connected::connect_info`] to its requests so `remote_addr` and `peer_certs` keep working.

use std::future::Future;
use std::pin::{Pin, pin};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tower::ServiceExt;

/// The HTTP/2 connection window (bytes) of the xDS port's connections.
const CONNECTION_WINDOW: u32 = 4 << 20;

/// How connections of the xDS port are kept and retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionPolicy {
    /// HTTP/2 PING every this long; `None`: no keepalive.
    pub keepalive_interval: Option<Duration>,
    /// A PING unanswered this long closes the connection.
    pub keepalive_timeout: Duration,
    /// GOAWAY after a maximum age; `None`: connections live as long as their clients want.
    pub max_age: Option<MaxAge>,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        Self {
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(20),
            max_age: Some(MaxAge::default()),
        }
    }
}

/// A connection's maximum age: GOAWAY after `age ± jitter`, closed `grace` later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge {
    pub age: Duration,
    pub jitter: Duration,
    pub grace: Duration,
}

impl Default for MaxAge {
    /// 30 minutes ± 3, then 30 s for the streams still open.
    fn default() -> Self {
        Self {
            age: Duration::from_secs(30 * 60),
            jitter: Duration::from_secs(3 * 60),
            grace: Duration::from_secs(30),
        }
    }
}

impl MaxAge {
    /// One connection's age: uniform in `age ± jitter` (never below zero).
    pub fn draw(&self, rng: &mut impl Rng) -> Duration {
        let jitter = self.jitter.as_secs_f64();
        let offset = if jitter > 0.0 {
            rng.random_range(-jitter..=jitter)
        } else {
            0.0
        };
        Duration::from_secs_f64((self.age.as_secs_f64() + offset).max(0.0))
    }
}

/// How the port stops: over `period`, each connection is sent GOAWAY at a moment drawn
/// uniformly in `[0, period − grace)` and closed `grace` later (`grace` is a tenth of the
/// period), ending the streams still on it; every connection is gone by the period's end.
///
/// The close, not the GOAWAY, is what moves a long-lived xDS stream (gRPC clients keep their
/// open streams on a connection that received GOAWAY), so it is the close that is spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub period: Duration,
}

impl Drain {
    /// One connection's wait before GOAWAY, and its grace after it.
    pub fn draw(&self, rng: &mut impl Rng) -> (Duration, Duration) {
        let grace = self.period / 10;
        let window = (self.period - grace).as_secs_f64();
        let at = if window > 0.0 {
            rng.random_range(0.0..window)
        } else {
            0.0
        };
        (Duration::from_secs_f64(at), grace)
    }
}

/// Serves `routes` on the connections from `incoming` until `signal` resolves; then stops
/// accepting and drains: with `drain`, GOAWAY spread over its period (see [`Drain`]); without,
/// every connection is sent GOAWAY at once and waited for, as tonic's
/// `serve_with_incoming_shutdown` does.
pub(crate) async fn serve<I, IO, IE>(
    routes: Routes,
    policy: ConnectionPolicy,
    drain: Option<Drain>,
    incoming: I,
    signal: impl Future,
) where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        // One connection may carry thousands of streams (ghz opens all of its -c on one).
        .max_concurrent_streams(None)
        // h2 closes a connection (ENHANCE_YOUR_CALM, "too_many_data_frames") when small DATA
        // frames not yet read add up past half the connection window. xDS requests are
        // small, and thousands of streams opening at once on one connection (a reconnect
        // storm, ghz -c 2000) each leave a few unread for a moment: the default 64 KiB
        // window allows about 300. This one allows tens of thousands, and bounds what one
        // connection's unread requests may hold.
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(policy.keepalive_interval)
        .keep_alive_timeout(policy.keepalive_timeout);
    let (stop, stopped) = watch::channel(None);
    let connections = TaskTracker::new();
    {
        let mut incoming = pin!(incoming);
        let mut signal = pin!(signal);
        loop {
            let io = tokio::select! {
                _ = &mut signal => break,
                next = incoming.next() => match next {
                    Some(Ok(io)) => io,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e.into(), "cannot accept an xDS connection");
                        continue;
                    }
                    None => break,
                },
            };
            let age = policy.max_age.map(|m| (m.draw(&mut rand::rng()), m.grace));
            connections.spawn(connection(
                io,
                routes.clone(),
                http2.clone(),
                age,
                stopped.clone(),
            ));
        }
    }
    // Every connection drains (GOAWAY, then its open streams end).
    tracing::info!(
        connections = connections.len(),
        period = ?drain.map(|d| d.period),
        "the xDS port stopped accepting; draining its connections"
    );
    let _ = stop.send(Some(drain));
    drop(stopped);
    connections.close();
    connections.wait().await;
}

/// What the server's stop tells its connections: `None` until it stops, then how to drain.
type Stop = Option<Option<Drain>>;

/// Serves one connection until it closes: GOAWAY at its age (then closed after the grace)
/// or when the server stops (at once, or at a drawn moment of the drain period).
async fn connection<IO>(
    io: IO,
    routes: Routes,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    age: Option<(Duration, Duration)>,
    mut stop: watch::Receiver<Stop>,
) where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let info = io.connect_info();
    // The routing future is boxed: hyper keeps each stream's task sized for it (inline,
    // hundreds of bytes holding the request) for the stream's whole life, while it is done
    // once the response's headers are out; boxed, it is freed then.
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(info.clone());
        Box::pin(routes.clone().oneshot(request.map(tonic::body::Body::new)))
    });
    let mut conn = pin!(http2.serve_connection(TokioIo::new(io), service));
    let mut aged: Option<Pin<Box<Sleep>>> = age.map(|(a, _)| Box::pin(tokio::time::sleep(a)));
    let mut closing: Option<Pin<Box<Sleep>>> = None;
    let mut grace = age.map(|(_, g)| g).unwrap_or_default();
    // The end of the drain period: the connection is closed whatever it still carries.
    let mut drained: Option<Pin<Box<Sleep>>> = None;
    let mut stopping = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "xDS connection ended with an error");
                }
                return;
            }
            () = until(&mut aged) => {
                aged = None;
                if stopping {
                    tracing::debug!(?grace, "draining an xDS connection: GOAWAY");
                } else {
                    tracing::debug!(?grace, "xDS connection reached its maximum age: GOAWAY");
                    crate::metrics::connection_aged();
                }
                conn.as_mut().graceful_shutdown();
                closing = Some(Box::pin(tokio::time::sleep(grace)));
            }
            () = until(&mut closing) => {
                tracing::debug!("closing an aged xDS connection with streams still open");
                return;
            }
            () = until(&mut drained) => {
                tracing::debug!("the drain period is over: closing an xDS connection");
                return;
            }
            changed = stop.changed(), if !stopping => {
                let plan = changed.ok().and_then(|()| *stop.borrow_and_update());
                stopping = true;
                match plan.flatten() {
                    Some(drain) => {
                        drained = Some(Box::pin(tokio::time::sleep(drain.period)));
                        // A connection already sent GOAWAY at its age keeps its own close.
                        if closing.is_none() {
                            let (at, g) = drain.draw(&mut rand::rng());
                            grace = g;
                            aged = Some(Box::pin(tokio::time::sleep(at)));
                        }
                    }
                    None => conn.as_mut().graceful_shutdown(),
                }
            }
        }
    }
}

/// Resolves when `deadline` passes; never without one.
async fn until(deadline: &mut Option<Pin<Box<Sleep>>>) {
    match deadline {
        Some(d) => d.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ages_spread_over_age_plus_or_minus_jitter() {
        let max = MaxAge {
            age: Duration::from_secs(100),
            jitter: Duration::from_secs(10),
            grace: Duration::from_secs(1),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ages: Vec<Duration> = (0..1000).map(|_| max.draw(&mut rng)).collect();
        assert!(
            ages.iter()
                .all(|a| *a >= Duration::from_secs(90) && *a <= Duration::from_secs(110))
        );
        // Spread, not one value: both halves of the range are used.
        assert!(ages.iter().any(|a| *a < Duration::from_secs(95)));
        assert!(ages.iter().any(|a| *a > Duration::from_secs(105)));
    }

    #[test]
    fn no_jitter_is_the_age_and_a_large_jitter_never_goes_below_zero() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let exact = MaxAge {
            age: Duration::from_secs(5),
            jitter: Duration::ZERO,
            grace: Duration::ZERO,
        };
        assert_eq!(exact.draw(&mut rng), Duration::from_secs(5));
        let wide = MaxAge {
            jitter: Duration::from_secs(50),
            ..exact
        };
        for _ in 0..100 {
            assert!(wide.draw(&mut rng) <= Duration::from_secs(55));
        }
    }

    #[test]
    fn a_drain_spreads_goaway_over_its_period_and_closes_within_it() {
        let drain = Drain {
            period: Duration::from_secs(20),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let draws: Vec<_> = (0..1000).map(|_| drain.draw(&mut rng)).collect();
        // Every connection is closed (GOAWAY plus grace) within the period.
        assert!(
            draws
                .iter()
                .all(|(at, grace)| *grace == Duration::from_secs(2)
                    && *at + *grace <= drain.period)
        );
        // Uniform: each tenth of the window gets a share, none gets them all.
        let mut tenths = [0usize; 10];
        for (at, _) in &draws {
            tenths[(at.as_secs_f64() / 1.8) as usize] += 1;
        }
        assert!(tenths.iter().all(|n| (50..=150).contains(n)), "{tenths:?}");
        let none = Drain {
            period: Duration::ZERO,
        };
        assert_eq!(none.draw(&mut rng), (Duration::ZERO, Duration::ZERO));
    }
}
