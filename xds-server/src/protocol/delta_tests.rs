//! The delta protocol state, rule by rule, against a fake mesh.

use std::collections::BTreeSet;
use std::sync::Arc;

use switchboard_translator::XdsResource;
use switchboard_xds_proto::{DeltaDiscoveryRequest, Node, ResourceType, Status};

use super::delta::{DeltaError, DeltaOutgoing, DeltaState};
use super::tests::Fake;
use super::*;

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::ClusterLoadAssignment;
const LDS: ResourceType = ResourceType::Listener;
const RDS: ResourceType = ResourceType::RouteConfiguration;
const NODE: &str = "tenants/acme/meshes/prod/nodes/n1";

fn node() -> Option<Node> {
    Some(Node {
        id: NODE.to_owned(),
        ..Default::default()
    })
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// A request of `t` subscribing to `sub` and unsubscribing `unsub`, with the node.
fn sub(t: ResourceType, sub: &[&str], unsub: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node(),
        type_url: t.type_url().to_owned(),
        resource_names_subscribe: strings(sub),
        resource_names_unsubscribe: strings(unsub),
        ..Default::default()
    }
}

fn ack_of(out: &DeltaOutgoing) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: out.type_url.clone(),
        response_nonce: out.nonce.clone(),
        ..Default::default()
    }
}

fn nack_of(out: &DeltaOutgoing) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        error_detail: Some(Status {
            code: 3,
            message: "bad cluster".to_owned(),
            details: vec![],
        }),
        ..ack_of(out)
    }
}

fn sent(out: &DeltaOutgoing) -> Vec<String> {
    out.resources.iter().map(|r| r.name.clone()).collect()
}

fn held(out: &DeltaOutgoing) -> Vec<String> {
    out.state.iter().map(|r| r.name.clone()).collect()
}

fn ads() -> DeltaState {
    DeltaState::aggregated(Limits::default())
}

/// Takes every response until the client is up to date, ACKing none.
fn drain(state: &mut DeltaState, view: &dyn Resources) -> Vec<DeltaOutgoing> {
    let mut all = Vec::new();
    while let Some(out) = state.next_response(view) {
        all.push(out);
        assert!(all.len() < 50, "responses never end");
    }
    all
}

fn handle(state: &mut DeltaState, req: &DeltaDiscoveryRequest) -> Handled {
    state.handle(req).expect("request accepted")
}

#[test]
fn the_node_comes_first_and_never_changes() {
    let mut state = ads();
    let mut first = sub(CDS, &[], &[]);
    first.node = None;
    assert!(matches!(
        state.handle(&first),
        Err(DeltaError::Protocol(ProtocolError::Node(_)))
    ));
    handle(&mut state, &sub(CDS, &[], &[]));
    assert_eq!(
        state.node_id().map(ToString::to_string).as_deref(),
        Some(NODE)
    );
    // Later requests may leave it out...
    let mut later = sub(EDS, &["a"], &[]);
    later.node = None;
    handle(&mut state, &later);
    // ...but not name another.
    let mut other = sub(LDS, &[], &[]);
    other.node = Some(Node {
        id: "tenants/acme/meshes/prod/nodes/n2".to_owned(),
        ..Default::default()
    });
    let err = state.handle(&other).unwrap_err();
    assert!(err.to_string().contains("node.id changed"), "{err}");
}

#[test]
fn an_empty_first_request_is_the_wildcard_and_is_answered_even_when_empty() {
    let mut view = Fake::default();
    let mut state = ads();
    handle(&mut state, &sub(CDS, &[], &[]));
    let out = state.next_response(&view).expect("first answer");
    assert!(out.resources.is_empty() && out.removed.is_empty());
    assert_eq!(out.rtype, Some(CDS));
    assert!(state.next_response(&view).is_none());
    view.put(CDS, "a", 1);
    view.put(CDS, "b", 1);
    let out = state.next_response(&view).expect("new clusters");
    assert_eq!(sent(&out), ["a", "b"]);
    // Each resource carries its own version.
    assert_eq!(
        out.resources[0].version,
        view.get(CDS, "a").unwrap().version
    );
    let wire = out.response();
    assert_eq!(wire.resources[0].name, "a");
    assert_eq!(wire.resources[0].version, out.resources[0].version);
    assert_eq!(wire.system_version_info, out.system_version_info);
    assert_eq!(wire.nonce, out.nonce);
    // Only what changed goes next.
    view.put(CDS, "b", 2);
    let out = state.next_response(&view).expect("changed b");
    assert_eq!(sent(&out), ["b"]);
    assert_eq!(held(&out), ["a", "b"]);
    assert_eq!(state.subscription(CDS), Some((true, vec![])));
}

#[test]
fn star_subscribes_and_unsubscribing_star_ends_the_wildcard() {
    let mut view = Fake::default();
    view.put(CDS, "a", 1);
    view.put(CDS, "b", 1);
    let mut state = ads();
    handle(&mut state, &sub(CDS, &["*", "a"], &[]));
    let out = state.next_response(&view).unwrap();
    assert_eq!(sent(&out), ["a", "b"]);
    assert_eq!(state.subscription(CDS), Some((true, vec!["a".to_owned()])));
    handle(&mut state, &sub(CDS, &[], &["*"]));
    assert_eq!(state.subscription(CDS), Some((false, vec!["a".to_owned()])));
    // `b` was only the wildcard's: the client forgets it, nothing is sent about it.
    view.put(CDS, "b", 2);
    assert!(state.next_response(&view).is_none());
    view.put(CDS, "a", 2);
    let out = state.next_response(&view).unwrap();
    assert_eq!(sent(&out), ["a"]);
    assert_eq!(held(&out), ["a"]);
}

#[test]
fn subscribing_to_names_ends_the_legacy_wildcard_but_not_an_explicit_one() {
    let mut view = Fake::default();
    view.put(CDS, "a", 1);
    view.put(CDS, "b", 1);
    let mut legacy = ads();
    handle(&mut legacy, &sub(CDS, &[], &[]));
    drain(&mut legacy, &view);
    handle(&mut legacy, &sub(CDS, &["a"], &[]));
    assert_eq!(
        legacy.subscription(CDS),
        Some((false, vec!["a".to_owned()]))
    );
    view.put(CDS, "b", 2);
    assert!(legacy.next_response(&view).is_none());

    let mut explicit = ads();
    handle(&mut explicit, &sub(CDS, &["*"], &[]));
    drain(&mut explicit, &view);
    handle(&mut explicit, &sub(CDS, &["a"], &[]));
    assert_eq!(
        explicit.subscription(CDS),
        Some((true, vec!["a".to_owned()]))
    );
    view.put(CDS, "b", 3);
    assert_eq!(sent(&explicit.next_response(&view).unwrap()), ["b"]);
}

#[test]
fn named_subscribe_and_unsubscribe() {
    let mut view = Fake::default();
    view.put(RDS, "r1", 1);
    view.put(RDS, "r2", 1);
    let mut state = ads();
    handle(&mut state, &sub(RDS, &["r1"], &[]));
    let out = state.next_response(&view).unwrap();
    assert_eq!(sent(&out), ["r1"]);
    handle(&mut state, &ack_of(&out));
    // A new name gets just that name.
    handle(&mut state, &sub(RDS, &["r2"], &[]));
    let out = state.next_response(&view).unwrap();
    assert_eq!(sent(&out), ["r2"]);
    assert_eq!(held(&out), ["r1", "r2"]);
    // Subscribing again to a name held is nothing new.
    handle(&mut state, &sub(RDS, &["r2"], &[]));
    assert!(state.next_response(&view).is_none());
    // Unsubscribed: its changes are no longer sent, and its removal is not announced.
    handle(&mut state, &sub(RDS, &[], &["r1"]));
    view.put(RDS, "r1", 2);
    assert!(state.next_response(&view).is_none());
    view.remove(RDS, "r1");
    assert!(state.next_response(&view).is_none());
    // Subscribed again: sent again.
    view.put(RDS, "r1", 3);
    handle(&mut state, &sub(RDS, &["r1"], &[]));
    assert_eq!(sent(&state.next_response(&view).unwrap()), ["r1"]);
}

#[test]
fn a_name_unsubscribed_under_the_wildcard_is_sent_again() {
    let mut view = Fake::default();
    view.put(CDS, "a", 1);
    let mut state = ads();
    handle(&mut state, &sub(CDS, &["*", "a"], &[]));
    drain(&mut state, &view);
    handle(&mut state, &sub(CDS, &[], &["a"]));
    let out = state.next_response(&view).expect("the wildcard's copy");
    assert_eq!(sent(&out), ["a"]);
}

#[test]
fn a_missing_name_is_answered_in_removed_resources_once() {
    let mut view = Fake::default();
    view.put(EDS, "a", 1);
    let mut state = ads();
    handle(&mut state, &sub(EDS, &["a", "nope"], &[]));
    let out = state.next_response(&view).unwrap();
    assert_eq!(sent(&out), ["a"]);
    assert_eq!(out.removed, ["nope"]);
    assert_eq!(out.response().removed_resources, ["nope"]);
    handle(&mut state, &ack_of(&out));
    // Not repeated.
    view.put(EDS, "a", 2);
    let out = state.next_response(&view).unwrap();
    assert_eq!(sent(&out), ["a"]);
    assert!(out.removed.is_empty());
    // It appears: sent.
    view.put(EDS, "nope", 1);
    let out = state.next_response(&view).unwrap();
    assert_eq!(sent(&out), ["nope"]);
    // A later missing name is answered alone.
    handle(&mut state, &sub(EDS, &["later"], &[]));
    let out = state.next_response(&view).unwrap();
    assert!(out.resources.is_empty());
    assert_eq!(out.removed, ["later"]);
}

/// A view in which some names are on their way (a certificate being issued).
struct Pending<'a>(&'a Fake, &'a [&'a str]);

impl Resources for Pending<'_> {
    fn revision(&self) -> i64 {
        self.0.revision()
    }
    fn get(&self, t: ResourceType, name: &str) -> Option<&Arc<XdsResource>> {
        self.0.get(t, name)
    }
    fn wildcard(&self, t: ResourceType) -> Box<dyn Iterator<Item = &Arc<XdsResource>> + '_> {
        self.0.wildcard(t)
    }
    fn pending(&self, _t: ResourceType, name: &str) -> bool {
        self.1.contains(&name)
    }
}

#[test]
fn a_name_on_its_way_is_not_answered_as_missing() {
    let mut view = Fake::default();
    let mut state = ads();
    handle(&mut state, &sub(EDS, &["soon"], &[]));
    let out = state.next_response(&Pending(&view, &["soon"])).unwrap();
    assert!(out.removed.is_empty() && out.resources.is_empty());
    assert!(state.next_response(&Pending(&view, &["soon"])).is_none());
    view.put(EDS, "soon", 1);
    let out = state.next_response(&Pending(&view, &[])).unwrap();
    assert_eq!(sent(&out), ["soon"]);
}

#[test]
fn a_deleted_resource_is_removed() {
    let mut view = Fake::default();
    view.put(CDS, "a", 1);
    view.put(CDS, "b", 1);
    view.put(RDS, "r", 1);
    let mut state = ads();
    handle(&mut state, &sub(CDS, &[], &[]));
    handle(&mut state, &sub(RDS, &["r"], &[]));
    drain(&mut state, &view);
    view.remove(CDS, "b");
    view.remove(RDS, "r");
    let outs = drain(&mut state, &view);
    let removed: Vec<(Option<ResourceType>, Vec<String>)> =
        outs.iter().map(|o| (o.rtype, o.removed.clone())).collect();
    // Reverse push order: the route before the cluster.
    assert_eq!(
        removed,
        [
            (Some(RDS), vec!["r".to_owned()]),
            (Some(CDS), vec!["b".to_owned()])
        ]
    );
    assert!(outs.iter().all(|o| o.phase == Phase::Removal));
    assert_eq!(held(&outs[1]), ["a"]);
}

#[test]
fn a_reconnect_with_initial_versions_gets_only_what_changed() {
    let mut view = Fake::default();
    for name in ["same", "changed", "deleted"] {
        view.put(CDS, name, 1);
    }
    let mut before = ads();
    handle(&mut before, &sub(CDS, &[], &[]));
    let first = before.next_response(&view).unwrap();
    let versions: std::collections::HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    view.put(CDS, "changed", 2);
    view.remove(CDS, "deleted");
    view.put(CDS, "new", 1);

    let mut after = ads();
    let mut req = sub(CDS, &[], &[]);
    req.initial_resource_versions = versions;
    handle(&mut after, &req);
    let out = after.next_response(&view).unwrap();
    assert_eq!(sent(&out), ["changed", "new"]);
    assert_eq!(out.removed, ["deleted"]);
    assert_eq!(held(&out), ["changed", "new", "same"]);
    assert!(after.next_response(&view).is_none());

    // Everything current: one empty answer, nothing resent.
    let versions = out
        .state
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    let mut again = ads();
    let mut req = sub(CDS, &[], &[]);
    req.initial_resource_versions = versions;
    handle(&mut again, &req);
    let out2 = again.next_response(&view).unwrap();
    assert!(out2.resources.is_empty() && out2.removed.is_empty());
    // The same content has the same system version on any stream.
    assert_eq!(out2.system_version_info, out.system_version_info);
}

#[test]
fn a_named_reconnect_removes_what_no_longer_exists() {
    let mut view = Fake::default();
    view.put(RDS, "r1", 1);
    let version = view.get(RDS, "r1").unwrap().version.clone();
    let mut state = ads();
    let mut req = sub(RDS, &["r1", "r2"], &[]);
    req.initial_resource_versions = [
        ("r1".to_owned(), version),
        ("r2".to_owned(), "old".to_owned()),
        ("unsubscribed".to_owned(), "x".to_owned()),
    ]
    .into_iter()
    .collect();
    handle(&mut state, &req);
    let out = state.next_response(&view).unwrap();
    assert!(out.resources.is_empty());
    assert_eq!(out.removed, ["r2"]);
    assert_eq!(held(&out), ["r1"]);
    assert!(state.next_response(&view).is_none());
}

#[test]
fn ack_nack_and_stale_nonces() {
    let mut view = Fake::default();
    view.put(CDS, "a", 1);
    let mut state = ads();
    handle(&mut state, &sub(CDS, &[], &[]));
    let out = state.next_response(&view).unwrap();
    let Handled::Known { ack, nack, .. } = handle(&mut state, &ack_of(&out)) else {
        panic!("known type")
    };
    let ack = ack.expect("an ACK");
    assert_eq!(ack.nonce, out.nonce);
    assert_eq!(ack.version, out.system_version_info);
    assert_eq!(ack.revision, out.revision);
    assert!(nack.is_none());

    view.put(CDS, "a", 2);
    let bad = state.next_response(&view).unwrap();
    let Handled::Known { ack, nack, .. } = handle(&mut state, &nack_of(&bad)) else {
        panic!("known type")
    };
    assert!(ack.is_none());
    let nack = nack.expect("a NACK");
    assert_eq!(nack.names, ["a"]);
    assert_eq!(nack.message, "bad cluster");
    // The rejected version is not sent again...
    assert!(state.next_response(&view).is_none());
    // ...until it changes.
    view.put(CDS, "a", 3);
    let fixed = state.next_response(&view).unwrap();
    assert_eq!(sent(&fixed), ["a"]);

    // An old nonce is stale: no ACK, but its subscription changes apply.
    let mut old = ack_of(&out);
    old.resource_names_subscribe = strings(&["x"]);
    let Handled::Known {
        ack, nack, stale, ..
    } = handle(&mut state, &old)
    else {
        panic!("known type")
    };
    assert!(stale && ack.is_none() && nack.is_none());
    assert_eq!(state.subscription(CDS), Some((false, vec!["x".to_owned()])));
}

#[test]
fn updates_go_make_before_break() {
    let mut view = Fake::default();
    view.put(CDS, "old", 1);
    view.put(LDS, "l", 1);
    view.put(RDS, "r", 1);
    let mut state = ads();
    for (t, names) in [(LDS, &[][..]), (RDS, &["r"][..]), (CDS, &[][..])] {
        handle(&mut state, &sub(t, names, &[]));
    }
    let first: Vec<_> = drain(&mut state, &view).iter().map(|o| o.rtype).collect();
    assert_eq!(first, [Some(CDS), Some(LDS), Some(RDS)]);
    // The route moves from cluster `old` to `new`: the new cluster first, the route next,
    // and only then the old cluster goes.
    view.remove(CDS, "old");
    view.put(CDS, "new", 1);
    view.put(RDS, "r", 2);
    let outs = drain(&mut state, &view);
    let steps: Vec<_> = outs
        .iter()
        .map(|o| (o.rtype, sent(o), o.removed.clone(), o.phase))
        .collect();
    assert_eq!(
        steps,
        [
            (Some(CDS), vec!["new".to_owned()], vec![], Phase::Update),
            (Some(RDS), vec!["r".to_owned()], vec![], Phase::Update),
            (Some(CDS), vec![], vec!["old".to_owned()], Phase::Removal),
        ]
    );
    // With no later type to wait for, a type's removal goes with its update.
    view.remove(CDS, "new");
    view.put(CDS, "newer", 1);
    let out = state.next_response(&view).unwrap();
    assert_eq!(
        (sent(&out), out.removed.clone()),
        (vec!["newer".to_owned()], vec!["new".to_owned()])
    );
    assert!(state.next_response(&view).is_none());
}

#[test]
fn limits_are_enforced_with_precise_messages() {
    let limits = Limits {
        max_resource_names: 2,
    };
    let mut state = DeltaState::aggregated(limits);
    let err = state.handle(&sub(EDS, &["a", "b", "c"], &[])).unwrap_err();
    assert_eq!(
        err,
        DeltaError::TooManyNames {
            type_url: EDS.type_url().to_owned(),
            field: "resource_names_subscribe",
            count: 3,
            max: 2
        }
    );
    assert!(err.to_string().contains("resource_names_subscribe"));
    let err = state.handle(&sub(EDS, &[], &["a", "b", "c"])).unwrap_err();
    assert!(
        err.to_string().contains("resource_names_unsubscribe"),
        "{err}"
    );
    let mut req = sub(EDS, &[], &[]);
    req.initial_resource_versions = ["a", "b", "c"]
        .into_iter()
        .map(|n| (n.to_owned(), "v".to_owned()))
        .collect();
    let err = state.handle(&req).unwrap_err();
    assert!(
        err.to_string().contains("initial_resource_versions"),
        "{err}"
    );
    // Names add up across requests.
    let mut state = DeltaState::aggregated(limits);
    handle(&mut state, &sub(EDS, &["a", "b"], &[]));
    let err = state.handle(&sub(EDS, &["c"], &[])).unwrap_err();
    assert_eq!(
        err,
        DeltaError::SubscriptionTooLarge {
            type_url: EDS.type_url().to_owned(),
            count: 3,
            max: 2
        }
    );
    let mut req = sub(EDS, &[], &[]);
    req.resource_locators_subscribe = vec![Default::default()];
    assert_eq!(
        DeltaState::aggregated(limits).handle(&req),
        Err(DeltaError::Locators)
    );
}

#[test]
fn a_single_type_stream_serves_only_its_type() {
    let mut view = Fake::default();
    view.put(CDS, "a", 1);
    let mut cds = DeltaState::single(CDS, Limits::default());
    let err = cds.handle(&sub(LDS, &[], &[])).unwrap_err();
    assert!(matches!(
        err,
        DeltaError::Protocol(ProtocolError::WrongType { .. })
    ));
    assert!(err.to_string().contains("serves only"), "{err}");
    // Its own type may be left out.
    let mut own = sub(CDS, &[], &[]);
    own.type_url.clear();
    handle(&mut cds, &own);
    assert_eq!(sent(&cds.next_response(&view).unwrap()), ["a"]);
    // On ADS every request names its type.
    assert_eq!(
        ads().handle(&own),
        Err(DeltaError::Protocol(ProtocolError::MissingTypeUrl))
    );
}

#[test]
fn an_unknown_type_is_answered_once_with_nothing() {
    let view = Fake::default();
    let mut state = ads();
    let mut req = sub(CDS, &[], &[]);
    req.type_url = "type.googleapis.com/envoy.service.runtime.v3.Runtime".to_owned();
    assert!(matches!(
        handle(&mut state, &req),
        Handled::Unknown { first: true, .. }
    ));
    let out = state.next_response(&view).unwrap();
    assert_eq!(
        (out.rtype, out.type_url.as_str()),
        (None, req.type_url.as_str())
    );
    assert!(out.resources.is_empty() && out.removed.is_empty());
    assert!(state.next_response(&view).is_none());
    assert!(matches!(
        handle(&mut state, &req),
        Handled::Unknown { first: false, .. }
    ));
    assert!(state.next_response(&view).is_none());
}

#[test]
fn nonces_are_unique_per_stream() {
    let mut view = Fake::default();
    let mut state = ads();
    handle(&mut state, &sub(CDS, &[], &[]));
    handle(&mut state, &sub(LDS, &[], &[]));
    let mut nonces = BTreeSet::new();
    for v in 1..5 {
        view.put(CDS, "a", v);
        view.put(LDS, "l", v);
        for out in drain(&mut state, &view) {
            assert!(
                nonces.insert(out.nonce.clone()),
                "nonce {} reused",
                out.nonce
            );
        }
    }
}
