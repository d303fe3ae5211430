//! What a change to a mesh would do to its proxies, before it is written: both versions of
//! the mesh translated by the same pure translator, the Envoy resources that differ (by
//! version, which is a hash of the bytes), each changed one's JSON diff, and which connected
//! streams would receive each.
//!
//! Who receives what is decided by [`NodeView`], the very code that serves the streams,
//! applied to each stream's role and subscriptions as its replica recorded them in the
//! `proxies` table, so any replica answers for all. It is exact for what the views compute
//! from the mesh (listeners, route configurations, clusters, load assignments, a sidecar's
//! inbound side, `ROOTCA`) and for the subscriptions as they stand; it cannot know names a
//! client will ask for only once it sees the change (the cluster of a backend a proxyless
//! client's route starts using), a proxyless node's certificate providers (not recorded: its
//! plaintext clusters are assumed), nor the per-stream `default` certificate and gateways'
//! uploaded certificates (issued or opened per stream, never by a plan).
//!
//! Pure: no IO, no clock. The caller reads the stored mesh, the changed mesh and the streams.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use switchboard_model::{Kind, Spec};
use switchboard_store::{MeshSnapshot as StoredMesh, ProxyRow, ProxyStatusRecord, ResourceKey};
use switchboard_translator::{
    Change as ConfigChange, MeshConfig, MeshResources, Translator, XdsResource,
};
use switchboard_xds_proto::ResourceType;

use crate::cache::SnapshotCache;
use crate::protocol::Resources;
use crate::report::role_from_record;
use crate::snapshot::{MeshSnapshot, mesh_config};
use crate::view::NodeView;

mod json;
use json::resource_diff;
pub use json::{JsonChange, json_diff};

/// What happens to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Added,
    Changed,
    Removed,
}

/// One Envoy resource the change adds, changes or removes.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourcePlan {
    pub resource_type: ResourceType,
    pub name: String,
    pub action: Action,
    /// For a changed resource: its JSON diff (private keys redacted on both sides).
    pub diff: Vec<JsonChange>,
    /// The connected nodes that would be sent it (or told it is gone), sorted, each once.
    pub nodes: Vec<String>,
}

/// The plan of one mesh.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshPlan {
    /// In push order (clusters before listeners…), then by name.
    pub resources: Vec<ResourcePlan>,
    /// Connected nodes of the mesh that were considered.
    pub connected_nodes: usize,
    /// What the translator could not turn into resources in the changed mesh.
    pub warnings: Vec<String>,
}

/// One resource a change creates, replaces or deletes (the mesh itself when its spec
/// changes), with its stored spec as the change would leave it (`None`: deleted).
pub type Changed = (ResourceKey, Option<Value>);

/// The plan of the change `changed` to the mesh `before` (read from the store), for the
/// live `streams` of the mesh. Translates `before` in full; [`Planner`] keeps it.
pub fn plan(
    before: &StoredMesh,
    changed: &[Changed],
    trust_domain: &str,
    streams: &[ProxyRow],
) -> MeshPlan {
    Planner::default().plan(before, changed, trust_domain, streams)
}

/// Plans, keeping the last few meshes it planned against translated (by tenant, mesh and
/// revision): a plan against a revision already seen needs neither the stored mesh nor its
/// translation, only its own change (applied, then undone).
///
/// With the xDS server's snapshot cache ([`Planner::seeded`]), a mesh this replica serves is
/// planned on the translator the cache keeps current (the change applied, then undone), so a
/// plan after a write needs neither the stored mesh nor a translation either. A mesh held at
/// another revision is brought to the stored one by the translator's incremental update.
#[derive(Default)]
pub struct Planner {
    cache: Mutex<Vec<Prepared>>,
    snapshots: Option<SnapshotCache>,
}

/// One mesh at one revision, translated.
struct Prepared {
    key: Held,
    translator: Translator,
    snapshot: Arc<MeshSnapshot>,
}

/// Tenant, mesh, tenant revision and trust domain.
type Held = (String, String, i64, String);

/// Meshes kept translated by a [`Planner`].
const KEPT: usize = 4;

impl Planner {
    /// A planner that plans the meshes `snapshots` has loaded on their own translators.
    pub fn seeded(snapshots: SnapshotCache) -> Self {
        Self {
            cache: Mutex::default(),
            snapshots: Some(snapshots),
        }
    }

    /// The mesh `key` before and after `changed`, on the snapshot cache's translator.
    fn on_snapshot_cache(
        &self,
        (tenant, mesh, revision, domain): &Held,
        changed: &[Changed],
    ) -> Option<(Arc<MeshSnapshot>, Arc<MeshSnapshot>)> {
        let snapshots = self.snapshots.as_ref()?;
        if snapshots.trust_domain() != domain {
            return None;
        }
        snapshots.translator_at(tenant, mesh, *revision, |t| {
            (snapshot(t), round_trip(t, changed))
        })
    }

    /// The index in `cache` of the mesh `key` translated, translating it if need be: from
    /// another revision of the same mesh, brought to `before` by the translator's
    /// incremental update; else `before` in full. `None` when `before` is needed and not
    /// given.
    fn prepare(cache: &mut Vec<Prepared>, key: Held, before: Option<&StoredMesh>) -> Option<usize> {
        if let Some(at) = cache.iter().position(|p| p.key == key) {
            return Some(at);
        }
        let config = mesh_config(before?, &key.3).0;
        let same_mesh = |p: &Prepared| p.key.0 == key.0 && p.key.1 == key.1 && p.key.3 == key.3;
        let translator = match cache.iter().position(same_mesh) {
            Some(at) => {
                let mut translator = cache.remove(at).translator;
                translator.update(config);
                translator
            }
            None => Translator::new(config),
        };
        if cache.len() >= KEPT {
            cache.remove(0);
        }
        cache.push(Prepared {
            key,
            snapshot: snapshot(&translator),
            translator,
        });
        Some(cache.len() - 1)
    }

    /// As [`plan`]; `before` is translated only when this planner does not hold its revision.
    pub fn plan(
        &self,
        before: &StoredMesh,
        changed: &[Changed],
        trust_domain: &str,
        streams: &[ProxyRow],
    ) -> MeshPlan {
        let key = (
            before.tenant.clone(),
            before.mesh.key.name.clone(),
            before.revision,
            trust_domain.to_owned(),
        );
        self.plan_with(key, Some(before), changed, streams)
            .unwrap_or_default()
    }

    /// As [`Planner::plan`] against the mesh `tenant`/`mesh` at tenant revision `revision`,
    /// without the stored mesh: `None` when this planner does not hold that revision (the
    /// caller then reads the mesh and calls [`Planner::plan`]).
    pub fn plan_held(
        &self,
        (tenant, mesh, revision): (&str, &str, i64),
        changed: &[Changed],
        trust_domain: &str,
        streams: &[ProxyRow],
    ) -> Option<MeshPlan> {
        let key = (
            tenant.to_owned(),
            mesh.to_owned(),
            revision,
            trust_domain.to_owned(),
        );
        self.plan_with(key, None, changed, streams)
    }

    /// Whether a plan against `tenant`/`mesh` at `revision` needs no stored mesh.
    pub fn holds(&self, tenant: &str, mesh: &str, revision: i64, trust_domain: &str) -> bool {
        let cache = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let held = cache.iter().any(|p| {
            let (t, m, r, d) = &p.key;
            t == tenant && m == mesh && *r == revision && d == trust_domain
        });
        held || self
            .snapshots
            .as_ref()
            .is_some_and(|s| s.trust_domain() == trust_domain && s.holds(tenant, mesh, revision))
    }

    fn plan_with(
        &self,
        key: Held,
        before: Option<&StoredMesh>,
        changed: &[Changed],
        streams: &[ProxyRow],
    ) -> Option<MeshPlan> {
        let mut warnings = changes(changed).1;
        let (snap_before, snap_after) = match self.on_snapshot_cache(&key, changed) {
            Some(planned) => planned,
            None => {
                // A panic while the lock is held leaves a translator half changed: start
                // afresh.
                let mut cache = match self.cache.lock() {
                    Ok(c) => c,
                    Err(poisoned) => {
                        let mut c = poisoned.into_inner();
                        c.clear();
                        c
                    }
                };
                let at = Self::prepare(&mut cache, key, before)?;
                let prepared = &mut cache[at];
                let after = round_trip(&mut prepared.translator, changed);
                (Arc::clone(&prepared.snapshot), after)
            }
        };
        warnings.extend(snap_after.resources.warnings.iter().cloned());
        Some(diff(&snap_before, &snap_after, streams, warnings))
    }
}

/// The mesh as `translator` holds it.
fn snapshot(translator: &Translator) -> Arc<MeshSnapshot> {
    Arc::new(MeshSnapshot::new(
        translator.config(),
        translator.resources().clone(),
        None,
    ))
}

/// The mesh after `changed`, computed by applying it to `translator` and then its inverse
/// (what the translator's configuration holds for each changed resource now): the
/// translator is left as it was (its resources always equal a full translation of its
/// configuration).
fn round_trip(translator: &mut Translator, changed: &[Changed]) -> Arc<MeshSnapshot> {
    let backward = inverse(translator.config(), changed);
    translator.apply(changes(changed).0);
    let after = snapshot(translator);
    translator.apply(backward);
    after
}

/// The translator's changes writing `changed`, and what could not be parsed (left out, as a
/// full translation leaves it out).
fn changes(changed: &[Changed]) -> (Vec<ConfigChange>, Vec<String>) {
    let mut out = vec![];
    let mut warnings = vec![];
    for (key, value) in changed {
        let name = key.name.clone();
        let spec = match value.as_ref().map(|v| Spec::parse(key.kind, v.clone())) {
            None => None,
            Some(Ok(spec)) => Some(spec),
            Some(Err(e)) => {
                warnings.push(format!("{} {name}: {e}", key.kind));
                None
            }
        };
        out.push(match (key.kind, spec) {
            (Kind::Mesh, Some(Spec::Mesh(s))) => ConfigChange::Mesh(s),
            (Kind::Mesh, _) => continue,
            (Kind::Service, Some(Spec::Service(s))) => ConfigChange::Service(name, Some(s)),
            (Kind::Service, _) => ConfigChange::Service(name, None),
            (Kind::Endpoint, Some(Spec::Endpoint(s))) => ConfigChange::Endpoint(name, Some(s)),
            (Kind::Endpoint, _) => ConfigChange::Endpoint(name, None),
            (Kind::Route, Some(Spec::Route(s))) => ConfigChange::Route(name, Some(s)),
            (Kind::Route, _) => ConfigChange::Route(name, None),
            (Kind::Gateway, Some(Spec::Gateway(s))) => ConfigChange::Gateway(name, Some(s)),
            (Kind::Gateway, _) => ConfigChange::Gateway(name, None),
            (Kind::AuthorizationPolicy, Some(Spec::AuthorizationPolicy(s))) => {
                ConfigChange::AuthorizationPolicy(name, Some(s))
            }
            (Kind::AuthorizationPolicy, _) => ConfigChange::AuthorizationPolicy(name, None),
            (Kind::Certificate, Some(Spec::Certificate(s))) => {
                ConfigChange::Certificate(name, Some(*s))
            }
            (Kind::Certificate, _) => ConfigChange::Certificate(name, None),
        });
    }
    (out, warnings)
}

/// The translator's changes putting each of `changed` back as `config` holds it.
fn inverse(config: &MeshConfig, changed: &[Changed]) -> Vec<ConfigChange> {
    changed
        .iter()
        .map(|(key, _)| {
            let name = key.name.clone();
            match key.kind {
                Kind::Mesh => ConfigChange::Mesh(config.spec.clone()),
                Kind::Service => {
                    let s = config.services.get(&name).cloned();
                    ConfigChange::Service(name, s)
                }
                Kind::Endpoint => {
                    let s = config.endpoints.get(&name).cloned();
                    ConfigChange::Endpoint(name, s)
                }
                Kind::Route => {
                    let s = config.routes.get(&name).cloned();
                    ConfigChange::Route(name, s)
                }
                Kind::Gateway => {
                    let s = config.gateways.get(&name).cloned();
                    ConfigChange::Gateway(name, s)
                }
                Kind::AuthorizationPolicy => {
                    let s = config.authorization_policies.get(&name).cloned();
                    ConfigChange::AuthorizationPolicy(name, s)
                }
                Kind::Certificate => {
                    let s = config.certificates.get(&name).cloned();
                    ConfigChange::Certificate(name, s)
                }
            }
        })
        .collect()
}

/// The resources that differ between two snapshots of a mesh, and who receives each.
fn diff(
    snap_before: &Arc<MeshSnapshot>,
    snap_after: &Arc<MeshSnapshot>,
    streams: &[ProxyRow],
    warnings: Vec<String>,
) -> MeshPlan {
    let mut plans: BTreeMap<(usize, ResourceType, String), ResourcePlan> = BTreeMap::new();
    for (t, b, a) in mesh_wide(&snap_before.resources, &snap_after.resources) {
        for (name, action, rb, ra) in changed(b, a) {
            plans.insert(
                (order(t), t, name.clone()),
                resource_plan(t, name, action, rb, ra),
            );
        }
    }

    // Streams alike in role, credentials and subscriptions receive alike: one view each.
    let mut groups: HashMap<String, (&ProxyStatusRecord, BTreeSet<&str>)> = HashMap::new();
    for s in streams {
        let key = serde_json::to_string(&(
            &s.status.role_spec,
            s.status.authenticated,
            s.status
                .types
                .iter()
                .map(|t| (&t.type_name, t.wildcard, &t.names))
                .collect::<Vec<_>>(),
        ))
        .unwrap_or_else(|_| format!("{}/{}", s.replica, s.stream_id));
        groups
            .entry(key)
            .or_insert_with(|| (&s.status, BTreeSet::new()))
            .1
            .insert(&s.node);
    }
    let connected: BTreeSet<&str> = streams.iter().map(|s| s.node.as_str()).collect();
    let touched = Touched::new(&snap_before.resources, &snap_after.resources);
    for (status, nodes) in groups.into_values() {
        for (t, (name, action, rb, ra)) in node_changes(snap_before, snap_after, status, &touched) {
            let plan = plans
                .entry((order(t), t, name.clone()))
                .or_insert_with(|| resource_plan(t, name, action, rb, ra));
            plan.nodes.extend(nodes.iter().map(|n| (*n).to_owned()));
        }
    }
    let resources = plans
        .into_values()
        .map(|mut p| {
            p.nodes.sort();
            p.nodes.dedup();
            p
        })
        .collect();
    MeshPlan {
        resources,
        connected_nodes: connected.len(),
        warnings,
    }
}

impl crate::XdsServer {
    /// The trust domain workload identities are in (what a plan translates with).
    pub fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }
}

fn order(t: ResourceType) -> usize {
    ResourceType::PUSH_ORDER
        .iter()
        .position(|x| *x == t)
        .unwrap_or(usize::MAX)
}

/// Resources by name, borrowed from a snapshot or a view: only changes are copied.
type Map<'a> = BTreeMap<&'a str, &'a Arc<XdsResource>>;

/// The mesh's own resources by type, before and after: what every node's view draws from.
/// Clusters are those sent to sidecars and gateways (the proxyless ones are the same
/// without mTLS; where they differ, a connected proxyless node adds its own).
fn mesh_wide<'a>(
    b: &'a MeshResources,
    a: &'a MeshResources,
) -> Vec<(ResourceType, Map<'a>, Map<'a>)> {
    fn map<'a>(
        maps: &[&'a BTreeMap<String, Arc<XdsResource>>],
    ) -> BTreeMap<&'a str, &'a Arc<XdsResource>> {
        maps.iter()
            .flat_map(|m| m.iter())
            .map(|(k, v)| (k.as_str(), v))
            .collect()
    }
    vec![
        (
            ResourceType::Listener,
            map(&[&b.listeners, &b.server_listeners]),
            map(&[&a.listeners, &a.server_listeners]),
        ),
        (
            ResourceType::RouteConfiguration,
            map(&[&b.route_configurations]),
            map(&[&a.route_configurations]),
        ),
        (
            ResourceType::Cluster,
            map(&[&b.proxy_clusters]),
            map(&[&a.proxy_clusters]),
        ),
        (
            ResourceType::ClusterLoadAssignment,
            map(&[&b.load_assignments]),
            map(&[&a.load_assignments]),
        ),
    ]
}

type Change = (
    String,
    Action,
    Option<Arc<XdsResource>>,
    Option<Arc<XdsResource>>,
);

/// The names whose resource differs between `b` and `a` (by version: a hash of the bytes).
fn changed(b: Map<'_>, mut a: Map<'_>) -> Vec<Change> {
    let mut out = vec![];
    for (name, rb) in b {
        match a.remove(name) {
            Some(ra) if Arc::ptr_eq(ra, rb) || ra.version == rb.version => {}
            Some(ra) => out.push((
                name.to_owned(),
                Action::Changed,
                Some(Arc::clone(rb)),
                Some(Arc::clone(ra)),
            )),
            None => out.push((name.to_owned(), Action::Removed, Some(Arc::clone(rb)), None)),
        }
    }
    out.extend(
        a.into_iter()
            .map(|(name, ra)| (name.to_owned(), Action::Added, None, Some(Arc::clone(ra)))),
    );
    out
}

/// The names that differ between two snapshots in the maps a view's wildcard clusters,
/// route configurations and load assignments are drawn from: a wildcard subscription of
/// those can differ only there (and in a sidecar's own inbound cluster), so a stream's
/// comparison looks at these names instead of its whole view.
struct Touched {
    clusters: BTreeSet<String>,
    route_configurations: BTreeSet<String>,
    load_assignments: BTreeSet<String>,
}

impl Touched {
    fn new(b: &MeshResources, a: &MeshResources) -> Self {
        let mut clusters = differing(&b.clusters, &a.clusters);
        clusters.extend(differing(&b.proxy_clusters, &a.proxy_clusters));
        clusters.extend(differing(
            &b.proxyless_mtls_clusters,
            &a.proxyless_mtls_clusters,
        ));
        Self {
            clusters,
            route_configurations: differing(&b.route_configurations, &a.route_configurations),
            load_assignments: differing(&b.load_assignments, &a.load_assignments),
        }
    }
}

/// The names whose entry differs between two maps of resources (absent on one side, or
/// another version).
fn differing(
    b: &BTreeMap<String, Arc<XdsResource>>,
    a: &BTreeMap<String, Arc<XdsResource>>,
) -> BTreeSet<String> {
    let same =
        |x: &Arc<XdsResource>, y: &Arc<XdsResource>| Arc::ptr_eq(x, y) || x.version == y.version;
    let mut out: BTreeSet<String> = b
        .iter()
        .filter(|(k, rb)| !a.get(*k).is_some_and(|ra| same(rb, ra)))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(a.keys().filter(|k| !b.contains_key(*k)).cloned());
    out
}

/// What one stream (by its recorded role and subscriptions) would be sent differently.
fn node_changes(
    before: &Arc<MeshSnapshot>,
    after: &Arc<MeshSnapshot>,
    status: &ProxyStatusRecord,
    touched: &Touched,
) -> Vec<(ResourceType, Change)> {
    let role = role_from_record(&status.role_spec);
    let mut vb = NodeView::new(Arc::clone(before), role.clone());
    let mut va = NodeView::new(Arc::clone(after), role);
    if status.authenticated {
        vb = vb.with_secrets();
        va = va.with_secrets();
    }
    let mut out = vec![];
    for t in &status.types {
        let Some(rt) = ResourceType::from_short_name(&t.type_name) else {
            continue;
        };
        // A view's `get` of these types answers exactly what its wildcard holds under the
        // name (listeners differ: any client may name a proxyless one).
        let narrowed = match rt {
            ResourceType::Cluster => {
                let mut names = touched.clusters.clone();
                names.extend(
                    [&vb, &va]
                        .iter()
                        .filter_map(|v| v.inbound_cluster())
                        .map(|r| r.name.clone()),
                );
                Some(names)
            }
            ResourceType::RouteConfiguration => Some(touched.route_configurations.clone()),
            ResourceType::ClusterLoadAssignment => Some(touched.load_assignments.clone()),
            _ => None,
        };
        let changes = match (t.wildcard, narrowed) {
            (true, Some(names)) => {
                let names: Vec<String> = names.into_iter().collect();
                changed(named(&vb, rt, &names), named(&va, rt, &names))
            }
            (true, None) => changed(wildcard(&vb, rt), wildcard(&va, rt)),
            (false, _) => changed(named(&vb, rt, &t.names), named(&va, rt, &t.names)),
        };
        out.extend(changes.into_iter().map(|c| (rt, c)));
    }
    out
}

/// What a view sends to a wildcard subscription of `t`.
fn wildcard(v: &NodeView, t: ResourceType) -> Map<'_> {
    v.wildcard(t).map(|r| (r.name.as_str(), r)).collect()
}

/// What a view sends to a subscription of `t` naming `names`.
fn named<'a>(v: &'a NodeView, t: ResourceType, names: &'a [String]) -> Map<'a> {
    names
        .iter()
        .filter_map(|n| v.get(t, n).map(|r| (n.as_str(), r)))
        .collect()
}

fn resource_plan(
    t: ResourceType,
    name: String,
    action: Action,
    before: Option<Arc<XdsResource>>,
    after: Option<Arc<XdsResource>>,
) -> ResourcePlan {
    let diff = match (&before, &after) {
        (Some(b), Some(a)) => resource_diff(t, b, a),
        _ => vec![],
    };
    ResourcePlan {
        resource_type: t,
        name,
        action,
        diff,
        nodes: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_json_diff_says_what_each_operation_overwrites() {
        let b = json!({"a": 1, "b": [1, 2], "c": {"d": "x"}});
        let a = json!({"a": 2, "b": [1], "c": {"d": "x", "e": true}});
        let mut d = json_diff(&b, &a);
        d.sort_by(|x, y| x.path.cmp(&y.path));
        assert_eq!(
            d,
            vec![
                JsonChange {
                    op: "replace",
                    path: "/a".into(),
                    before: Some(json!(1)),
                    after: Some(json!(2))
                },
                JsonChange {
                    op: "remove",
                    path: "/b/1".into(),
                    before: Some(json!(2)),
                    after: None
                },
                JsonChange {
                    op: "add",
                    path: "/c/e".into(),
                    before: None,
                    after: Some(json!(true))
                },
            ]
        );
    }
}
