//! Sidecar self-registration: a connected sidecar registers itself as an endpoint of its
//! service, and leaves when its stream has been gone for a grace period.
//!
//! When a stream of a sidecar (node metadata `role: sidecar`) is admitted with a proxy token,
//! the stream tells the `Registrar`; when the stream ends, the guard it holds says so.
//! Anonymous streams never write to the store. One task per replica owns all the state and
//! does all the store work, so a stream's own path never waits on the database:
//!
//! - **Register**: the endpoint `sidecar-{node}` ([`endpoint_name`]) of the sidecar's service,
//!   at metadata `address` or else the stream's peer IP, port `inbound_port`, weight 1, the
//!   node's locality. It is written through the REST API's validation (`Spec::parse`,
//!   `validate`, references), and not at all when the stored endpoint already has that spec:
//!   a reconnect does not bump the revision. A missing service is logged and retried when
//!   the service is created, or every [`RETRY`].
//! - **Deregister**: when a node has no stream left on this replica, its endpoint is deleted
//!   after the grace period, unless the node came back here, or holds a stream on another
//!   replica (the `proxies` table every replica keeps current), and only with `If-Match` the
//!   etag this replica wrote or found: an endpoint a user has replaced since is left alone.
//! - **Healing**: the task reads the change log of tenants with registered sidecars; when a
//!   connected sidecar's endpoint is deleted (by a user, or by another replica whose grace
//!   period ended just as the node moved here), it is written again.
//! - **Sweeping**: a registered endpoint names its node (`spec.node`). Every replica
//!   periodically lists them and deletes, with `If-Match`, those whose node has had no live
//!   stream on any replica, nor a grace period running here, for the grace period (and at
//!   least four status syncs, so a new stream's `proxies` row has had time to appear).
//!
//! A replica that stops simply stops: its sidecars reconnect elsewhere within the grace
//! period, and nothing is deleted at shutdown. An endpoint whose grace period was running
//! on a replica that stopped is swept by the others.
//!
//! Layout, so that every decision can be tested without a database or a clock:
//! - `endpoint`: the endpoint's name and spec ([`Desired`]); pure.
//! - `registrar`: the streams' side, `Registrar` and the guard whose drop ends a stream.
//! - `machine`: the state machine, `step(input, now) -> action`; no IO, no clock.
//! - `task`: the task that feeds it events and performs its actions against the store.
//!
//! Metrics: `switchboard_sidecar_registrations_total{tenant}` (endpoints written) and
//! `switchboard_sidecar_deregistrations_total{tenant}` (endpoints deleted).

use std::time::Duration;

mod endpoint;
mod machine;
mod registrar;
mod task;

pub use endpoint::{Desired, DesiredError, ENDPOINT_PREFIX, endpoint_name};
pub(crate) use registrar::{Registered, Registrar};
pub(crate) use task::run;

/// How often an endpoint whose service does not exist is tried again (also tried as soon as
/// the service is created).
pub const RETRY: Duration = Duration::from_secs(30);

/// The default grace period (setting `sidecar_grace_period`).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Events taken, and nodes worked on, per round of the task.
const BATCH: usize = 256;

/// Parses a grace period as every Switchboard duration is written (`30s`, `1m30s`, `500ms`).
pub fn parse_grace_period(text: &str) -> Result<Duration, String> {
    switchboard_model::duration::parse(text).map(|d| d.as_std())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods_parse_like_every_duration() {
        assert_eq!(parse_grace_period("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_grace_period("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_grace_period("200ms"), Ok(Duration::from_millis(200)));
        assert!(
            parse_grace_period("30")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
