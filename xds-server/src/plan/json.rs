//! A changed resource's JSON diff for a plan: RFC 6902 operations between its proto3 JSON
//! before and after, a route configuration's compared virtual host by virtual host.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use switchboard_translator::XdsResource;
use switchboard_xds_proto::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use switchboard_xds_proto::{ResourceType, any_to_json, pack};

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

/// The JSON diff of a changed resource. A route configuration holds a virtual host per
/// route (the sidecars' outbound one, every route of the mesh): only its virtual hosts that
/// differ are rendered and compared, so one route's change costs that route.
pub(super) fn resource_diff(
    t: ResourceType,
    b: &Arc<XdsResource>,
    a: &Arc<XdsResource>,
) -> Vec<JsonChange> {
    if t == ResourceType::RouteConfiguration
        && let Some(d) = route_configuration_diff_encoded(b.value(), a.value())
    {
        return d;
    }
    if t == ResourceType::RouteConfiguration
        && let (Ok(rb), Ok(ra)) = (
            b.decode::<RouteConfiguration>(),
            a.decode::<RouteConfiguration>(),
        )
    {
        return route_configuration_diff(rb, ra);
    }
    json_diff(&json(b), &json(a))
}

/// As [`route_configuration_diff`], decoding only the virtual hosts whose bytes differ
/// (the translator names each after its route, so names are unique); `None` when the bytes
/// are not a message this can split.
fn route_configuration_diff_encoded(b: &[u8], a: &[u8]) -> Option<Vec<JsonChange>> {
    use prost::Message;
    let (rest_b, hosts_b) = split_virtual_hosts(b)?;
    let (rest_a, hosts_a) = split_virtual_hosts(a)?;
    let top_b = RouteConfiguration::decode(rest_b.as_slice()).ok()?;
    let top_a = RouteConfiguration::decode(rest_a.as_slice()).ok()?;
    let in_b: HashSet<&[u8]> = hosts_b.iter().copied().collect();
    let in_a: HashSet<&[u8]> = hosts_a.iter().copied().collect();
    let decode_others = |hosts: &[&[u8]], other: &HashSet<&[u8]>| {
        hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| !other.contains(*h))
            .map(|(i, h)| VirtualHost::decode(*h).map(|v| (i, v)))
            .collect::<Result<Vec<_>, _>>()
            .ok()
    };
    let old = decode_others(&hosts_b, &in_a)?;
    let new = decode_others(&hosts_a, &in_b)?;
    fn pairs(hosts: &[(usize, VirtualHost)]) -> Vec<(usize, &VirtualHost)> {
        hosts.iter().map(|(i, v)| (*i, v)).collect()
    }
    Some(virtual_hosts_diff(
        (&top_b, &top_a),
        pairs(&old),
        pairs(&new),
    ))
}

/// An encoded `RouteConfiguration` split into its other fields (still encoded) and its
/// virtual hosts' bytes (field 2), by the protobuf wire format; `None` on anything else.
fn split_virtual_hosts(msg: &[u8]) -> Option<(Vec<u8>, Vec<&[u8]>)> {
    fn varint(msg: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *msg.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut rest = Vec::new();
    let mut hosts = Vec::new();
    let mut at = 0;
    while at < msg.len() {
        let start = at;
        let key = varint(msg, &mut at)?;
        let end = match key & 7 {
            0 => {
                varint(msg, &mut at)?;
                at
            }
            1 => at.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(msg, &mut at)?).ok()?;
                let end = at.checked_add(len)?;
                if key >> 3 == 2 {
                    hosts.push(msg.get(at..end)?);
                    at = end;
                    continue;
                }
                end
            }
            5 => at.checked_add(4)?,
            _ => return None,
        };
        rest.extend_from_slice(msg.get(start..end)?);
        at = end;
    }
    Some((rest, hosts))
}

fn route_configuration_diff(
    mut b: RouteConfiguration,
    mut a: RouteConfiguration,
) -> Vec<JsonChange> {
    let hosts_before = std::mem::take(&mut b.virtual_hosts);
    let hosts_after = std::mem::take(&mut a.virtual_hosts);
    virtual_hosts_diff(
        (&b, &a),
        hosts_before.iter().enumerate().collect(),
        hosts_after.iter().enumerate().collect(),
    )
}

/// The diff of a route configuration's fields but its virtual hosts (`top`, before and
/// after), then of its virtual hosts matched by name: `old` and `new` are the hosts to
/// compare (every one, or those whose bytes differ) with their index in the list.
fn virtual_hosts_diff(
    (top_b, top_a): (&RouteConfiguration, &RouteConfiguration),
    old: Vec<(usize, &VirtualHost)>,
    new: Vec<(usize, &VirtualHost)>,
) -> Vec<JsonChange> {
    let mut out = json_diff(&message_json(top_b), &message_json(top_a));
    let before: HashMap<&str, &VirtualHost> =
        old.iter().map(|(_, v)| (v.name.as_str(), *v)).collect();
    let after: HashSet<&str> = new.iter().map(|(_, v)| v.name.as_str()).collect();
    for (i, host) in &new {
        let at = format!("/virtualHosts/{i}");
        match before.get(host.name.as_str()) {
            Some(old) if old == host => {}
            Some(old) => out.extend(
                json_diff(&message_json(*old), &message_json(*host))
                    .into_iter()
                    .map(|c| JsonChange {
                        path: format!("{at}{}", c.path),
                        ..c
                    }),
            ),
            None => out.push(JsonChange {
                op: "add",
                path: at,
                before: None,
                after: Some(message_json(*host)),
            }),
        }
    }
    for (i, host) in &old {
        if !after.contains(host.name.as_str()) {
            out.push(JsonChange {
                op: "remove",
                path: format!("/virtualHosts/{i}"),
                before: Some(message_json(*host)),
                after: None,
            });
        }
    }
    out
}

/// Proto3 JSON of one message (without the `@type` an `Any` adds).
fn message_json<M: prost::Message + prost::Name>(m: &M) -> Value {
    let mut v =
        any_to_json(&pack(m)).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
    if let Value::Object(o) = &mut v {
        o.remove("@type");
    }
    v
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
    use prost::Message;

    fn host(name: &str, domain: &str) -> VirtualHost {
        VirtualHost {
            name: name.to_owned(),
            domains: vec![domain.to_owned()],
            ..Default::default()
        }
    }

    #[test]
    fn the_encoded_route_configuration_diff_is_the_decoded_one() {
        let b = RouteConfiguration {
            name: "outbound".into(),
            virtual_hosts: vec![host("a", "a:80"), host("b", "b:80"), host("c", "c:80")],
            ..Default::default()
        };
        let a = RouteConfiguration {
            name: "outbound".into(),
            internal_only_headers: vec!["x-internal".into()],
            virtual_hosts: vec![host("a", "a:80"), host("c", "c:8080"), host("d", "d:80")],
            ..Default::default()
        };
        let encoded = route_configuration_diff_encoded(&b.encode_to_vec(), &a.encode_to_vec());
        let decoded = route_configuration_diff(b, a);
        assert_eq!(decoded.len(), 4, "{decoded:?}");
        assert_eq!(encoded, Some(decoded));
    }
}
