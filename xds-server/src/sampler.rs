//! Gauges sampled from the store every [`SAMPLE_INTERVAL`], for alerts that must fire when
//! nothing happens: this replica's heartbeat and the replicas it sees
//! (`switchboard_replicas`, `switchboard_replica_heartbeat_age_seconds`), whether the store
//! answers (`switchboard_store_up`), and how far this replica's loaded meshes are behind the
//! store's newest revisions (`switchboard_xds_changelog_lag_*`): a lost notice or a stuck
//! rebuild shows there, which no event counter would.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_store::{ReplicaRow, Store, StoreError};

use crate::cache::SnapshotCache;
use crate::metrics;

/// How often the gauges are sampled and the heartbeat written.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// A replica whose heartbeat is older than this is counted missing (three samples).
pub const MISSING_AFTER: Duration = Duration::from_secs(15);

/// At most this many tenants behind get their lag in seconds read per sample (one read each).
const LAG_READS: usize = 50;

/// The sampling task: runs until dropped. Every store call is bounded by the interval.
pub(crate) async fn sample(store: Store, cache: SnapshotCache, replica: String) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let up = match tokio::time::timeout(SAMPLE_INTERVAL, heartbeat(&store, &replica)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot write this replica's heartbeat; will retry");
                false
            }
            Err(_) => {
                tracing::warn!("the store did not take this replica's heartbeat in time");
                false
            }
        };
        metrics::store_up(up);
        if !up {
            continue;
        }
        match tokio::time::timeout(SAMPLE_INTERVAL, lag(&store, &cache)).await {
            Ok(Ok((revisions, seconds))) => metrics::changelog_lag(revisions, seconds),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the store's revisions"),
            Err(_) => tracing::warn!("the store did not give its revisions in time"),
        }
    }
}

/// Removes this replica from the store's list, so that the others do not count a replica
/// that stopped as missing. Bounded: a store that does not answer leaves the row, which is
/// then counted missing until forgotten.
pub(crate) async fn remove(store: &Store, replica: &str) {
    match tokio::time::timeout(Duration::from_secs(2), store.remove_replica(replica)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove this replica's heartbeat"),
        Err(_) => tracing::warn!("the store did not remove this replica's heartbeat in time"),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn heartbeat(store: &Store, replica: &str) -> Result<(), StoreError> {
    let now = now_ms();
    let rows = store.replica_heartbeat(replica, now).await?;
    let (live, missing, oldest) = replica_states(&rows, now);
    metrics::replicas(live, missing, oldest.as_secs_f64());
    Ok(())
}

/// Live and missing replicas among `rows` at `now`, and the oldest heartbeat's age.
fn replica_states(rows: &[ReplicaRow], now: i64) -> (usize, usize, Duration) {
    let ages: Vec<Duration> = rows
        .iter()
        .map(|r| Duration::from_millis(u64::try_from(now - r.heartbeat).unwrap_or(0)))
        .collect();
    let live = ages.iter().filter(|a| **a <= MISSING_AFTER).count();
    let oldest = ages.iter().max().copied().unwrap_or_default();
    (live, ages.len() - live, oldest)
}

/// The worst tenant's lag: revisions behind the store, and seconds since the oldest commit
/// not applied. A tenant counts from the least current of its loaded meshes (meshes still on
/// their first load are left out: they read the newest revision).
async fn lag(store: &Store, cache: &SnapshotCache) -> Result<(i64, f64), StoreError> {
    let mut floors: BTreeMap<String, i64> = BTreeMap::new();
    for (tenant, _) in cache.loaded_meshes() {
        if floors.contains_key(&tenant) {
            continue;
        }
        let ready = cache.loaded(&tenant).into_iter().map(|(_, c)| c);
        if let Some(floor) = ready.filter(|c| *c > 0).min() {
            floors.insert(tenant, floor);
        }
    }
    let tenants: Vec<String> = floors.keys().cloned().collect();
    let mut behind: Vec<(i64, String, i64)> = store
        .tenant_revisions(&tenants)
        .await?
        .into_iter()
        .filter_map(|(tenant, newest)| {
            let floor = *floors.get(&tenant)?;
            (newest > floor).then_some((newest - floor, tenant, floor))
        })
        .collect();
    behind.sort_by_key(|b| std::cmp::Reverse(b.0));
    let revisions = behind.first().map_or(0, |b| b.0);
    let now = now_ms();
    let mut seconds = 0.0f64;
    for (_, tenant, floor) in behind.iter().take(LAG_READS) {
        if let Some(first) = store.first_commit_after(tenant, *floor).await? {
            seconds = seconds.max((now - first).max(0) as f64 / 1000.0);
        }
    }
    Ok((revisions, seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, heartbeat: i64) -> ReplicaRow {
        ReplicaRow {
            id: id.to_owned(),
            started: 0,
            heartbeat,
        }
    }

    #[test]
    fn replicas_are_live_or_missing_by_heartbeat_age() {
        let now = 100_000;
        let rows = [
            row("a", now),
            row("b", now - 15_000),
            row("c", now - 40_000),
        ];
        assert_eq!(replica_states(&rows, now), (2, 1, Duration::from_secs(40)));
        // A heartbeat ahead of this replica's clock is no age at all.
        assert_eq!(
            replica_states(&[row("a", now + 3_000)], now),
            (1, 0, Duration::ZERO)
        );
        assert_eq!(replica_states(&[], now), (0, 0, Duration::ZERO));
    }
}
