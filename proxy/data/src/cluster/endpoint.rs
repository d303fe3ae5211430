//! One endpoint as the cluster state sees it: its counters ([`HostState`]), a request's hold
//! on it ([`Picked`]), and where a cluster's endpoints come from ([`EndpointSource`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use switchboard_proxy_xds::Snapshot;
use switchboard_proxy_xds::config::cluster::{Cluster, Discovery};
use switchboard_proxy_xds::config::endpoint::LoadAssignment;

/// Whatever owns a cluster's endpoints: an EDS [`LoadAssignment`], or a [`Cluster`] with
/// static ones.
pub trait EndpointSource: Send + Sync + std::fmt::Debug + 'static {
    fn load_assignment(&self) -> Option<&LoadAssignment>;
}

impl EndpointSource for LoadAssignment {
    fn load_assignment(&self) -> Option<&LoadAssignment> {
        Some(self)
    }
}

impl EndpointSource for Cluster {
    fn load_assignment(&self) -> Option<&LoadAssignment> {
        match &self.discovery {
            Discovery::Static(la) => Some(la),
            Discovery::Eds { .. } => None,
        }
    }
}

/// The endpoints of `cluster` in `snapshot`: its own for a static cluster, else its EDS
/// load assignment (`None` until that arrives).
pub(crate) fn endpoint_source(
    snapshot: &Snapshot,
    cluster: &Arc<Cluster>,
) -> Option<Arc<dyn EndpointSource>> {
    match &cluster.discovery {
        Discovery::Static(_) => Some(cluster.clone()),
        Discovery::Eds { service_name } => snapshot
            .endpoints
            .get(service_name)
            .map(|la| la.clone() as Arc<dyn EndpointSource>),
    }
}

/// A chosen endpoint; dropping it ends the request for least-request accounting.
#[derive(Debug)]
pub struct Picked {
    pub address: SocketAddr,
    pub(crate) host: Arc<HostState>,
}

impl Drop for Picked {
    fn drop(&mut self) {
        let _ = self
            .host
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// Counters of one endpoint address.
#[derive(Debug)]
pub(crate) struct HostState {
    pub(crate) address: SocketAddr,
    pub(crate) active: AtomicU64,
    pub(crate) total: AtomicU64,
    /// 5xx responses, connect failures, resets and timeouts.
    pub(crate) failures: AtomicU64,
    pub(super) consecutive_failures: AtomicU32,
}

impl HostState {
    pub(super) fn new(address: SocketAddr) -> Self {
        Self {
            address,
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
        }
    }
}

/// One endpoint as `/clusters` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HostStats {
    pub(crate) active: u64,
    pub(crate) total: u64,
    pub(crate) failures: u64,
    pub(crate) ejected_until: Option<Instant>,
    pub(crate) times_ejected: u32,
}
