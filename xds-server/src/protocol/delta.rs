//! The incremental ("delta") xDS protocol, per stream: pure, no IO, no clock.
//!
//! [`DeltaState`] follows the incremental variant of Envoy's `xds_protocol` document, beside
//! the state-of-the-world [`StreamState`](super::StreamState) and over the same
//! [`Resources`]:
//! - the node comes with the first request and may not change (as in SotW);
//! - per type, `resource_names_subscribe` adds names and `resource_names_unsubscribe` drops
//!   them (the client forgets what it unsubscribed; nothing is sent for it). The first request
//!   of a type that subscribes to nothing is the legacy wildcard, which ends when the client
//!   first subscribes to names; `*` subscribes to the wildcard explicitly and unsubscribing `*`
//!   ends it. A name unsubscribed while the wildcard still covers it is sent again (the client
//!   dropped it);
//! - a response carries only what changed for the subscription: resources with their own
//!   `version` (the [`XdsResource`] version), and in `removed_resources` the names the client
//!   holds that no longer exist, and subscribed names that do not exist (answered once, as
//!   Envoy expects, unless [`Resources::pending`] says they are on their way);
//! - `initial_resource_versions` on the first request of a type (a reconnect) says what the
//!   client still holds: a resource at that version is not sent again, one that no longer
//!   exists is listed in `removed_resources`;
//! - a request with the nonce of the latest response of its type ACKs it, or NACKs it when it
//!   has `error_detail` (the client keeps its versions: what it rejected is not sent again
//!   until it changes); another nonce is stale (no ACK/NACK; subscription changes still apply);
//! - make-before-break as in SotW: additions and changes in [`ResourceType::PUSH_ORDER`]; a
//!   type's removals wait while a later type still has additions, then go out in
//!   [`ResourceType::REMOVAL_ORDER`];
//! - the first request of each type is always answered, even with nothing (a reconnect whose
//!   resources are all current), so the client knows its view of the type is complete.
//!
//! The stream holds `Arc`s of what it sent, never copies, and computes what to send when it can
//! write ([`DeltaState::next_response`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use switchboard_translator::XdsResource;
use switchboard_xds_proto::{DeltaDiscoveryRequest, Node, ResourceType};

use super::subscription::{Held, digest, same};
use crate::wire::DeltaResponse;

use super::{
    Ack, Handled, Limits, Nack, NodeSlot, Phase, ProtocolError, Resources, Subscriptions, WILDCARD,
    resolve_type,
};
use crate::node::NodeId;

/// Unknown type URLs remembered per stream (each is answered once).
const MAX_UNKNOWN_TYPES: usize = 16;

/// A delta request the stream cannot go on from; the server ends the stream with
/// INVALID_ARGUMENT and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(
        "the request for {type_url} lists {count} names in {field}, more than the {max} \
         allowed per request: subscribe with the wildcard (\"*\") or split the names across \
         several requests"
    )]
    TooManyNames {
        type_url: String,
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error(
        "the subscription to {type_url} would name {count} resources, more than the {max} \
         allowed per stream: subscribe with the wildcard (\"*\") or unsubscribe names first"
    )]
    SubscriptionTooLarge {
        type_url: String,
        count: usize,
        max: usize,
    },
    #[error(
        "resource_locators_subscribe and resource_locators_unsubscribe (xdstp:// dynamic \
         parameters) are not supported: subscribe by name with resource_names_subscribe"
    )]
    Locators,
}

/// A delta response to send, and what the client holds once it accepts it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaOutgoing {
    /// `None` for the empty answer to an unknown type URL.
    pub rtype: Option<ResourceType>,
    pub type_url: String,
    pub nonce: String,
    /// A digest of every resource of the type the client holds once it accepts this.
    pub system_version_info: String,
    /// New or changed resources.
    pub resources: Vec<Arc<XdsResource>>,
    /// Names the client must drop, or that do not exist.
    pub removed: Vec<String>,
    /// The mesh revision the response was built from.
    pub revision: i64,
    /// Every resource of this type the client holds once it accepts the response.
    pub state: Vec<Arc<XdsResource>>,
    pub phase: Phase,
}

impl DeltaOutgoing {
    /// The response on the wire. Every delta response is built here, so how resources are
    /// encoded can change in one place.
    pub fn response(&self) -> DeltaResponse {
        DeltaResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self.resources.clone(),
            type_url: self.type_url.clone(),
            removed_resources: self.removed.clone(),
            nonce: self.nonce.clone(),
        }
    }
}

/// The latest response of a type.
#[derive(Debug, Clone)]
struct Last {
    nonce: String,
    version: String,
    revision: i64,
    /// The names it carried or removed (for a NACK's report).
    names: Vec<String>,
}

/// One type on one delta stream.
#[derive(Debug)]
struct DeltaType {
    rtype: ResourceType,
    /// Subscribed to everything the node may see.
    wildcard: bool,
    /// The wildcard came from an empty first request; it ends when names are subscribed.
    legacy: bool,
    /// Explicitly subscribed names (without `*`).
    names: BTreeSet<String>,
    /// Answer even if nothing changed: the first request.
    force: bool,
    /// Subscribed names not answered yet (by the resource, or as missing).
    pending: BTreeSet<String>,
    /// What the client holds if it accepted every response.
    held: BTreeSet<Held>,
    /// `initial_resource_versions` not yet compared with the resources.
    claimed: BTreeMap<String, String>,
    /// Claimed names that no longer exist: to be removed.
    gone: BTreeSet<String>,
    last: Option<Last>,
}

/// What a type has to send, computed against the current resources.
struct Plan<'v> {
    /// New or changed resources.
    changed: Vec<&'v Arc<XdsResource>>,
    /// Subscribed names never answered that do not exist.
    missing: Vec<String>,
    /// Names the client holds that no longer exist (or are no longer visible).
    removed: Vec<String>,
    force: bool,
}

impl Plan<'_> {
    fn has_update(&self) -> bool {
        self.force || !self.changed.is_empty() || !self.missing.is_empty()
    }

    fn has_removal(&self) -> bool {
        !self.removed.is_empty()
    }
}

impl DeltaType {
    fn new(rtype: ResourceType) -> Self {
        Self {
            rtype,
            wildcard: false,
            legacy: false,
            names: BTreeSet::new(),
            force: true,
            pending: BTreeSet::new(),
            held: BTreeSet::new(),
            claimed: BTreeMap::new(),
            gone: BTreeSet::new(),
            last: None,
        }
    }

    /// The ACK or NACK a request's nonce makes, or whether it is stale.
    fn answer(&self, req: &DeltaDiscoveryRequest) -> (Option<Ack>, Option<Nack>, bool) {
        if req.response_nonce.is_empty() {
            return (None, None, false);
        }
        match &self.last {
            Some(last) if last.nonce == req.response_nonce => match &req.error_detail {
                Some(error) => (
                    None,
                    Some(Nack {
                        rtype: self.rtype,
                        version: last.version.clone(),
                        nonce: last.nonce.clone(),
                        revision: last.revision,
                        kept_version: String::new(),
                        message: error.message.clone(),
                        code: error.code,
                        names: last.names.clone(),
                    }),
                    false,
                ),
                None => (
                    Some(Ack {
                        rtype: self.rtype,
                        version: last.version.clone(),
                        nonce: last.nonce.clone(),
                        revision: last.revision,
                    }),
                    None,
                    false,
                ),
            },
            _ => (None, None, true),
        }
    }

    /// Applies the subscription changes of a request (`first`: the type's first request).
    fn subscribe(&mut self, req: &DeltaDiscoveryRequest, first: bool) {
        if first {
            if req.resource_names_subscribe.is_empty() {
                self.wildcard = true;
                self.legacy = true;
            }
            for (name, version) in &req.initial_resource_versions {
                self.claimed.insert(name.clone(), version.clone());
            }
        }
        let mut dropped = false;
        if !first && self.legacy && !req.resource_names_subscribe.is_empty() {
            // Subscribing to names ends the legacy wildcard (unless `*` is among them).
            self.legacy = false;
            self.wildcard = false;
            dropped = true;
        }
        for name in &req.resource_names_subscribe {
            if name == WILDCARD {
                self.wildcard = true;
                self.legacy = false;
            } else if self.names.insert(name.clone()) && !self.held.contains(name.as_str()) {
                self.pending.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
                self.legacy = false;
                dropped = true;
            } else if self.names.remove(name.as_str()) {
                // The client forgets it; if the wildcard still covers it, it is sent again.
                self.held.remove(name.as_str());
                self.pending.remove(name.as_str());
            }
        }
        if dropped {
            // What only the wildcard covered is forgotten, as an unsubscribed name is.
            let (wildcard, names) = (self.wildcard, &self.names);
            self.held
                .retain(|h| wildcard || names.contains(h.0.name.as_str()));
        }
        let (wildcard, names) = (self.wildcard, &self.names);
        self.claimed
            .retain(|name, _| wildcard || names.contains(name.as_str()));
        self.gone
            .retain(|name| wildcard || names.contains(name.as_str()));
    }

    /// What to send now. Settles the client's claimed versions against the resources first.
    fn plan<'v>(&mut self, view: &'v dyn Resources) -> Plan<'v> {
        let mut desired: BTreeMap<&'v str, &'v Arc<XdsResource>> = BTreeMap::new();
        if self.wildcard {
            for r in view.wildcard(self.rtype) {
                desired.insert(r.name.as_str(), r);
            }
        }
        for name in &self.names {
            if let Some(r) = view.get(self.rtype, name) {
                desired.insert(r.name.as_str(), r);
            }
        }
        for (name, version) in std::mem::take(&mut self.claimed) {
            match desired.get(name.as_str()) {
                Some(r) if r.version == version => {
                    self.held.insert(Held(Arc::clone(r)));
                }
                // Another version: not held, so it is sent.
                Some(_) => {}
                None if view.pending(self.rtype, &name) => {}
                None => {
                    self.pending.remove(name.as_str());
                    self.gone.insert(name);
                }
            }
        }
        // A subscribed name that exists needs no other answer than the resource itself.
        self.pending.retain(|n| !desired.contains_key(n.as_str()));
        let changed = desired
            .iter()
            .filter(|(name, r)| self.held.get(**name).is_none_or(|h| !same(&h.0, r)))
            .map(|(_, r)| *r)
            .collect();
        let missing = self
            .pending
            .iter()
            .filter(|n| !desired.contains_key(n.as_str()) && !view.pending(self.rtype, n))
            .cloned()
            .collect();
        let mut removed: BTreeSet<String> = self
            .held
            .iter()
            .filter(|h| !desired.contains_key(h.0.name.as_str()))
            .filter(|h| !view.pending(self.rtype, &h.0.name))
            .map(|h| h.0.name.clone())
            .collect();
        removed.extend(self.gone.iter().cloned());
        Plan {
            changed,
            missing,
            removed: removed.into_iter().collect(),
            force: self.force,
        }
    }

    /// Sends additions, changes and missing names; removals too unless `keep_removed` (a
    /// later type still has additions that may stop referring to them).
    fn emit_update(
        &mut self,
        plan: Plan<'_>,
        keep_removed: bool,
        nonce: String,
        revision: i64,
    ) -> DeltaOutgoing {
        let sent: Vec<Arc<XdsResource>> = plan.changed.iter().map(|r| Arc::clone(r)).collect();
        for r in &sent {
            self.held.replace(Held(Arc::clone(r)));
        }
        for name in &plan.missing {
            self.pending.remove(name.as_str());
        }
        for r in &sent {
            self.pending.remove(r.name.as_str());
        }
        let mut removed = plan.missing;
        if !keep_removed {
            self.drop_removed(&plan.removed);
            removed.extend(plan.removed);
        }
        self.respond(sent, removed, nonce, revision, Phase::Update)
    }

    /// Sends only the removals.
    fn emit_removal(&mut self, plan: Plan<'_>, nonce: String, revision: i64) -> DeltaOutgoing {
        self.drop_removed(&plan.removed);
        self.respond(Vec::new(), plan.removed, nonce, revision, Phase::Removal)
    }

    fn drop_removed(&mut self, removed: &[String]) {
        for name in removed {
            self.held.remove(name.as_str());
            self.gone.remove(name.as_str());
        }
    }

    fn respond(
        &mut self,
        sent: Vec<Arc<XdsResource>>,
        removed: Vec<String>,
        nonce: String,
        revision: i64,
        phase: Phase,
    ) -> DeltaOutgoing {
        self.force = false;
        let version = digest(self.held.iter().map(|h| &h.0));
        let mut names: Vec<String> = sent.iter().map(|r| r.name.clone()).collect();
        names.extend(removed.iter().cloned());
        self.last = Some(Last {
            nonce: nonce.clone(),
            version: version.clone(),
            revision,
            names,
        });
        DeltaOutgoing {
            rtype: Some(self.rtype),
            type_url: self.rtype.type_url().to_owned(),
            nonce,
            system_version_info: version,
            resources: sent,
            removed,
            revision,
            state: self.held.iter().map(|h| Arc::clone(&h.0)).collect(),
            phase,
        }
    }
}

/// One delta stream's protocol state.
#[derive(Debug)]
pub struct DeltaState {
    /// Set for the single-type services; `None` for ADS.
    only: Option<ResourceType>,
    limits: Limits,
    node: NodeSlot,
    types: BTreeMap<ResourceType, DeltaType>,
    /// Unknown type URLs seen, and whether their empty answer is still to be sent.
    unknown: BTreeMap<String, bool>,
    nonce: u64,
}

impl DeltaState {
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
        self.node.id()
    }

    /// Takes in one request. An error ends the stream (INVALID_ARGUMENT); nothing else does.
    pub fn handle(&mut self, req: &DeltaDiscoveryRequest) -> Result<Handled, DeltaError> {
        self.node.check(req.node.as_ref())?;
        let type_url = resolve_type(self.only, &req.type_url)?;
        if !req.resource_locators_subscribe.is_empty()
            || !req.resource_locators_unsubscribe.is_empty()
        {
            return Err(DeltaError::Locators);
        }
        let max = self.limits.max_resource_names;
        for (field, count) in [
            (
                "resource_names_subscribe",
                req.resource_names_subscribe.len(),
            ),
            (
                "resource_names_unsubscribe",
                req.resource_names_unsubscribe.len(),
            ),
            (
                "initial_resource_versions",
                req.initial_resource_versions.len(),
            ),
        ] {
            if count > max {
                return Err(DeltaError::TooManyNames {
                    type_url: type_url.to_owned(),
                    field,
                    count,
                    max,
                });
            }
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
            .or_insert_with(|| DeltaType::new(rtype));
        let (ack, nack, stale) = state.answer(req);
        state.subscribe(req, first);
        if state.names.len() > max {
            return Err(DeltaError::SubscriptionTooLarge {
                type_url: type_url.to_owned(),
                count: state.names.len(),
                max,
            });
        }
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
    pub fn next_response(&mut self, view: &dyn Resources) -> Option<DeltaOutgoing> {
        if let Some(type_url) = self
            .unknown
            .iter()
            .find(|(_, pending)| **pending)
            .map(|(url, _)| url.clone())
        {
            self.unknown.insert(type_url.clone(), false);
            return Some(DeltaOutgoing {
                rtype: None,
                type_url,
                nonce: self.next_nonce(),
                system_version_info: String::new(),
                resources: Vec::new(),
                removed: Vec::new(),
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

impl Subscriptions for DeltaState {
    fn subscription(&self, t: ResourceType) -> Option<(bool, Vec<String>)> {
        self.types
            .get(&t)
            .map(|s| (s.wildcard, s.names.iter().cloned().collect()))
    }
}
