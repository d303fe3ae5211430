//! Per-type protocol state and the handling of one response, whichever protocol carried it:
//! decode each resource, convert it, hand the good ones to the type's [`Handler`], and collect
//! the rejected ones for the NACK.

use std::collections::{BTreeMap, BTreeSet};

use prost::{Message, Name};
use switchboard_xds_proto::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use switchboard_xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use switchboard_xds_proto::pb::envoy::config::listener::v3::Listener as PbListener;
use switchboard_xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::Secret as PbSecret;
use switchboard_xds_proto::pb::google::protobuf::Any;
use switchboard_xds_proto::{ResourceType, pack, unpack};

use crate::config::{Cluster, ConfigError, Listener, LoadAssignment, RouteConfig, Secret};
use crate::dump::ConfigDump;
use crate::handler::{Handler, Rejected};

/// A resource type the client handles: its proto, its name, the names of the other type
/// it needs (a listener's RDS names, a cluster's EDS name) and the secrets it needs (SDS).
pub trait XdsResource: Sized + Send + 'static {
    type Proto: Message + Default + Name;
    const TYPE: ResourceType;
    fn name_of(proto: &Self::Proto) -> &str;
    fn convert(proto: Self::Proto) -> Result<Self, ConfigError>;
    fn needs(&self) -> Vec<&str> {
        Vec::new()
    }
    fn secrets(&self) -> Vec<&str> {
        Vec::new()
    }
    /// The resource as `/config_dump` keeps it.
    fn for_dump(any: &Any) -> Any {
        any.clone()
    }
}

impl XdsResource for Listener {
    type Proto = PbListener;
    const TYPE: ResourceType = ResourceType::Listener;
    fn name_of(proto: &PbListener) -> &str {
        &proto.name
    }
    fn convert(proto: PbListener) -> Result<Self, ConfigError> {
        Listener::try_from(proto)
    }
    fn needs(&self) -> Vec<&str> {
        self.all_route_names()
    }
    fn secrets(&self) -> Vec<&str> {
        self.secret_names()
    }
}

impl XdsResource for RouteConfig {
    type Proto = RouteConfiguration;
    const TYPE: ResourceType = ResourceType::RouteConfiguration;
    fn name_of(proto: &RouteConfiguration) -> &str {
        &proto.name
    }
    fn convert(proto: RouteConfiguration) -> Result<Self, ConfigError> {
        RouteConfig::try_from(proto)
    }
}

impl XdsResource for Cluster {
    type Proto = PbCluster;
    const TYPE: ResourceType = ResourceType::Cluster;
    fn name_of(proto: &PbCluster) -> &str {
        &proto.name
    }
    fn convert(proto: PbCluster) -> Result<Self, ConfigError> {
        Cluster::try_from(proto)
    }
    fn needs(&self) -> Vec<&str> {
        self.eds_name().into_iter().collect()
    }
    fn secrets(&self) -> Vec<&str> {
        self.secret_names()
    }
}

impl XdsResource for LoadAssignment {
    type Proto = ClusterLoadAssignment;
    const TYPE: ResourceType = ResourceType::ClusterLoadAssignment;
    fn name_of(proto: &ClusterLoadAssignment) -> &str {
        &proto.cluster_name
    }
    fn convert(proto: ClusterLoadAssignment) -> Result<Self, ConfigError> {
        LoadAssignment::try_from(proto)
    }
}

impl XdsResource for Secret {
    type Proto = PbSecret;
    const TYPE: ResourceType = ResourceType::Secret;
    fn name_of(proto: &PbSecret) -> &str {
        &proto.name
    }
    fn convert(proto: PbSecret) -> Result<Self, ConfigError> {
        Secret::try_from(proto)
    }
    /// Never the private key: the dump shows which secret (and version) is in use.
    fn for_dump(any: &Any) -> Any {
        match unpack::<PbSecret>(any) {
            Ok(s) => pack(&crate::config::secret::redacted(s)),
            Err(_) => Any {
                type_url: any.type_url.clone(),
                value: Vec::new(),
            },
        }
    }
}

/// One resource of a response, read the same way from either protocol.
pub(crate) struct Item<'a> {
    /// Delta's `Resource.name`, which must match the name inside.
    pub wrapper_name: Option<&'a str>,
    /// `None`: a delta `Resource` without a body (a TTL heartbeat of a resource held).
    pub any: Option<&'a Any>,
    /// SotW: the response's version; delta: the resource's own.
    pub version: &'a str,
}

/// What one response says of its type.
pub(crate) struct Update<'a> {
    /// The response's version (SotW `version_info`, delta `system_version_info`), for logs.
    pub version: &'a str,
    pub items: Vec<Item<'a>>,
    /// Names the response removes (delta's `removed_resources`).
    pub removed: &'a [String],
    /// The response is the type's whole state (SotW): on a wildcard type, a held resource it
    /// leaves out is removed.
    pub complete: bool,
}

/// What handling a response came to.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub rejected: Vec<Rejected>,
    /// Tells a NACK of the very same resources and versions from a new one, for pacing.
    pub nack_key: String,
}

/// A change of a named type's subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// An applied resource: its version and what it needs of the dependent type and of SDS.
#[derive(Debug, Clone, Default)]
pub(crate) struct Held {
    pub version: String,
    pub names: Vec<String>,
    pub secrets: Vec<String>,
}

/// What the client knows of one type on the stream and across reconnects.
#[derive(Debug)]
pub(crate) struct TypeState {
    pub kind: ResourceType,
    /// LDS and CDS: every resource.
    pub wildcard: bool,
    /// RDS, EDS and SDS: the names subscribed to.
    pub names: BTreeSet<String>,
    /// SotW: the last version ACKed; sent again on reconnect.
    pub version: String,
    /// The last nonce received on the current stream.
    pub nonce: String,
    /// Applied resources, by name.
    pub held: BTreeMap<String, Held>,
    /// A response of this type has been handled since start.
    pub answered: bool,
    /// Names received at least once (applied or rejected) or said not to exist, for readiness.
    pub seen: BTreeSet<String>,
    /// Applied and refused protos, for `/config_dump`.
    pub dump: ConfigDump,
    /// The last NACK's key and how many times in a row it was sent, to pace repeated NACKs.
    pub nacked: Option<(String, u32)>,
}

impl TypeState {
    pub(crate) fn new(kind: ResourceType, wildcard: bool, dump: ConfigDump) -> Self {
        Self {
            kind,
            wildcard,
            names: BTreeSet::new(),
            version: String::new(),
            nonce: String::new(),
            held: BTreeMap::new(),
            answered: false,
            seen: BTreeSet::new(),
            dump,
            nacked: None,
        }
    }

    /// Whether the initial fetch is complete: a wildcard type has had a response, a named
    /// type has received (or been told the absence of) every name it subscribes to.
    pub(crate) fn synced(&self) -> bool {
        if self.wildcard {
            self.answered
        } else {
            self.names.is_subset(&self.seen)
        }
    }

    /// The names the held resources need of the dependent type.
    pub(crate) fn needed(&self) -> BTreeSet<String> {
        self.held.values().flat_map(|h| h.names.clone()).collect()
    }

    /// The secrets the held resources need.
    pub(crate) fn secrets_needed(&self) -> BTreeSet<String> {
        self.held.values().flat_map(|h| h.secrets.clone()).collect()
    }

    /// Changes the subscription of a named type and drops what is no longer subscribed.
    /// Returns the change, if any.
    pub(crate) fn resubscribe<T: XdsResource>(
        &mut self,
        names: BTreeSet<String>,
        handler: &mut dyn Handler<T>,
    ) -> Option<Subscription> {
        if names == self.names {
            return None;
        }
        let change = Subscription {
            added: names.difference(&self.names).cloned().collect(),
            removed: self.names.difference(&names).cloned().collect(),
        };
        let dropped: Vec<String> = self
            .held
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        if !dropped.is_empty() {
            for n in &dropped {
                self.held.remove(n);
                self.dump.removed(self.kind, n);
            }
            if let Err(rejected) = handler.apply(Vec::new(), dropped) {
                tracing::warn!(?rejected, kind = %self.kind, "handler refused a removal");
            }
        }
        self.seen.retain(|n| names.contains(n));
        self.names = names;
        Some(change)
    }

    /// Handles one response of this type.
    pub(crate) fn apply<T: XdsResource>(
        &mut self,
        update: Update<'_>,
        handler: &mut dyn Handler<T>,
    ) -> Outcome {
        let mut rejected = Vec::new();
        let mut updates = Vec::new();
        let mut present = BTreeSet::new();
        // Name (or `resources[i]`) to the proto as received and its version.
        let mut received: BTreeMap<String, (Option<&Any>, &str)> = BTreeMap::new();
        for (i, item) in update.items.iter().enumerate() {
            let label = item
                .wrapper_name
                .map_or_else(|| format!("resources[{i}]"), str::to_owned);
            let Some(any) = item.any else {
                if self.held.contains_key(&label) {
                    present.insert(label);
                } else {
                    received.insert(label.clone(), (None, item.version));
                    rejected.push(Rejected::new(label, "the resource carries no body"));
                }
                continue;
            };
            let proto = match unpack::<T::Proto>(any) {
                Ok(p) => p,
                Err(e) => {
                    received.insert(label.clone(), (None, item.version));
                    rejected.push(Rejected::new(label, e.to_string()));
                    continue;
                }
            };
            let name = T::name_of(&proto).to_owned();
            if name.is_empty() {
                received.insert(label.clone(), (None, item.version));
                rejected.push(Rejected::new(label, "the name is empty"));
                continue;
            }
            if let Some(wrapper) = item.wrapper_name
                && wrapper != name
            {
                received.insert(label.clone(), (None, item.version));
                rejected.push(Rejected::new(
                    label,
                    format!("the resource inside is named {name:?}"),
                ));
                continue;
            }
            if !self.wildcard && !self.names.contains(&name) {
                tracing::debug!(kind = %self.kind, %name, "ignoring a resource not subscribed to");
                continue;
            }
            if !present.insert(name.clone()) {
                rejected.push(Rejected::new(name, "listed twice in one response"));
                continue;
            }
            received.insert(name.clone(), (Some(any), item.version));
            match T::convert(proto) {
                Ok(resource) => updates.push((name, resource)),
                Err(e) => rejected.push(Rejected::new(name, e.to_string())),
            }
        }
        // A rejected resource keeps its previous version, so it is not removed either.
        let removed: Vec<String> = if update.complete {
            if self.wildcard {
                self.held
                    .keys()
                    .filter(|n| !present.contains(*n))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            }
        } else {
            update
                .removed
                .iter()
                .filter(|n| self.held.contains_key(*n) && !present.contains(*n))
                .cloned()
                .collect()
        };
        // A subscribed name the server says does not exist is settled: readiness does not
        // wait for it (Envoy treats it the same way).
        let absent: Vec<String> = update
            .removed
            .iter()
            .filter(|n| !self.wildcard && self.names.contains(*n) && !present.contains(*n))
            .cloned()
            .collect();
        let applied: Vec<(String, Held)> = updates
            .iter()
            .map(|(n, r): &(String, T)| {
                let held = Held {
                    version: received
                        .get(n)
                        .map_or_else(String::new, |(_, v)| (*v).to_owned()),
                    names: r.needs().into_iter().map(str::to_owned).collect(),
                    secrets: r.secrets().into_iter().map(str::to_owned).collect(),
                };
                (n.clone(), held)
            })
            .collect();
        let refused = match handler.apply(updates, removed.clone()) {
            Ok(()) => Vec::new(),
            Err(refused) => refused,
        };
        for n in &removed {
            self.held.remove(n);
            self.dump.removed(self.kind, n);
        }
        for (name, held) in applied {
            if !refused.iter().any(|r| r.name == name) {
                if let Some((Some(any), version)) = received.get(&name) {
                    self.dump
                        .applied(self.kind, &name, version, T::for_dump(any));
                }
                self.held.insert(name, held);
            }
        }
        rejected.extend(refused);
        let mut nack_key = Vec::new();
        for r in &rejected {
            let (any, version) = received
                .get(&r.name)
                .copied()
                .unwrap_or((None, update.version));
            nack_key.push(format!("{}@{version}", r.name));
            self.dump
                .refused(self.kind, &r.name, version, any.map(T::for_dump), &r.error);
        }
        self.answered = true;
        self.seen.extend(present);
        self.seen.extend(absent);
        Outcome {
            rejected,
            nack_key: nack_key.join("\n"),
        }
    }
}
