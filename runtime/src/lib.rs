//! What Switchboard's binaries, background tasks and tests share about running on tokio.
//!
//! - [`shutdown_signal`]: the one way a binary learns it should stop (SIGTERM or Ctrl-C).
//! - [`Backoff`]: exponential reconnect and retry delays, capped, optionally jittered, used by
//!   every loop that retries a store, a listener or an xDS server.
//! - [`eventually`] (feature `testing`): polls a condition until it holds or fails the test,
//!   on tokio's clock, so it also works under a paused clock.
//! - [`leaks`] (feature `testing`): the suite's scan of its logs for secrets.
//! - [`ports`] (feature `testing`): free loopback ports, never the same one twice.
//! - [`collector`] (feature `otlp-collector`): an OTLP trace collector for tests.
//! - [`otel`]: OpenTelemetry span context carried across tasks, W3C `traceparent`, and
//!   (feature `otlp`) the OTLP/gRPC exporter layer.
//! - [`metrics`] (feature `prometheus`): the Prometheus recorder's upkeep, without which
//!   histogram samples pile up until a scrape.

use std::time::Duration;

#[cfg(feature = "otlp-collector")]
pub mod collector;
#[cfg(feature = "testing")]
pub mod leaks;
#[cfg(feature = "prometheus")]
pub mod metrics;
pub mod otel;
#[cfg(feature = "testing")]
pub mod ports;

/// Resolves on SIGTERM or SIGINT (Ctrl-C) and says which, for the log line that follows.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}

/// Exponential backoff: `initial * 2^attempt`, capped at `max`; with jitter, each delay is
/// multiplied by a random factor in [0.5, 1] so that clients that lost the same server do not
/// come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: bool,
    attempt: u32,
}

impl Backoff {
    /// A backoff without jitter, for a single retrying task (nothing to de-synchronize).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            jitter: false,
            attempt: 0,
        }
    }

    /// The same, with each delay scaled by a random factor in [0.5, 1].
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The delay before the next attempt; each call doubles the next one, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// The delay for attempt `n` (0-based), without moving the sequence.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max);
        if self.jitter {
            use rand::Rng;
            exp.mul_f64(rand::rng().random_range(0.5..=1.0))
        } else {
            exp
        }
    }

    /// Starts over from `initial`, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Polls `check` every 10 ms until it gives a value, and fails the test (panics) with `what`
/// after `patience`. Uses tokio's clock, so under `start_paused` it costs no wall time.
#[cfg(feature = "testing")]
pub async fn eventually_within<T, F, Fut>(patience: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually_within`] with the tests' usual patience of 15 s: long enough for a loaded CI
/// machine, and only ever reached by a failing test.
#[cfg(feature = "testing")]
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(Duration::from_secs(15), what, check).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let got: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.delay(50), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_half_to_whole() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_jitter();
        for _ in 0..100 {
            let first = b.delay(0);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = b.delay(2);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(b.delay(50) <= Duration::from_secs(1));
        }
    }
}

/// One documented metric: its name, Prometheus type, labels and meaning. Each crate that
/// records metrics lists its own in a `METRICS` table of these; the server turns them into
/// HELP lines and the README's table, so the docs are the code's.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    pub name: &'static str,
    pub kind: &'static str,
    pub labels: &'static str,
    pub help: &'static str,
}
