//! Who an xDS client says it is: its node id and, from its node metadata, its role.
//!
//! Both are untrusted input read from the first request of a stream. Pure: no IO.

use std::fmt;
use std::net::IpAddr;

use switchboard_model::is_dns_label;
use switchboard_model::spec::Protocol;
use switchboard_translator::{NodeRole, SidecarParams, names, sidecar_inbound};
use switchboard_xds_proto::Node;
use switchboard_xds_proto::pb::google::protobuf::{Struct, value::Kind};

/// The form every node id must take (ARCHITECTURE.md, tenancy and naming), quoted in error
/// messages.
pub const NODE_ID_FORM: &str = "tenants/{tenant}/meshes/{mesh}/nodes/{name}";

/// Where a sidecar accepts mesh traffic when its metadata does not say.
pub const DEFAULT_INBOUND_PORT: u32 = 15006;

/// Longest node name accepted (the last segment of the node id).
const MAX_NODE_NAME: usize = 253;

/// A parsed `node.id`: `tenants/{tenant}/meshes/{mesh}/nodes/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub tenant: String,
    pub mesh: String,
    /// The proxy's own name, unique within the mesh by convention (not enforced).
    pub name: String,
}

impl NodeId {
    /// Parses a node id. Tenant and mesh must be DNS labels; the name 1 to 253 characters of
    /// ASCII letters, digits, `-`, `.`, `_` or `:` (room for pod names and host:port forms).
    pub fn parse(id: &str) -> Result<NodeId, NodeError> {
        let malformed = || NodeError::MalformedId { id: truncate(id) };
        let mut parts = id.split('/');
        let mut next = |expected: &str| -> Result<&str, NodeError> {
            match (parts.next(), parts.next()) {
                (Some(label), Some(value)) if label == expected => Ok(value),
                _ => Err(malformed()),
            }
        };
        let tenant = next("tenants")?;
        let mesh = next("meshes")?;
        let name = next("nodes")?;
        if parts.next().is_some()
            || !is_dns_label(tenant)
            || !is_dns_label(mesh)
            || !valid_node_name(name)
        {
            return Err(malformed());
        }
        Ok(NodeId {
            tenant: tenant.to_owned(),
            mesh: mesh.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenants/{}/meshes/{}/nodes/{}",
            self.tenant, self.mesh, self.name
        )
    }
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b':'))
}

/// Keeps an echoed, untrusted id short in messages and logs.
fn truncate(id: &str) -> String {
    const MAX: usize = 300;
    if id.len() <= MAX {
        return id.to_owned();
    }
    let mut end = MAX;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &id[..end])
}

/// What is wrong with a node's id or metadata. Every message says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error(
        "the first request of a stream must carry node.id; set it to {NODE_ID_FORM} in the \
         bootstrap (node.id)"
    )]
    Missing,
    #[error(
        "node.id {id:?} is malformed: expected {NODE_ID_FORM}, where tenant and mesh are DNS \
         labels (lowercase letters, digits, '-') and name is 1 to 253 letters, digits, '-', '.', \
         '_' or ':'"
    )]
    MalformedId { id: String },
    #[error(
        "node metadata role {role:?} is not known: use \"sidecar\" or \"gateway\", or leave it \
         out for a proxyless gRPC client"
    )]
    UnknownRole { role: String },
    #[error("node metadata role {role:?} needs metadata {field:?}: {hint}")]
    MissingField {
        role: &'static str,
        field: &'static str,
        hint: &'static str,
    },
    #[error("node metadata {field:?} is {value}: {hint}")]
    InvalidField {
        field: &'static str,
        value: String,
        hint: String,
    },
}

/// The role a node's metadata declares: `role: sidecar` (with `service`, `app_port` and
/// optionally `inbound_port`), `role: gateway` (with `gateway`), or nothing for a proxyless
/// gRPC client. Ports may be numbers or strings of digits.
pub fn node_role(node: &Node) -> Result<NodeRole, NodeError> {
    let Some(meta) = node.metadata.as_ref() else {
        return Ok(NodeRole::Proxyless);
    };
    let Some(role) = string_field(meta, "role")? else {
        return Ok(NodeRole::Proxyless);
    };
    match role.as_str() {
        "" | "proxyless" => Ok(NodeRole::Proxyless),
        "sidecar" => {
            let service = string_field(meta, "service")?.ok_or(NodeError::MissingField {
                role: "sidecar",
                field: "service",
                hint: "name the service whose application this sidecar fronts",
            })?;
            check_label("service", &service)?;
            let app_port = port_field(meta, "app_port")?.ok_or(NodeError::MissingField {
                role: "sidecar",
                field: "app_port",
                hint: "give the port the local application listens on (on 127.0.0.1)",
            })?;
            let inbound_port = port_field(meta, "inbound_port")?.unwrap_or(DEFAULT_INBOUND_PORT);
            let outbound_port = port_field(meta, "outbound_port")?.unwrap_or(names::OUTBOUND_PORT);
            let params = SidecarParams {
                service,
                inbound_port,
                app_port,
                outbound_port,
            };
            // The translator owns the port rules; ask it now so a bad node fails at connect.
            sidecar_inbound(&params, Protocol::default()).map_err(|e| NodeError::InvalidField {
                field: "inbound_port/app_port/outbound_port",
                value: format!("{inbound_port}/{app_port}/{outbound_port}"),
                hint: e.to_string(),
            })?;
            Ok(NodeRole::Sidecar(params))
        }
        "gateway" => {
            let name = string_field(meta, "gateway")?.ok_or(NodeError::MissingField {
                role: "gateway",
                field: "gateway",
                hint: "name the gateway resource this proxy serves",
            })?;
            check_label("gateway", &name)?;
            Ok(NodeRole::Gateway { name })
        }
        _ => Err(NodeError::UnknownRole {
            role: truncate(&role),
        }),
    }
}

/// The node metadata key in which a proxyless gRPC client or xDS-enabled server lists the
/// certificate provider instances its bootstrap defines (`switchboard bootstrap grpc
/// --certificate-dir` writes it beside `certificate_providers`).
pub const CERTIFICATE_PROVIDERS_FIELD: &str = "certificate_providers";

/// Whether the node's bootstrap defines certificate provider instance
/// [`names::CERTIFICATE_PROVIDER_INSTANCE`] (metadata `certificate_providers`, a list of
/// instance names). Only then may it be sent clusters naming it (gRFC A29): gRPC NACKs a
/// resource naming an instance its bootstrap lacks, whatever its channel credentials.
pub fn has_certificate_providers(node: &Node) -> Result<bool, NodeError> {
    let field = CERTIFICATE_PROVIDERS_FIELD;
    let Some(meta) = node.metadata.as_ref() else {
        return Ok(false);
    };
    let invalid = || NodeError::InvalidField {
        field,
        value: "not a list of strings".to_owned(),
        hint: format!(
            "set {field} to the names of the bootstrap's certificate provider instances, such \
             as [\"{}\"]",
            names::CERTIFICATE_PROVIDER_INSTANCE
        ),
    };
    match meta.fields.get(field).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Ok(false),
        Some(Kind::ListValue(list)) => {
            let mut found = false;
            for v in &list.values {
                match &v.kind {
                    Some(Kind::StringValue(s)) => {
                        found |= s == names::CERTIFICATE_PROVIDER_INSTANCE;
                    }
                    _ => return Err(invalid()),
                }
            }
            Ok(found)
        }
        Some(_) => Err(invalid()),
    }
}

/// A short description of a role for logs and status ("sidecar of payments").
pub fn describe_role(role: &NodeRole) -> String {
    match role {
        NodeRole::Proxyless => "proxyless".to_owned(),
        NodeRole::Sidecar(p) => format!("sidecar of {}", p.service),
        NodeRole::Gateway { name } => format!("gateway {name}"),
    }
}

/// Where a sidecar is reached, for its registration as an endpoint of its service
/// (a connected sidecar registers itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SidecarEndpointMeta {
    /// Metadata `address`; when absent the stream's peer address is used.
    pub address: Option<IpAddr>,
    /// From `node.locality`, else metadata `region` and `zone`.
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

/// Longest locality field an endpoint accepts (the model's rule).
const MAX_LOCALITY: usize = 128;

/// Reads a sidecar's endpoint metadata: `address` (an IP literal, neither unspecified nor
/// multicast; an IPv4-mapped IPv6 address counts as IPv4) and the locality, field by field
/// from `node.locality` or else from metadata `region` and `zone`.
pub fn sidecar_endpoint_meta(node: &Node) -> Result<SidecarEndpointMeta, NodeError> {
    let empty = Struct::default();
    let meta = node.metadata.as_ref().unwrap_or(&empty);
    let address = match string_field(meta, "address")? {
        None => None,
        Some(text) => {
            let invalid = |what: &str| NodeError::InvalidField {
                field: "address",
                value: format!("{:?}", truncate(&text)),
                hint: format!(
                    "{what}: set address to the IP address other proxies reach this sidecar at \
                     (such as 10.0.0.7 or fd00::7), or leave it out to use the address the xDS \
                     stream comes from"
                ),
            };
            let ip = text
                .parse::<IpAddr>()
                .map_err(|_| invalid("not an IP address"))?
                .to_canonical();
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(invalid("not the address of one host"));
            }
            Some(ip)
        }
    };
    let locality = node.locality.clone().unwrap_or_default();
    let pick = |from_node: String,
                node_field: &'static str,
                meta_field: Option<&'static str>|
     -> Result<String, NodeError> {
        let (value, field) = if !from_node.is_empty() {
            (from_node, node_field)
        } else if let Some(f) = meta_field {
            (string_field(meta, f)?.unwrap_or_default(), f)
        } else {
            (from_node, node_field)
        };
        if value.len() > MAX_LOCALITY || value.chars().any(char::is_control) {
            return Err(NodeError::InvalidField {
                field,
                value: format!("{:?}", truncate(&value)),
                hint: format!("use at most {MAX_LOCALITY} printable characters"),
            });
        }
        Ok(value)
    };
    Ok(SidecarEndpointMeta {
        address,
        region: pick(locality.region, "locality.region", Some("region"))?,
        zone: pick(locality.zone, "locality.zone", Some("zone"))?,
        sub_zone: pick(locality.sub_zone, "locality.sub_zone", None)?,
    })
}

fn check_label(field: &'static str, value: &str) -> Result<(), NodeError> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(NodeError::InvalidField {
            field,
            value: format!("{:?}", truncate(value)),
            hint: "use the resource's name: a DNS label (lowercase letters, digits, '-')"
                .to_owned(),
        })
    }
}

fn string_field(meta: &Struct, field: &'static str) -> Result<Option<String>, NodeError> {
    match meta.fields.get(field).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Ok(None),
        Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
        Some(_) => Err(NodeError::InvalidField {
            field,
            value: "not a string".to_owned(),
            hint: format!("set {field} to a string"),
        }),
    }
}

fn port_field(meta: &Struct, field: &'static str) -> Result<Option<u32>, NodeError> {
    let invalid = |value: String| NodeError::InvalidField {
        field,
        value,
        hint: format!("set {field} to a port from 1 to 65535"),
    };
    let port = match meta.fields.get(field).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => return Ok(None),
        Some(Kind::NumberValue(n)) => {
            if n.fract() != 0.0 || !(1.0..=65535.0).contains(n) {
                return Err(invalid(n.to_string()));
            }
            *n as u32
        }
        Some(Kind::StringValue(s)) => s
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| invalid(format!("{:?}", truncate(s))))?,
        Some(_) => return Err(invalid("neither a number nor a string".to_owned())),
    };
    Ok(Some(port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_xds_proto::pb::google::protobuf::Value;

    fn node(fields: &[(&str, Kind)]) -> Node {
        Node {
            id: "tenants/acme/meshes/prod/nodes/a".to_owned(),
            metadata: Some(Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            Value {
                                kind: Some(v.clone()),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> Kind {
        Kind::StringValue(v.to_owned())
    }

    #[test]
    fn parses_node_ids() {
        let id = NodeId::parse("tenants/acme/meshes/prod/nodes/pay-7f9c.x_1:2").unwrap();
        assert_eq!(id.tenant, "acme");
        assert_eq!(id.mesh, "prod");
        assert_eq!(id.name, "pay-7f9c.x_1:2");
        assert_eq!(
            id.to_string(),
            "tenants/acme/meshes/prod/nodes/pay-7f9c.x_1:2"
        );
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "envoy-1",
            "tenants/acme/meshes/prod/nodes",
            "tenants/acme/meshes/prod/nodes/",
            "tenants/acme/meshes/prod/nodes/a/b",
            "tenant/acme/meshes/prod/nodes/a",
            "tenants/Acme/meshes/prod/nodes/a",
            "tenants/acme/meshes/pr od/nodes/a",
            "tenants//meshes/prod/nodes/a",
            "tenants/acme/meshes/prod/nodes/a b",
            &format!("tenants/acme/meshes/prod/nodes/{}", "x".repeat(254)),
        ] {
            let err = NodeId::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains(NODE_ID_FORM),
                "{bad:?}: {err} should name the expected form"
            );
        }
    }

    #[test]
    fn long_ids_are_truncated_in_messages() {
        let id = "é".repeat(1000);
        let msg = NodeId::parse(&id).unwrap_err().to_string();
        assert!(msg.len() < 1000, "{msg}");
    }

    #[test]
    fn roles() {
        assert_eq!(node_role(&Node::default()).unwrap(), NodeRole::Proxyless);
        assert_eq!(node_role(&node(&[])).unwrap(), NodeRole::Proxyless);
        assert_eq!(
            node_role(&node(&[("role", s("gateway")), ("gateway", s("edge"))])).unwrap(),
            NodeRole::Gateway {
                name: "edge".to_owned()
            }
        );
        assert_eq!(
            node_role(&node(&[
                ("role", s("sidecar")),
                ("service", s("pay")),
                ("app_port", Kind::NumberValue(8080.0)),
            ]))
            .unwrap(),
            NodeRole::Sidecar(SidecarParams {
                service: "pay".to_owned(),
                inbound_port: DEFAULT_INBOUND_PORT,
                app_port: 8080,
                outbound_port: 15001,
            })
        );
        assert_eq!(
            node_role(&node(&[
                ("role", s("sidecar")),
                ("service", s("pay")),
                ("app_port", s("8080")),
                ("inbound_port", s("15007")),
            ]))
            .unwrap(),
            NodeRole::Sidecar(SidecarParams {
                service: "pay".to_owned(),
                inbound_port: 15007,
                app_port: 8080,
                outbound_port: 15001,
            })
        );
    }

    #[test]
    fn sidecar_endpoint_metadata() {
        let meta = sidecar_endpoint_meta(&node(&[
            ("address", s("10.0.0.7")),
            ("region", s("eu")),
            ("zone", s("eu-1")),
        ]))
        .unwrap();
        assert_eq!(meta.address, Some("10.0.0.7".parse().unwrap()));
        assert_eq!((meta.region.as_str(), meta.zone.as_str()), ("eu", "eu-1"));
        let mapped = sidecar_endpoint_meta(&node(&[("address", s("::ffff:10.0.0.8"))])).unwrap();
        assert_eq!(mapped.address, Some("10.0.0.8".parse().unwrap()));
        assert_eq!(
            sidecar_endpoint_meta(&Node::default()).unwrap(),
            SidecarEndpointMeta::default()
        );
        // node.locality wins over metadata, field by field.
        let mut n = node(&[("region", s("meta-region")), ("zone", s("meta-zone"))]);
        n.locality = Some(
            switchboard_xds_proto::pb::envoy::config::core::v3::Locality {
                region: "us".to_owned(),
                zone: String::new(),
                sub_zone: "rack-1".to_owned(),
            },
        );
        let meta = sidecar_endpoint_meta(&n).unwrap();
        assert_eq!(
            (
                meta.region.as_str(),
                meta.zone.as_str(),
                meta.sub_zone.as_str()
            ),
            ("us", "meta-zone", "rack-1")
        );
    }

    #[test]
    fn bad_sidecar_endpoint_metadata_names_the_field() {
        for (value, expected) in [
            (s("pay.example.com"), "not an IP address"),
            (s("10.0.0.300"), "not an IP address"),
            (s("0.0.0.0"), "not the address of one host"),
            (s("ff02::1"), "not the address of one host"),
            (Kind::NumberValue(10.0), "string"),
        ] {
            let err = sidecar_endpoint_meta(&node(&[("address", value.clone())])).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("\"address\""), "{value:?}: {msg}");
            assert!(msg.contains(expected), "{value:?}: {msg}");
        }
        let err = sidecar_endpoint_meta(&node(&[("zone", s(&"z".repeat(129)))])).unwrap_err();
        assert!(err.to_string().contains("\"zone\""), "{err}");
    }

    #[test]
    fn bad_roles_say_what_to_do() {
        let cases: [(&[(&str, Kind)], &str); 6] = [
            (&[("role", s("mesh"))], "not known"),
            (&[("role", s("gateway"))], "\"gateway\""),
            (
                &[("role", s("sidecar")), ("app_port", s("80"))],
                "\"service\"",
            ),
            (
                &[("role", s("sidecar")), ("service", s("pay"))],
                "\"app_port\"",
            ),
            (
                &[
                    ("role", s("sidecar")),
                    ("service", s("pay")),
                    ("app_port", Kind::NumberValue(70000.0)),
                ],
                "1 to 65535",
            ),
            (
                &[
                    ("role", s("sidecar")),
                    ("service", s("pay")),
                    ("app_port", s("15006")),
                ],
                "inbound_port",
            ),
        ];
        for (fields, expected) in cases {
            let err = node_role(&node(fields)).unwrap_err().to_string();
            assert!(err.contains(expected), "{fields:?}: {err}");
        }
        let err = node_role(&node(&[("role", Kind::BoolValue(true))])).unwrap_err();
        assert!(err.to_string().contains("string"), "{err}");
    }

    #[test]
    fn certificate_providers_are_declared_in_metadata() {
        use switchboard_xds_proto::pb::google::protobuf::ListValue;
        let list = |names: &[&str]| {
            Kind::ListValue(ListValue {
                values: names
                    .iter()
                    .map(|n| Value {
                        kind: Some(Kind::StringValue((*n).to_owned())),
                    })
                    .collect(),
            })
        };
        assert!(!has_certificate_providers(&Node::default()).unwrap());
        assert!(!has_certificate_providers(&node(&[])).unwrap());
        let field = CERTIFICATE_PROVIDERS_FIELD;
        assert!(has_certificate_providers(&node(&[(field, list(&["default"]))])).unwrap());
        assert!(has_certificate_providers(&node(&[(field, list(&["x", "default"]))])).unwrap());
        assert!(!has_certificate_providers(&node(&[(field, list(&["other"]))])).unwrap());
        let err = has_certificate_providers(&node(&[(field, s("default"))])).unwrap_err();
        assert!(err.to_string().contains("[\"default\"]"), "{err}");
    }
}
