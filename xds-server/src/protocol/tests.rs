use std::collections::BTreeMap;
use std::sync::Arc;

use switchboard_translator::XdsResource;
use switchboard_xds_proto::{
    Cluster, ClusterLoadAssignment, DiscoveryRequest, Listener, Node, ResourceType,
    RouteConfiguration, Status,
};

use super::*;

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::ClusterLoadAssignment;
const LDS: ResourceType = ResourceType::Listener;
const RDS: ResourceType = ResourceType::RouteConfiguration;
const NODE: &str = "tenants/acme/meshes/prod/nodes/n1";

/// A fake mesh: every resource visible to the node.
#[derive(Default)]
pub(super) struct Fake {
    revision: i64,
    by_type: BTreeMap<ResourceType, BTreeMap<String, Arc<XdsResource>>>,
}

impl Fake {
    /// Adds or changes `name`; `v` goes into the message so a new `v` is a new version.
    pub(super) fn put(&mut self, t: ResourceType, name: &str, v: u32) {
        let tag = format!("v{v}");
        let r = match t {
            ResourceType::Cluster => XdsResource::new(
                name,
                &Cluster {
                    name: name.to_owned(),
                    alt_stat_name: tag,
                    ..Default::default()
                },
            ),
            ResourceType::ClusterLoadAssignment => XdsResource::new(
                name,
                &ClusterLoadAssignment {
                    cluster_name: format!("{name}/{tag}"),
                    ..Default::default()
                },
            ),
            ResourceType::Listener => XdsResource::new(
                name,
                &Listener {
                    name: name.to_owned(),
                    stat_prefix: tag,
                    ..Default::default()
                },
            ),
            ResourceType::RouteConfiguration => XdsResource::new(
                name,
                &RouteConfiguration {
                    name: name.to_owned(),
                    request_mirror_policies: vec![],
                    response_headers_to_remove: vec![tag],
                    ..Default::default()
                },
            ),
            ResourceType::Secret => unreachable!("no secrets in these tests"),
        };
        self.by_type
            .entry(t)
            .or_default()
            .insert(name.to_owned(), Arc::new(r));
        self.revision += 1;
    }

    pub(super) fn remove(&mut self, t: ResourceType, name: &str) {
        self.by_type.entry(t).or_default().remove(name);
        self.revision += 1;
    }
}

impl Resources for Fake {
    fn revision(&self) -> i64 {
        self.revision
    }
    fn get(&self, t: ResourceType, name: &str) -> Option<&Arc<XdsResource>> {
        self.by_type.get(&t)?.get(name)
    }
    fn wildcard(&self, t: ResourceType) -> Box<dyn Iterator<Item = &Arc<XdsResource>> + '_> {
        Box::new(self.by_type.get(&t).into_iter().flat_map(|m| m.values()))
    }
}

fn req(t: ResourceType, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        node: Some(Node {
            id: NODE.to_owned(),
            ..Default::default()
        }),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: t.type_url().to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// The ACK of `out`, subscribing to `names` of `t`.
fn ack_req(t: ResourceType, names: &[&str], out: &Outgoing) -> DiscoveryRequest {
    req(t, names, &out.response.version_info, &out.response.nonce)
}

fn nack_req(t: ResourceType, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(Status {
            code: 3,
            message: "bad cluster".to_owned(),
            details: vec![],
        }),
        ..req(t, names, version, nonce)
    }
}

fn names(out: &Outgoing) -> Vec<String> {
    out.state.iter().map(|r| r.name.clone()).collect()
}

fn sent(out: &Outgoing) -> Vec<String> {
    let t = out.rtype.unwrap();
    out.response
        .to_message()
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, t.type_url());
            match t {
                ResourceType::Cluster => {
                    switchboard_xds_proto::unpack::<Cluster>(any).unwrap().name
                }
                ResourceType::Listener => {
                    switchboard_xds_proto::unpack::<Listener>(any).unwrap().name
                }
                ResourceType::RouteConfiguration => {
                    switchboard_xds_proto::unpack::<RouteConfiguration>(any)
                        .unwrap()
                        .name
                }
                ResourceType::ClusterLoadAssignment => {
                    let c: ClusterLoadAssignment = switchboard_xds_proto::unpack(any).unwrap();
                    c.cluster_name.split('/').next().unwrap().to_owned()
                }
                ResourceType::Secret => unreachable!(),
            }
        })
        .collect()
}

fn ads() -> StreamState {
    StreamState::aggregated(Limits::default())
}

/// Sends the next response and ACKs it, returning it.
fn push_and_ack(s: &mut StreamState, view: &Fake, names_now: &[&str]) -> Outgoing {
    let out = s.next_response(view).expect("a response");
    let t = out.rtype.unwrap();
    let handled = s.handle(&ack_req(t, names_now, &out)).unwrap();
    assert!(
        matches!(handled, Handled::Known { ack: Some(_), .. }),
        "{handled:?}"
    );
    out
}

fn mesh() -> Fake {
    let mut f = Fake::default();
    f.put(CDS, "a", 1);
    f.put(CDS, "b", 1);
    f.put(EDS, "a", 1);
    f.put(EDS, "b", 1);
    f.put(LDS, "l", 1);
    f.put(RDS, "r1", 1);
    f.put(RDS, "r2", 1);
    f
}

#[test]
fn first_request_is_answered_and_ack_is_recorded() {
    let view = mesh();
    let mut s = ads();
    let h = s.handle(&req(CDS, &[], "", "")).unwrap();
    assert_eq!(
        h,
        Handled::Known {
            rtype: CDS,
            first: true,
            ack: None,
            nack: None,
            stale: false
        }
    );
    assert_eq!(s.node_id().unwrap().name, "n1");
    let out = s.next_response(&view).unwrap();
    assert_eq!(out.rtype, Some(CDS));
    assert_eq!(sent(&out), ["a", "b"]);
    assert_eq!(out.response.type_url, CDS.type_url());
    assert!(!out.response.version_info.is_empty());
    assert!(!out.response.nonce.is_empty());
    assert_eq!(out.revision, view.revision);
    assert!(s.next_response(&view).is_none(), "nothing more to send");
    let h = s.handle(&ack_req(CDS, &[], &out)).unwrap();
    let Handled::Known {
        ack: Some(ack),
        first: false,
        ..
    } = h
    else {
        panic!("{h:?}")
    };
    assert_eq!(ack.version, out.response.version_info);
    assert_eq!(ack.nonce, out.response.nonce);
    assert_eq!(ack.revision, view.revision);
    assert!(s.next_response(&view).is_none());
}

#[test]
fn versions_depend_on_content_only() {
    let view = mesh();
    let (mut a, mut b) = (ads(), ads());
    a.handle(&req(CDS, &[], "", "")).unwrap();
    b.handle(&req(LDS, &[], "", "")).unwrap();
    b.handle(&req(CDS, &[], "", "")).unwrap();
    let va = a.next_response(&view).unwrap().response.version_info;
    let vb = b.next_response(&view).unwrap().response.version_info;
    assert_eq!(va, vb);
    let mut other = mesh();
    other.put(CDS, "a", 2);
    let mut c = ads();
    c.handle(&req(CDS, &[], "", "")).unwrap();
    assert_ne!(c.next_response(&other).unwrap().response.version_info, va);
}

#[test]
fn nack_is_recorded_and_the_version_not_resent() {
    let mut view = mesh();
    let mut s = ads();
    s.handle(&req(CDS, &[], "", "")).unwrap();
    let first = push_and_ack(&mut s, &view, &[]);
    view.put(CDS, "a", 2);
    let bad = s.next_response(&view).unwrap();
    let h = s
        .handle(&nack_req(
            CDS,
            &[],
            &first.response.version_info,
            &bad.response.nonce,
        ))
        .unwrap();
    let Handled::Known {
        nack: Some(nack),
        ack: None,
        ..
    } = h
    else {
        panic!("{h:?}")
    };
    assert_eq!(nack.version, bad.response.version_info);
    assert_eq!(nack.kept_version, first.response.version_info);
    assert_eq!(nack.message, "bad cluster");
    assert_eq!(nack.names, ["a", "b"]);
    assert!(
        s.next_response(&view).is_none(),
        "the NACKed version is not sent again"
    );
    // A later change is sent.
    view.put(CDS, "a", 3);
    let fixed = s.next_response(&view).unwrap();
    assert_ne!(fixed.response.version_info, bad.response.version_info);
    s.handle(&ack_req(CDS, &[], &fixed)).unwrap();
    assert!(s.next_response(&view).is_none());
}

#[test]
fn stale_nonce_neither_acks_nor_nacks_but_subscribes() {
    let mut view = mesh();
    let mut s = ads();
    s.handle(&req(RDS, &["r1"], "", "")).unwrap();
    let one = s.next_response(&view).unwrap();
    assert_eq!(sent(&one), ["r1"]);
    view.put(RDS, "r1", 2);
    let two = s.next_response(&view).unwrap();
    // A NACK of the first response arrives after the second was sent: stale.
    let h = s
        .handle(&nack_req(RDS, &["r1", "r2"], "", &one.response.nonce))
        .unwrap();
    assert_eq!(
        h,
        Handled::Known {
            rtype: RDS,
            first: false,
            ack: None,
            nack: None,
            stale: true
        }
    );
    // ...but r2 was subscribed.
    let three = s.next_response(&view).unwrap();
    assert_eq!(sent(&three), ["r2"]);
    // The latest nonce ACKs.
    let h = s.handle(&ack_req(RDS, &["r1", "r2"], &three)).unwrap();
    assert!(matches!(
        h,
        Handled::Known {
            ack: Some(_),
            stale: false,
            ..
        }
    ));
    let _ = two;
    // An ACK with an unknown nonce is stale too.
    let h = s.handle(&req(RDS, &["r1", "r2"], "x", "999")).unwrap();
    assert!(matches!(
        h,
        Handled::Known {
            stale: true,
            ack: None,
            ..
        }
    ));
}

#[test]
fn legacy_and_explicit_wildcard() {
    let mut view = mesh();
    let mut legacy = ads();
    legacy.handle(&req(CDS, &[], "", "")).unwrap();
    assert_eq!(names(&push_and_ack(&mut legacy, &view, &[])), ["a", "b"]);
    let mut explicit = ads();
    explicit.handle(&req(CDS, &["*"], "", "")).unwrap();
    assert_eq!(
        names(&push_and_ack(&mut explicit, &view, &["*"])),
        ["a", "b"]
    );
    assert_eq!(explicit.subscription(CDS), Some((true, vec![])));
    // Both see a new cluster.
    view.put(CDS, "c", 1);
    assert_eq!(
        names(&push_and_ack(&mut legacy, &view, &[])),
        ["a", "b", "c"]
    );
    assert_eq!(
        names(&push_and_ack(&mut explicit, &view, &["*"])),
        ["a", "b", "c"]
    );
    // After an explicit list, an empty one means nothing rather than everything.
    explicit.handle(&req(CDS, &[], "", "")).unwrap();
    assert_eq!(explicit.subscription(CDS), Some((false, vec![])));
    view.put(CDS, "d", 1);
    assert!(explicit.next_response(&view).is_none());
    // Wildcard plus a name: the name is sent even though it is unchanged.
    let mut rds = ads();
    rds.handle(&req(RDS, &["*"], "", "")).unwrap();
    assert_eq!(sent(&push_and_ack(&mut rds, &view, &["*"])), ["r1", "r2"]);
    rds.handle(&req(RDS, &["*", "r2"], "", "")).unwrap();
    assert_eq!(sent(&rds.next_response(&view).unwrap()), ["r2"]);
}

#[test]
fn named_subscribe_and_unsubscribe() {
    let mut view = mesh();
    let mut s = ads();
    s.handle(&req(EDS, &["a"], "", "")).unwrap();
    let one = push_and_ack(&mut s, &view, &["a"]);
    assert_eq!(sent(&one), ["a"]);
    // Adding b sends only b (EDS responses carry what changed).
    s.handle(&ack_req(EDS, &["a", "b"], &one)).unwrap();
    let two = push_and_ack(&mut s, &view, &["a", "b"]);
    assert_eq!(sent(&two), ["b"]);
    assert_eq!(names(&two), ["a", "b"]);
    // Changes to an unsubscribed resource are not sent.
    s.handle(&ack_req(EDS, &["a"], &two)).unwrap();
    view.put(EDS, "b", 2);
    assert!(s.next_response(&view).is_none());
    // Resubscribing sends it again.
    s.handle(&req(EDS, &["a", "b"], "", "")).unwrap();
    assert_eq!(sent(&s.next_response(&view).unwrap()), ["b"]);
    // Full-state types list every subscribed resource.
    s.handle(&req(CDS, &["a"], "", "")).unwrap();
    let c = push_and_ack(&mut s, &view, &["a"]);
    assert_eq!(sent(&c), ["a"]);
    s.handle(&req(CDS, &["a", "b"], "", "")).unwrap();
    assert_eq!(sent(&push_and_ack(&mut s, &view, &["a", "b"])), ["a", "b"]);
}

#[test]
fn resources_that_appear_later_are_pushed() {
    let mut view = mesh();
    let mut s = ads();
    s.handle(&req(RDS, &["later"], "", "")).unwrap();
    assert!(
        s.next_response(&view).is_none(),
        "nothing to say about a missing route yet"
    );
    view.put(RDS, "later", 1);
    assert_eq!(sent(&s.next_response(&view).unwrap()), ["later"]);
    // A missing listener is answered at once with the (empty) full state, then sent when it
    // appears.
    s.handle(&req(LDS, &["soon"], "", "")).unwrap();
    let empty = s.next_response(&view).unwrap();
    assert_eq!(empty.rtype, Some(LDS));
    assert!(empty.response.resources.is_empty());
    view.put(LDS, "soon", 1);
    assert_eq!(sent(&s.next_response(&view).unwrap()), ["soon"]);
}

#[test]
fn removed_route_configurations_are_forgotten_and_resent_when_back() {
    let mut view = mesh();
    let mut s = ads();
    s.handle(&req(RDS, &["r1"], "", "")).unwrap();
    push_and_ack(&mut s, &view, &["r1"]);
    view.remove(RDS, "r1");
    assert!(s.next_response(&view).is_none());
    view.put(RDS, "r1", 1);
    assert_eq!(sent(&s.next_response(&view).unwrap()), ["r1"]);
}

#[test]
fn make_before_break_order() {
    let mut view = mesh();
    let mut s = ads();
    for (t, n) in [
        (LDS, &[][..]),
        (RDS, &["r1", "r3"][..]),
        (CDS, &[][..]),
        (EDS, &["a", "b", "c"][..]),
    ] {
        s.handle(&req(t, n, "", "")).unwrap();
    }
    let mut order = vec![];
    while let Some(out) = s.next_response(&view) {
        order.push(out.rtype.unwrap());
    }
    assert_eq!(order, [CDS, EDS, LDS, RDS]);
    // A change adds cluster c with its endpoints, route r3 pointing at it, and changes the
    // listener: clusters and endpoints go out before the listener and route.
    view.put(RDS, "r3", 1);
    view.put(LDS, "l", 2);
    view.put(EDS, "c", 1);
    view.put(CDS, "c", 1);
    let mut order = vec![];
    while let Some(out) = s.next_response(&view) {
        order.push((out.rtype.unwrap(), sent(&out)));
    }
    assert_eq!(
        order,
        [
            (CDS, vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]),
            (EDS, vec!["c".to_owned()]),
            (LDS, vec!["l".to_owned()]),
            (RDS, vec!["r3".to_owned()]),
        ]
    );
}

#[test]
fn removals_go_last() {
    let mut view = mesh();
    let mut s = ads();
    for (t, n) in [(LDS, &[][..]), (RDS, &["r1"][..]), (CDS, &[][..])] {
        s.handle(&req(t, n, "", "")).unwrap();
    }
    while s.next_response(&view).is_some() {}
    // Cluster b goes, cluster c comes, and the route moves from b to c: CDS keeps b until the
    // route is out, then drops it.
    view.remove(CDS, "b");
    view.put(CDS, "c", 1);
    view.put(RDS, "r1", 2);
    let mut order = vec![];
    while let Some(out) = s.next_response(&view) {
        order.push((out.rtype.unwrap(), out.phase, sent(&out)));
    }
    let v = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        order,
        [
            (CDS, Phase::Update, v(&["a", "b", "c"])),
            (RDS, Phase::Update, v(&["r1"])),
            (CDS, Phase::Removal, v(&["a", "c"])),
        ]
    );
    // Removing a listener and a cluster alone: listener first (removal order).
    view.remove(LDS, "l");
    view.remove(CDS, "c");
    let mut order = vec![];
    while let Some(out) = s.next_response(&view) {
        order.push((out.rtype.unwrap(), out.phase, sent(&out)));
    }
    assert_eq!(
        order,
        [
            (LDS, Phase::Removal, v(&[])),
            (CDS, Phase::Removal, v(&["a"])),
        ]
    );
}

#[test]
fn unknown_types_get_one_empty_answer_and_do_not_disturb_others() {
    let view = mesh();
    let mut s = ads();
    let url = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
    let mut r = req(CDS, &[], "", "");
    r.type_url = url.to_owned();
    assert_eq!(
        s.handle(&r).unwrap(),
        Handled::Unknown {
            type_url: url.to_owned(),
            first: true
        }
    );
    s.handle(&req(CDS, &[], "", "")).unwrap();
    let out = s.next_response(&view).unwrap();
    assert_eq!(out.rtype, None);
    assert_eq!(out.response.type_url, url);
    assert!(out.response.resources.is_empty());
    let cds = push_and_ack(&mut s, &view, &[]);
    assert_eq!(cds.rtype, Some(CDS));
    // Its ACK and later requests are ignored.
    let mut ack = req(CDS, &[], "", &out.response.nonce);
    ack.type_url = url.to_owned();
    assert!(matches!(
        s.handle(&ack).unwrap(),
        Handled::Unknown { first: false, .. }
    ));
    assert!(s.next_response(&view).is_none());
    // Unknown type URLs are remembered only up to a limit.
    for i in 0..100 {
        let mut r = req(CDS, &[], "", "");
        r.type_url = format!("type.googleapis.com/x.Y{i}");
        s.handle(&r).unwrap();
    }
    let mut answered = 0;
    while s.next_response(&view).is_some() {
        answered += 1;
    }
    assert_eq!(answered, MAX_UNKNOWN_TYPES - 1);
}

#[test]
fn too_many_names_is_an_error() {
    let mut s = StreamState::aggregated(Limits {
        max_resource_names: 3,
    });
    assert!(s.handle(&req(EDS, &["a", "b", "c"], "", "")).is_ok());
    let err = s
        .handle(&req(EDS, &["a", "b", "c", "d"], "", ""))
        .unwrap_err();
    assert_eq!(
        err,
        ProtocolError::TooManyNames {
            type_url: EDS.type_url().to_owned(),
            count: 4,
            max: 3
        }
    );
    assert!(err.to_string().contains("wildcard"), "{err}");
    let many: Vec<String> = (0..=MAX_RESOURCE_NAMES).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(matches!(
        ads().handle(&req(EDS, &many, "", "")),
        Err(ProtocolError::TooManyNames { .. })
    ));
}

#[test]
fn node_rules() {
    let mut s = ads();
    let mut r = req(CDS, &[], "", "");
    r.node = None;
    assert_eq!(
        s.handle(&r).unwrap_err(),
        ProtocolError::Node(NodeError::Missing)
    );
    r.node = Some(Node {
        id: "envoy".to_owned(),
        ..Default::default()
    });
    let err = s.handle(&r).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::Node(NodeError::MalformedId { .. })
    ));
    assert!(err.to_string().contains(crate::node::NODE_ID_FORM));
    // The node is remembered; later requests may omit it but not change it.
    s.handle(&req(CDS, &[], "", "")).unwrap();
    let mut later = req(EDS, &["a"], "", "");
    later.node = None;
    s.handle(&later).unwrap();
    later.node = Some(Node::default());
    s.handle(&later).unwrap();
    later.node = Some(Node {
        id: "tenants/acme/meshes/prod/nodes/other".to_owned(),
        ..Default::default()
    });
    assert!(matches!(
        s.handle(&later),
        Err(ProtocolError::NodeChanged { .. })
    ));
    let mut no_type = req(CDS, &[], "", "");
    no_type.type_url.clear();
    assert_eq!(
        s.handle(&no_type).unwrap_err(),
        ProtocolError::MissingTypeUrl
    );
}

#[test]
fn single_type_streams() {
    let view = mesh();
    let mut s = StreamState::single(CDS, Limits::default());
    let mut r = req(CDS, &[], "", "");
    r.type_url.clear();
    s.handle(&r).unwrap();
    let out = s.next_response(&view).unwrap();
    assert_eq!(out.response.type_url, CDS.type_url());
    let err = s.handle(&req(LDS, &[], "", "")).unwrap_err();
    assert!(
        matches!(err, ProtocolError::WrongType { service: "CDS", .. }),
        "{err}"
    );
}

#[test]
fn newly_requested_listener_names_get_a_full_state_answer() {
    let mut view = mesh();
    view.put(LDS, "m", 1);
    let mut s = ads();
    s.handle(&req(LDS, &["l"], "", "")).unwrap();
    let one = push_and_ack(&mut s, &view, &["l"]);
    assert_eq!(sent(&one), ["l"]);
    s.handle(&req(LDS, &["l", "m", "missing"], "", "")).unwrap();
    assert_eq!(
        sent(&push_and_ack(&mut s, &view, &["l", "m", "missing"])),
        ["l", "m"]
    );
    // Unsubscribing needs no answer.
    s.handle(&req(LDS, &["l"], "", "")).unwrap();
    assert!(s.next_response(&view).is_none());
    assert_eq!(s.subscription(LDS), Some((false, vec!["l".to_owned()])));
    assert_eq!(s.requested_types().collect::<Vec<_>>(), [LDS]);
}

#[test]
fn reconnect_is_a_new_stream_that_gets_everything() {
    let view = mesh();
    let mut s = ads();
    s.handle(&req(CDS, &[], "", "")).unwrap();
    let before = push_and_ack(&mut s, &view, &[]);
    // A new stream: the client says which version it has, and is answered anyway.
    let mut again = ads();
    again
        .handle(&req(CDS, &[], &before.response.version_info, ""))
        .unwrap();
    let out = again.next_response(&view).unwrap();
    assert_eq!(out.response.version_info, before.response.version_info);
    assert_eq!(sent(&out), ["a", "b"]);
}

#[test]
fn wildcard_routes_with_nothing_get_an_empty_answer() {
    let view = Fake::default();
    let mut s = ads();
    s.handle(&req(RDS, &[], "", "")).unwrap();
    let out = s.next_response(&view).unwrap();
    assert!(out.response.resources.is_empty());
    assert!(s.next_response(&view).is_none());
}
