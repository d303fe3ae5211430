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
use std::sync::Arc;

use serde_json::Value;
use switchboard_store::{MeshSnapshot as StoredMesh, ProxyRow, ProxyStatusRecord};
use switchboard_translator::{MeshResources, Translator, XdsResource};
use switchboard_xds_proto::{ResourceType, any_to_json};

use crate::protocol::Resources;
use crate::report::role_from_record;
use crate::snapshot::{MeshSnapshot, mesh_config};
use crate::view::NodeView;

/// What happens to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Added,
    Changed,
    Removed,
}

/// One RFC 6902 operation of a changed resource's JSON diff, with the value it replaces or
/// removes (`before`) beside the one it writes (`after`).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonChange {
    /// `add`, `remove` or `replace`.
    pub op: &'static str,
    /// A JSON pointer into the resource's proto3 JSON.
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
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

/// The plan of changing `before` into `after` (two reads of one mesh; `after` as the write
/// would leave it), for the live `streams` of the mesh.
pub fn plan(
    before: &StoredMesh,
    after: &StoredMesh,
    trust_domain: &str,
    streams: &[ProxyRow],
) -> MeshPlan {
    let (config_before, _) = mesh_config(before, trust_domain);
    let (config_after, mut warnings) = mesh_config(after, trust_domain);
    // The translator recomputes only what the change touches: one route's weight in a mesh
    // of thousands of resources costs that route, not the mesh.
    let mut translator = Translator::new(config_before.clone());
    let resources_before = translator.resources().clone();
    translator.update(config_after.clone());
    let resources_after = translator.resources().clone();
    warnings.extend(resources_after.warnings.iter().cloned());
    let snap_before = Arc::new(MeshSnapshot::new(&config_before, resources_before, None));
    let snap_after = Arc::new(MeshSnapshot::new(&config_after, resources_after, None));

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
    for (status, nodes) in groups.into_values() {
        for (t, name, action, rb, ra) in node_changes(&snap_before, &snap_after, status) {
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
    /// [`plan`] with this server's trust domain.
    pub fn plan(&self, before: &StoredMesh, after: &StoredMesh, streams: &[ProxyRow]) -> MeshPlan {
        plan(before, after, &self.config.trust_domain, streams)
    }
}

fn order(t: ResourceType) -> usize {
    ResourceType::PUSH_ORDER
        .iter()
        .position(|x| *x == t)
        .unwrap_or(usize::MAX)
}

type Map = BTreeMap<String, Arc<XdsResource>>;

/// The mesh's own resources by type, before and after: what every node's view draws from.
/// Clusters are those sent to sidecars and gateways (the proxyless ones are the same
/// without mTLS; where they differ, a connected proxyless node adds its own).
fn mesh_wide<'a>(b: &'a MeshResources, a: &'a MeshResources) -> Vec<(ResourceType, Map, Map)> {
    let join = |x: &'a Map, y: &'a Map| -> Map {
        x.iter()
            .chain(y.iter())
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    };
    vec![
        (
            ResourceType::Listener,
            join(&b.listeners, &b.server_listeners),
            join(&a.listeners, &a.server_listeners),
        ),
        (
            ResourceType::RouteConfiguration,
            b.route_configurations.clone(),
            a.route_configurations.clone(),
        ),
        (
            ResourceType::Cluster,
            b.proxy_clusters.clone(),
            a.proxy_clusters.clone(),
        ),
        (
            ResourceType::ClusterLoadAssignment,
            b.load_assignments.clone(),
            a.load_assignments.clone(),
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
fn changed(b: Map, mut a: Map) -> Vec<Change> {
    let mut out = vec![];
    for (name, rb) in b {
        match a.remove(&name) {
            Some(ra) if ra.version == rb.version => {}
            Some(ra) => out.push((name, Action::Changed, Some(rb), Some(ra))),
            None => out.push((name, Action::Removed, Some(rb), None)),
        }
    }
    out.extend(
        a.into_iter()
            .map(|(name, ra)| (name, Action::Added, None, Some(ra))),
    );
    out
}

/// What one stream (by its recorded role and subscriptions) would be sent differently.
fn node_changes(
    before: &Arc<MeshSnapshot>,
    after: &Arc<MeshSnapshot>,
    status: &ProxyStatusRecord,
) -> Vec<(
    ResourceType,
    String,
    Action,
    Option<Arc<XdsResource>>,
    Option<Arc<XdsResource>>,
)> {
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
        let (b, a): (Map, Map) = if t.wildcard {
            let all = |v: &NodeView| {
                v.wildcard(rt)
                    .map(|r| (r.name.clone(), Arc::clone(r)))
                    .collect()
            };
            (all(&vb), all(&va))
        } else {
            let named = |v: &NodeView| {
                t.names
                    .iter()
                    .filter_map(|n| v.get(rt, n).map(|r| (n.clone(), Arc::clone(r))))
                    .collect()
            };
            (named(&vb), named(&va))
        };
        out.extend(
            changed(b, a)
                .into_iter()
                .map(|(name, action, rb, ra)| (rt, name, action, rb, ra)),
        );
    }
    out
}

fn resource_plan(
    t: ResourceType,
    name: String,
    action: Action,
    before: Option<Arc<XdsResource>>,
    after: Option<Arc<XdsResource>>,
) -> ResourcePlan {
    let diff = match (&before, &after) {
        (Some(b), Some(a)) => json_diff(&json(b), &json(a)),
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

/// Proto3 JSON of a resource, a secret's private key redacted (as `…/proxies/{node}/config`
/// shows it).
fn json(r: &Arc<XdsResource>) -> Value {
    let r = crate::sds::secrets::redact(r);
    any_to_json(&r.any()).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
}

/// The RFC 6902 operations turning `b` into `a`, each with the value it overwrites.
pub fn json_diff(b: &Value, a: &Value) -> Vec<JsonChange> {
    use json_patch::PatchOperation as Op;
    let at = |v: &Value, path: &str| v.pointer(path).cloned();
    json_patch::diff(b, a)
        .0
        .into_iter()
        .map(|op| match op {
            Op::Add(o) => JsonChange {
                op: "add",
                path: o.path.to_string(),
                before: None,
                after: Some(o.value),
            },
            Op::Remove(o) => {
                let path = o.path.to_string();
                JsonChange {
                    op: "remove",
                    before: at(b, &path),
                    path,
                    after: None,
                }
            }
            Op::Replace(o) => {
                let path = o.path.to_string();
                JsonChange {
                    op: "replace",
                    before: at(b, &path),
                    path,
                    after: Some(o.value),
                }
            }
            // `diff` writes only the three above; the others would be a new version's.
            Op::Move(o) => JsonChange {
                op: "move",
                before: at(b, &o.from.to_string()),
                path: o.path.to_string(),
                after: None,
            },
            Op::Copy(o) => JsonChange {
                op: "copy",
                before: at(b, &o.from.to_string()),
                path: o.path.to_string(),
                after: None,
            },
            Op::Test(o) => JsonChange {
                op: "test",
                path: o.path.to_string(),
                before: Some(o.value),
                after: None,
            },
        })
        .collect()
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
