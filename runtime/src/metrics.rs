//! The Prometheus recorder's upkeep, for the binaries that install one.
//!
//! `metrics-exporter-prometheus` keeps every histogram sample in a bucket of raw values
//! until something drains them into the histogram's counts: a scrape (`render`) or
//! `PrometheusHandle::run_upkeep`. Its `install_recorder` leaves the upkeep to the caller,
//! so without it a process that nobody scrapes holds eight bytes for every sample it ever
//! recorded, one or more per request: memory that grows with traffic, not with
//! configuration.
//!
//! [`spawn_upkeep`] drains them every [`UPKEEP_PERIOD`], so what is held is at most a
//! period's samples.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// How often the samples are drained: a second's samples at most are held (about 240 KB at
/// 30,000 requests a second with one histogram per request). The exporter's own upkeep
/// task, which `install_recorder` does not start, waits 5 s.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(1);

/// Drains `handle`'s histogram samples into their buckets every [`UPKEEP_PERIOD`] on the
/// current tokio runtime, until the runtime stops or the task is aborted.
pub fn spawn_upkeep(handle: PrometheusHandle) -> JoinHandle<()> {
    tokio::spawn(every(UPKEEP_PERIOD, move || handle.run_upkeep()))
}

/// Calls `f` once every `period`, the first time one period from now. A late tick (a busy
/// runtime) is not made up for: the next one comes a period after it.
async fn every(period: Duration, mut f: impl FnMut()) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        f();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use metrics::Recorder;
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn runs_once_a_period_and_not_before() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let task = tokio::spawn(every(Duration::from_secs(1), move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "ran before its first period"
        );
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "one run per period");
        task.abort();
    }

    /// The upkeep drains samples into the histogram's buckets without losing any: what a
    /// scrape shows afterwards is every sample recorded, before and after an upkeep.
    #[tokio::test(start_paused = true)]
    async fn upkeep_keeps_every_sample_in_the_buckets() {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.1, 1.0])
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let key = metrics::Key::from_name("upkeep_test_seconds");
        let meta = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
        let histogram = recorder.register_histogram(&key, &meta);
        let task = spawn_upkeep(handle.clone());
        for _ in 0..10 {
            histogram.record(0.05);
        }
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        histogram.record(0.5);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let text = handle.render();
        assert!(
            text.contains("upkeep_test_seconds_bucket{le=\"0.1\"} 10"),
            "{text}"
        );
        assert!(text.contains("upkeep_test_seconds_count 11"), "{text}");
        task.abort();
    }
}
