//! The request metrics of one HTTP listener, with their handles kept: looking a labelled
//! metric up in the recorder builds its key (a label list and owned strings) and hashes it,
//! which cost several allocations per request. A listener's requests almost always fall in
//! a handful of (route configuration, virtual host, cluster, status class) series, so the
//! handles of up to [`CACHED_SERIES`] of them are kept, compared by value; a series beyond
//! that is looked up each time, so memory stays bounded whatever the traffic.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use super::{ACTIVE_REQUESTS, REQUEST_DURATION_SECONDS, REQUESTS_TOTAL};

/// How many label combinations a listener keeps handles for.
pub(crate) const CACHED_SERIES: usize = 64;

/// The labels of one request's series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Series<'a> {
    pub(crate) route_config: &'a str,
    pub(crate) virtual_host: &'a str,
    pub(crate) cluster: &'a str,
    pub(crate) code_class: &'static str,
}

struct Cached {
    route_config: String,
    virtual_host: String,
    cluster: String,
    code_class: &'static str,
    requests: Counter,
    duration: Histogram,
}

impl Cached {
    fn is(&self, s: &Series<'_>) -> bool {
        self.code_class == s.code_class
            && self.cluster == s.cluster
            && self.virtual_host == s.virtual_host
            && self.route_config == s.route_config
    }
}

/// One listener's request metrics.
pub(crate) struct ListenerMeters {
    listener: String,
    active: Gauge,
    series: Mutex<Vec<Cached>>,
}

impl ListenerMeters {
    pub(crate) fn new(listener: &str) -> Self {
        Self {
            listener: listener.to_owned(),
            active: metrics::gauge!(ACTIVE_REQUESTS, "listener" => listener.to_owned()),
            series: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn listener(&self) -> &str {
        &self.listener
    }

    /// The listener's `active_requests` gauge.
    pub(crate) fn active(&self) -> &Gauge {
        &self.active
    }

    /// Counts one request of `series` that took `elapsed` to its response headers.
    pub(crate) fn record(&self, series: Series<'_>, elapsed: Duration) {
        let mut cache = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.iter().find(|c| c.is(&series)) {
            c.requests.increment(1);
            c.duration.record(elapsed.as_secs_f64());
            return;
        }
        let cached = Cached {
            requests: metrics::counter!(
                REQUESTS_TOTAL,
                "listener" => self.listener.clone(),
                "route_config" => series.route_config.to_owned(),
                "virtual_host" => series.virtual_host.to_owned(),
                "cluster" => series.cluster.to_owned(),
                "code_class" => series.code_class,
            ),
            duration: metrics::histogram!(
                REQUEST_DURATION_SECONDS,
                "listener" => self.listener.clone(),
                "cluster" => series.cluster.to_owned(),
            ),
            route_config: series.route_config.to_owned(),
            virtual_host: series.virtual_host.to_owned(),
            cluster: series.cluster.to_owned(),
            code_class: series.code_class,
        };
        cached.requests.increment(1);
        cached.duration.record(elapsed.as_secs_f64());
        if cache.len() < CACHED_SERIES {
            cache.push(cached);
        }
    }
}
