//! One resource type on one stream: its subscription, what the client was sent, and the
//! ACK/NACK bookkeeping.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use switchboard_translator::XdsResource;
use switchboard_xds_proto::{DiscoveryRequest, ResourceType};

use super::{Ack, Nack, Outgoing, Phase, Resources, WILDCARD};
use crate::wire::SotwResponse;

/// A resource the client was sent, ordered and looked up by name. Only a pointer to the
/// snapshot's resource: streams never copy resources.
#[derive(Debug, Clone)]
pub(super) struct Held(pub(super) Arc<XdsResource>);

impl Borrow<str> for Held {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.name.cmp(&other.0.name)
    }
}

/// Explicitly subscribed names, sorted and without duplicates, in one allocation of their
/// exact size: a `BTreeSet` allocates a node with room for eleven names and keeps it for the
/// stream's life, and most subscriptions name one or two resources.
#[derive(Debug, Default)]
struct Names(Box<[String]>);

impl Names {
    /// The names of a request, without `*`; and whether `*` was among them.
    fn parse(resource_names: &[String]) -> (Self, bool) {
        let mut names: Vec<String> = resource_names
            .iter()
            .filter(|n| n.as_str() != WILDCARD)
            .cloned()
            .collect();
        let wildcard = names.len() != resource_names.len();
        names.sort_unstable();
        names.dedup();
        (Self(names.into_boxed_slice()), wildcard)
    }

    fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }
}

/// What the client holds, sorted by name, in a `Vec` of about its size: a `BTreeSet`
/// allocates a node with room for eleven, and a type holds one or two for most clients.
#[derive(Debug, Default)]
struct HeldSet(Vec<Held>);

impl HeldSet {
    /// From resources sorted by name without duplicates (a map's values).
    fn from_sorted(held: impl Iterator<Item = Held>) -> Self {
        Self(held.collect())
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|h| h.0.name.as_str().cmp(name))
    }

    fn get(&self, name: &str) -> Option<&Held> {
        self.find(name).ok().and_then(|i| self.0.get(i))
    }

    /// Adds `held`, or replaces the resource of the same name.
    fn replace(&mut self, held: Held) {
        match self.find(&held.0.name) {
            Ok(i) => self.0[i] = held,
            Err(i) => self.0.insert(i, held),
        }
    }

    /// Adds what `other` holds under names `self` does not hold.
    fn add_missing(&mut self, other: &HeldSet) {
        for h in other.iter() {
            if let Err(i) = self.find(&h.0.name) {
                self.0.insert(i, h.clone());
            }
        }
    }

    fn retain(&mut self, keep: impl FnMut(&Held) -> bool) {
        self.0.retain(keep);
    }

    fn iter(&self) -> std::slice::Iter<'_, Held> {
        self.0.iter()
    }
}

/// The latest response of a type.
#[derive(Debug, Clone)]
struct Last {
    nonce: String,
    version: String,
    revision: i64,
    /// The resources it carried (pointers; names are copied only for a NACK).
    resources: Vec<Arc<XdsResource>>,
}

#[derive(Debug)]
pub(super) struct TypeState {
    rtype: ResourceType,
    /// A request of this type was seen.
    requested: bool,
    /// Subscribed to everything the node may see (legacy empty list, or `*`).
    wildcard: bool,
    /// Explicitly named resources (without `*`).
    names: Names,
    /// The client has sent a non-empty `resource_names`: an empty one now means "nothing",
    /// not the legacy wildcard.
    ever_named: bool,
    /// Respond even if nothing changed: the first request, or (for Listener and Cluster) new
    /// names, whose absence the full-state response reveals.
    force: bool,
    /// Names added to the subscription and not yet answered: sent even if unchanged.
    added: BTreeSet<String>,
    /// What the client holds if it accepted every response.
    held: HeldSet,
    last: Option<Last>,
}

/// What a type has to send, computed against the current resources.
pub(super) struct Plan<'v> {
    /// Everything the subscription covers that exists.
    desired: BTreeMap<&'v str, &'v Arc<XdsResource>>,
    /// New, changed or newly requested resources.
    changed: Vec<&'v Arc<XdsResource>>,
    force: bool,
    /// Listener/Cluster only: held resources that no longer exist.
    removed: bool,
}

impl Plan<'_> {
    pub(super) fn has_update(&self) -> bool {
        self.force || !self.changed.is_empty()
    }

    pub(super) fn has_removal(&self) -> bool {
        self.removed
    }
}

pub(super) fn same(a: &Arc<XdsResource>, b: &Arc<XdsResource>) -> bool {
    Arc::ptr_eq(a, b) || (a.version == b.version && a.type_url() == b.type_url())
}

impl TypeState {
    pub(super) fn new(rtype: ResourceType) -> Self {
        Self {
            rtype,
            requested: false,
            wildcard: false,
            names: Names::default(),
            ever_named: false,
            force: false,
            added: BTreeSet::new(),
            held: HeldSet::default(),
            last: None,
        }
    }

    fn full_state(&self) -> bool {
        self.rtype.sotw_requires_full_state()
    }

    pub(super) fn subscription(&self) -> (bool, Vec<String>) {
        (self.wildcard, self.names.iter().cloned().collect())
    }

    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Applies a request: ACK/NACK when its nonce is the latest, and its subscription always.
    pub(super) fn apply(&mut self, req: &DiscoveryRequest) -> (Option<Ack>, Option<Nack>, bool) {
        let first = !self.requested;
        self.requested = true;
        let (mut ack, mut nack, mut stale) = (None, None, false);
        if !req.response_nonce.is_empty() {
            match &self.last {
                Some(last) if last.nonce == req.response_nonce => match &req.error_detail {
                    Some(error) => {
                        nack = Some(Nack {
                            rtype: self.rtype,
                            version: last.version.clone(),
                            nonce: last.nonce.clone(),
                            revision: last.revision,
                            kept_version: req.version_info.clone(),
                            message: error.message.clone(),
                            code: error.code,
                            names: last.resources.iter().map(|r| r.name.clone()).collect(),
                        });
                    }
                    None => {
                        ack = Some(Ack {
                            rtype: self.rtype,
                            version: last.version.clone(),
                            nonce: last.nonce.clone(),
                            revision: last.revision,
                        });
                    }
                },
                _ => stale = true,
            }
        }
        self.subscribe(&req.resource_names, first);
        (ack, nack, stale)
    }

    fn subscribe(&mut self, resource_names: &[String], first: bool) {
        let (names, explicit_wildcard) = Names::parse(resource_names);
        let wildcard = explicit_wildcard || (names.is_empty() && !self.ever_named);
        if !resource_names.is_empty() {
            self.ever_named = true;
        }
        let added: Vec<String> = names
            .iter()
            .filter(|n| !self.names.contains(n))
            .cloned()
            .collect();
        let wildcard_added = wildcard && !self.wildcard;
        self.wildcard = wildcard;
        self.names = names;
        // Names no longer subscribed are dropped without telling the client: it dropped them.
        let (wildcard, names) = (self.wildcard, &self.names);
        self.held
            .retain(|h| wildcard || names.contains(h.0.name.as_str()));
        self.added.retain(|n| names.contains(n));
        if first || (self.full_state() && (!added.is_empty() || wildcard_added)) {
            // The first request always gets an answer when one is possible: for Listener and
            // Cluster (full state, even if empty) and for a wildcard. A named RouteConfiguration
            // or ClusterLoadAssignment that does not exist yet is answered when it appears.
            self.force = self.full_state() || self.wildcard || self.force;
        }
        self.added.extend(added);
    }

    /// What to send now. Also forgets, without telling the client, RouteConfigurations and
    /// ClusterLoadAssignments that no longer exist (the protocol has no way to remove them;
    /// if they come back they are sent again).
    pub(super) fn plan<'v>(&mut self, view: &'v dyn Resources) -> Plan<'v> {
        let mut desired: BTreeMap<&'v str, &'v Arc<XdsResource>> = BTreeMap::new();
        if self.wildcard {
            for r in view.wildcard(self.rtype) {
                desired.insert(r.name.as_str(), r);
            }
        }
        for name in self.names.iter() {
            if let Some(r) = view.get(self.rtype, name) {
                desired.insert(r.name.as_str(), r);
            }
        }
        if !self.full_state() {
            self.held
                .retain(|h| desired.contains_key(h.0.name.as_str()));
        }
        let changed = desired
            .iter()
            .filter(|(name, r)| {
                self.added.contains(**name)
                    || self.held.get(name).is_none_or(|held| !same(&held.0, r))
            })
            .map(|(_, r)| *r)
            .collect();
        let removed = self.full_state()
            && self
                .held
                .iter()
                .any(|h| self.subscribed(&h.0.name) && !desired.contains_key(h.0.name.as_str()));
        Plan {
            desired,
            changed,
            force: self.force,
            removed,
        }
    }

    /// Sends additions and changes. A Listener/Cluster response keeps removed resources when
    /// `keep_removed` (later types still have updates that may stop referring to them).
    pub(super) fn emit_update(
        &mut self,
        plan: Plan<'_>,
        keep_removed: bool,
        nonce: String,
        revision: i64,
    ) -> Outgoing {
        let sent: Vec<Arc<XdsResource>> = if self.full_state() {
            let mut next = HeldSet::from_sorted(plan.desired.values().map(|r| Held(Arc::clone(r))));
            if keep_removed {
                next.add_missing(&self.held);
            }
            self.held = next;
            self.held.iter().map(|h| Arc::clone(&h.0)).collect()
        } else {
            let sent: Vec<_> = plan.changed.iter().map(|r| Arc::clone(r)).collect();
            for r in &sent {
                self.held.replace(Held(Arc::clone(r)));
            }
            sent
        };
        self.respond(sent, nonce, revision, Phase::Update)
    }

    /// Sends the Listener/Cluster full state without the resources that were removed.
    pub(super) fn emit_removal(
        &mut self,
        plan: Plan<'_>,
        nonce: String,
        revision: i64,
    ) -> Outgoing {
        self.held = HeldSet::from_sorted(plan.desired.values().map(|r| Held(Arc::clone(r))));
        let sent = self.held.iter().map(|h| Arc::clone(&h.0)).collect();
        self.respond(sent, nonce, revision, Phase::Removal)
    }

    fn respond(
        &mut self,
        sent: Vec<Arc<XdsResource>>,
        nonce: String,
        revision: i64,
        phase: Phase,
    ) -> Outgoing {
        self.force = false;
        self.added.clear();
        let version = self.version();
        self.last = Some(Last {
            nonce: nonce.clone(),
            version: version.clone(),
            revision,
            resources: sent.clone(),
        });
        Outgoing {
            rtype: Some(self.rtype),
            response: SotwResponse {
                version_info: version,
                resources: sent,
                type_url: self.rtype.type_url().to_owned(),
                nonce,
            },
            revision,
            state: self.held.iter().map(|h| Arc::clone(&h.0)).collect(),
            phase,
        }
    }

    /// The version of what the client holds after the response.
    fn version(&self) -> String {
        digest(self.held.iter().map(|h| &h.0))
    }
}

/// The version of a set of resources: a digest of their names and versions, so equal content
/// gets an equal version on any replica and after reconnects.
pub(super) fn digest<'a>(held: impl Iterator<Item = &'a Arc<XdsResource>>) -> String {
    let mut hash = Sha256::new();
    for r in held {
        hash.update(r.name.as_bytes());
        hash.update([0]);
        hash.update(r.version.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    hex::encode(&digest[..8])
}
