//! The state-of-the-world xDS protocol, per stream: pure, no IO, no clock.
//!
//! [`StreamState`] follows Envoy's `xds_protocol` document:
//! - the node comes with the first request and is remembered (later requests may omit it, and
//!   may not change it);
//! - each resource type has its own subscription, `version_info` and nonce;
//! - a request that carries the nonce of the latest response of its type is an ACK, or a NACK
//!   when it has `error_detail`; one with an older nonce is stale: it neither ACKs nor NACKs,
//!   but its `resource_names` are still applied;
//! - an empty `resource_names` on the first request of a type (legacy wildcard) or an explicit
//!   `*` subscribes to everything the node may see; other names subscribe to those names, and
//!   a later request without a name unsubscribes;
//! - Listener and Cluster responses carry the full state of the subscription (a missing
//!   resource is deleted); RouteConfiguration and ClusterLoadAssignment responses carry only
//!   what changed or was newly asked for;
//! - updates go out make-before-break: clusters, endpoints, listeners, routes
//!   ([`ResourceType::PUSH_ORDER`]), and a Listener or Cluster response that only removes goes
//!   out after every addition ([`ResourceType::REMOVAL_ORDER`]); a cluster that disappears
//!   while other types still have updates to send is kept in the CDS response until they are
//!   out, then removed.
//!
//! What to send is computed from the current [`Resources`] when the stream is ready to write
//! ([`StreamState::next_response`]), never queued per change, so a slow client skips
//! intermediate states. The stream remembers what it sent (shared `Arc`s, never copies): a
//! NACKed version is not sent again until the resources change.
//!
//! [`delta::DeltaState`] is the incremental variant of the same protocol, over the same
//! [`Resources`].

pub mod delta;
#[cfg(test)]
mod delta_tests;
mod subscription;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use switchboard_translator::XdsResource;
use switchboard_xds_proto::{DiscoveryRequest, Node, ResourceType};

use crate::node::{NodeError, NodeId};
use crate::wire::SotwResponse;
use subscription::TypeState;

/// The most resource names one request may list per type.
pub const MAX_RESOURCE_NAMES: usize = 10_000;

/// The explicit wildcard resource name.
pub const WILDCARD: &str = "*";

/// Unknown type URLs remembered per stream (each is answered once); more are only logged.
const MAX_UNKNOWN_TYPES: usize = 16;

/// The resources a node may receive, as the stream's engine sees them right now.
pub trait Resources {
    /// The mesh revision these resources were built from (reported with ACKs).
    fn revision(&self) -> i64;
    /// The resource of type `t` named `name`, if it exists and this node may see it.
    fn get(&self, t: ResourceType, name: &str) -> Option<&Arc<XdsResource>>;
    /// Everything of type `t` a wildcard subscription of this node receives.
    fn wildcard(&self, t: ResourceType) -> Box<dyn Iterator<Item = &Arc<XdsResource>> + '_>;
    /// Whether `name` of type `t` does not exist yet but is on its way (a `default`
    /// certificate being issued): the delta protocol then does not answer it as missing.
    fn pending(&self, _t: ResourceType, _name: &str) -> bool {
        false
    }
}

/// What a stream subscribes to, whichever variant of the protocol it speaks.
pub trait Subscriptions {
    /// The subscription of type `t`: (wildcard, explicitly named resources); `None` if the
    /// client never asked for `t`.
    fn subscription(&self, t: ResourceType) -> Option<(bool, Vec<String>)>;
}

/// Per-stream limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests listing more names than this end the stream with INVALID_ARGUMENT.
    pub max_resource_names: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_resource_names: MAX_RESOURCE_NAMES,
        }
    }
}

/// A request the stream cannot go on from; the server ends the stream with
/// INVALID_ARGUMENT and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(
        "node.id changed from {first:?} to {now:?} on one stream: open a new stream for \
         another node"
    )]
    NodeChanged { first: String, now: String },
    #[error(
        "the request for {type_url} lists {count} resource names, more than the {max} allowed \
         per request: subscribe with the wildcard (\"*\") or split the names across fewer \
         resources"
    )]
    TooManyNames {
        type_url: String,
        count: usize,
        max: usize,
    },
    #[error(
        "the request has no type_url: on an aggregated (ADS) stream every request must name its resource type"
    )]
    MissingTypeUrl,
    #[error(
        "this {service} stream serves only {expected}, not {actual:?}: use the aggregated \
         discovery service (ADS) for several types on one stream"
    )]
    WrongType {
        service: &'static str,
        expected: &'static str,
        actual: String,
    },
}

/// The client accepted the latest response of a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub rtype: ResourceType,
    /// The `version_info` of the accepted response.
    pub version: String,
    pub nonce: String,
    /// The mesh revision the accepted response was built from.
    pub revision: i64,
}

/// The client rejected the latest response of a type and keeps what it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub rtype: ResourceType,
    /// The `version_info` of the rejected response.
    pub version: String,
    pub nonce: String,
    /// The mesh revision the rejected response was built from.
    pub revision: i64,
    /// The version the client says it still runs (the request's `version_info`).
    pub kept_version: String,
    /// `error_detail.message`.
    pub message: String,
    /// `error_detail.code`.
    pub code: i32,
    /// The resources the rejected response carried.
    pub names: Vec<String>,
}

/// What a request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// A request for a type Switchboard serves.
    Known {
        rtype: ResourceType,
        /// The first request of this type on the stream.
        first: bool,
        ack: Option<Ack>,
        nack: Option<Nack>,
        /// It carried a nonce other than the latest of its type: no ACK/NACK was taken from it.
        stale: bool,
    },
    /// A type URL Switchboard does not serve; it is answered once with an empty response.
    Unknown { type_url: String, first: bool },
}

/// Which step of a make-before-break update a response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Adds or changes resources (and may keep removed clusters/listeners a little longer).
    Update,
    /// Only removes Listeners or Clusters, after every addition went out.
    Removal,
}

/// A response to send, and what the client holds once it accepts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// `None` for the empty answer to an unknown type URL.
    pub rtype: Option<ResourceType>,
    /// The response, holding the resources as the snapshot's `Arc`s.
    pub response: SotwResponse,
    /// The mesh revision the response was built from.
    pub revision: i64,
    /// Every resource of this type the client holds once it accepts the response (for
    /// status reporting: "what this proxy is being sent").
    pub state: Vec<Arc<XdsResource>>,
    pub phase: Phase,
}

/// The node of a stream: set by its first request, never changed after.
#[derive(Debug, Default)]
pub(crate) struct NodeSlot {
    /// Shared with the stream's status entry (a node can be kilobytes of metadata).
    node: Option<Arc<Node>>,
    id: Option<NodeId>,
}

impl NodeSlot {
    pub(crate) fn node(&self) -> Option<&Node> {
        self.node.as_deref()
    }

    pub(crate) fn shared(&self) -> Option<Arc<Node>> {
        self.node.clone()
    }

    pub(crate) fn id(&self) -> Option<&NodeId> {
        self.id.as_ref()
    }

    /// Takes the node of a request: required on the first, optional (but the same) after.
    pub(crate) fn check(&mut self, incoming: Option<&Node>) -> Result<(), ProtocolError> {
        match (&self.id, incoming) {
            (None, None) => Err(NodeError::Missing.into()),
            (None, Some(node)) if node.id.is_empty() => Err(NodeError::Missing.into()),
            (None, Some(node)) => {
                self.id = Some(NodeId::parse(&node.id)?);
                self.node = Some(Arc::new(node.clone()));
                Ok(())
            }
            (Some(first), Some(node)) if !node.id.is_empty() && node.id != first.to_string() => {
                Err(ProtocolError::NodeChanged {
                    first: first.to_string(),
                    now: node.id.chars().take(300).collect(),
                })
            }
            (Some(_), _) => Ok(()),
        }
    }
}

/// The type URL a request is for: its own, or the service's on a single-type stream (where
/// it may be left empty, and must not name another type).
pub(crate) fn resolve_type(
    only: Option<ResourceType>,
    type_url: &str,
) -> Result<&str, ProtocolError> {
    match (type_url, only) {
        ("", Some(t)) => Ok(t.type_url()),
        ("", None) => Err(ProtocolError::MissingTypeUrl),
        (url, Some(t)) if url != t.type_url() => Err(ProtocolError::WrongType {
            service: t.short_name(),
            expected: t.type_url(),
            actual: url.to_owned(),
        }),
        (url, _) => Ok(url),
    }
}

/// One stream's protocol state.
#[derive(Debug)]
pub struct StreamState {
    /// Set for the single-type services (LDS, RDS, CDS, EDS); `None` for ADS.
    only: Option<ResourceType>,
    limits: Limits,
    node: NodeSlot,
    /// Boxed: a map node has room for 11 entries, a stream has at most 5 types.
    types: BTreeMap<ResourceType, Box<TypeState>>,
    /// Unknown type URLs seen, and whether their empty answer is still to be sent.
    unknown: BTreeMap<String, bool>,
    nonce: u64,
}

impl StreamState {
    /// A stream of the aggregated service (every type).
    pub fn aggregated(limits: Limits) -> Self {
        Self::new(None, limits)
    }

    /// A stream of a single-type service (LDS, RDS, CDS, EDS or SDS).
    pub fn single(rtype: ResourceType, limits: Limits) -> Self {
        Self::new(Some(rtype), limits)
    }

    fn new(only: Option<ResourceType>, limits: Limits) -> Self {
        Self {
            only,
            limits,
            node: NodeSlot::default(),
            types: BTreeMap::new(),
            unknown: BTreeMap::new(),
            nonce: 0,
        }
    }

    /// The node from the first request.
    pub fn node(&self) -> Option<&Node> {
        self.node.node()
    }

    /// The node from the first request, shared.
    pub fn shared_node(&self) -> Option<Arc<Node>> {
        self.node.shared()
    }

    /// The parsed node id from the first request.
    pub fn node_id(&self) -> Option<&NodeId> {
        self.node.id.as_ref()
    }

    /// The subscription of type `t`: (wildcard, explicitly named resources); `None` if the
    /// client never asked for `t`.
    pub fn subscription(&self, t: ResourceType) -> Option<(bool, Vec<String>)> {
        self.types.get(&t).map(|s| s.subscription())
    }

    /// The types the client has asked for, in push order.
    pub fn requested_types(&self) -> impl Iterator<Item = ResourceType> + '_ {
        self.types.keys().copied()
    }

    /// Takes in one request. An error ends the stream (INVALID_ARGUMENT); nothing else does.
    pub fn handle(&mut self, req: &DiscoveryRequest) -> Result<Handled, ProtocolError> {
        self.node.check(req.node.as_ref())?;
        let type_url = resolve_type(self.only, &req.type_url)?;
        if req.resource_names.len() > self.limits.max_resource_names {
            return Err(ProtocolError::TooManyNames {
                type_url: type_url.to_owned(),
                count: req.resource_names.len(),
                max: self.limits.max_resource_names,
            });
        }
        let Some(rtype) = ResourceType::from_type_url(type_url) else {
            let first = !self.unknown.contains_key(type_url);
            if first && self.unknown.len() < MAX_UNKNOWN_TYPES {
                self.unknown.insert(type_url.to_owned(), true);
            }
            return Ok(Handled::Unknown {
                type_url: type_url.to_owned(),
                first,
            });
        };
        let first = !self.types.contains_key(&rtype);
        let state = self
            .types
            .entry(rtype)
            .or_insert_with(|| Box::new(TypeState::new(rtype)));
        let (ack, nack, stale) = state.apply(req);
        Ok(Handled::Known {
            rtype,
            first,
            ack,
            nack,
            stale,
        })
    }

    /// The next response to send given what the node may see now, or `None` when the client
    /// is up to date. Call it when the stream can write, and again until it returns `None`.
    pub fn next_response(&mut self, view: &dyn Resources) -> Option<Outgoing> {
        if let Some(type_url) = self
            .unknown
            .iter()
            .find(|(_, pending)| **pending)
            .map(|(url, _)| url.clone())
        {
            self.unknown.insert(type_url.clone(), false);
            let nonce = self.next_nonce();
            return Some(Outgoing {
                rtype: None,
                response: SotwResponse {
                    type_url,
                    nonce,
                    ..Default::default()
                },
                revision: view.revision(),
                state: Vec::new(),
                phase: Phase::Update,
            });
        }
        let mut plans = Vec::new();
        for t in ResourceType::PUSH_ORDER {
            if let Some(state) = self.types.get_mut(&t) {
                plans.push((t, state.plan(view)));
            }
        }
        // Additions and changes first, in push order; a removal of a Cluster or Listener
        // waits while a later type still has something to send.
        if let Some(i) = plans.iter().position(|(_, p)| p.has_update()) {
            let keep_removed = plans[i + 1..].iter().any(|(_, p)| p.has_update());
            let (t, plan) = plans.swap_remove(i);
            let nonce = self.next_nonce();
            let state = self.types.get_mut(&t)?;
            return Some(state.emit_update(plan, keep_removed, nonce, view.revision()));
        }
        for t in ResourceType::REMOVAL_ORDER {
            if let Some(i) = plans.iter().position(|(pt, p)| *pt == t && p.has_removal()) {
                let (_, plan) = plans.swap_remove(i);
                let nonce = self.next_nonce();
                let state = self.types.get_mut(&t)?;
                return Some(state.emit_removal(plan, nonce, view.revision()));
            }
        }
        None
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }
}

impl Subscriptions for StreamState {
    fn subscription(&self, t: ResourceType) -> Option<(bool, Vec<String>)> {
        StreamState::subscription(self, t)
    }
}
