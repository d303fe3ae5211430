//! The proxy's own configuration types, converted from Envoy protos with `TryFrom`.
//!
//! Conversion follows orion's rule: read every field the proxy supports, and reject every
//! other field that is set, naming it, so that a control plane asking for a behaviour the
//! proxy does not have gets a NACK instead of silently different traffic. Rather than
//! destructuring each of Envoy's (very wide) messages by hand, [`check_fields`] lists the set
//! fields of a message (by their tags) and names them through its protobuf descriptor, so a
//! field added to Envoy's protos later is rejected too, without anyone having to notice it.

pub mod action;
pub mod cluster;
pub mod endpoint;
pub mod listener;
pub mod matcher;
pub mod rbac;
pub mod route;
pub mod secret;
pub mod tls;
pub mod xfcc;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use prost::{Message, Name};
use switchboard_xds_proto::pb::envoy::config::core::v3::{
    Address, ConfigSource, address, config_source, socket_address,
};
use switchboard_xds_proto::pb::google::protobuf::Duration as PbDuration;

pub use cluster::Cluster;
pub use endpoint::LoadAssignment;
pub use listener::Listener;
pub use route::RouteConfig;
pub use secret::Secret;

/// Why a resource was rejected: where in the resource (`listener "x": filter_chains[0]`) and
/// what is wrong there. The text goes verbatim into the NACK's `error_detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A path into a resource for error messages: `listener "x": filter_chains[0].filters[1]`.
#[derive(Debug, Clone)]
pub(crate) struct Path(String);

impl Path {
    pub(crate) fn root(kind: &str, name: &str) -> Self {
        Self(format!("{kind} {name:?}:"))
    }

    /// `self.field` (or `self field` right after the root).
    pub(crate) fn field(&self, field: &str) -> Self {
        if self.0.ends_with(':') {
            Self(format!("{} {field}", self.0))
        } else {
            Self(format!("{}.{field}", self.0))
        }
    }

    pub(crate) fn index(&self, field: &str, i: usize) -> Self {
        self.field(&format!("{field}[{i}]"))
    }

    pub(crate) fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.0.trim_end_matches(':'), message)
    }
}

/// The fields (number, name) of message `full_name`, read from the descriptor set the first
/// time the message is checked and kept, per message, for the life of the process.
///
/// Why not a `prost_reflect::DescriptorPool`: it holds every Envoy message, several MiB of
/// heap for the whole life of the proxy, to name the fields of the few dozen messages the
/// proxy reads. Here only the files of the message's package are decoded, once, and only
/// its own fields are kept.
fn fields_of(full_name: &str) -> Option<Arc<[(u32, String)]>> {
    type Table = Mutex<HashMap<String, Arc<[(u32, String)]>>>;
    static FIELDS: OnceLock<Table> = OnceLock::new();
    let table = FIELDS.get_or_init(Table::default);
    if let Some(f) = table
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(full_name)
    {
        return Some(f.clone());
    }
    let fields: Arc<[(u32, String)]> = read_fields(full_name)?.into();
    table
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(full_name.to_owned(), fields.clone());
    Some(fields)
}

/// Scans [`switchboard_xds_proto::FILE_DESCRIPTOR_SET`] for the files of `full_name`'s
/// package (reading only each file's `package` field) and decodes just those.
fn read_fields(full_name: &str) -> Option<Vec<(u32, String)>> {
    for (number, file) in top_level_fields(switchboard_xds_proto::FILE_DESCRIPTOR_SET)? {
        // `file` (1) is the only field of a FileDescriptorSet; a file's `package` is its 2.
        let (1, Some(file)) = (number, file) else {
            continue;
        };
        let Some(package) = top_level_fields(file)?
            .into_iter()
            .find_map(|(n, value)| value.filter(|_| n == 2))
            .and_then(|p| std::str::from_utf8(p).ok())
        else {
            continue;
        };
        let Some(path) = full_name
            .strip_prefix(package)
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            continue;
        };
        let file = prost_types::FileDescriptorProto::decode(file).ok()?;
        // A package spans several files: look on when this one lacks the message.
        if let Some(message) = find_message(&file.message_type, path) {
            return Some(
                message
                    .field
                    .iter()
                    .filter_map(|f| Some((u32::try_from(f.number()).ok()?, f.name().to_owned())))
                    .collect(),
            );
        }
    }
    None
}

/// The message at `path` (`Outer.Inner`) among `messages` and their nested types.
fn find_message<'a>(
    messages: &'a [prost_types::DescriptorProto],
    path: &str,
) -> Option<&'a prost_types::DescriptorProto> {
    let mut names = path.split('.');
    let first = names.next()?;
    let mut message = messages.iter().find(|m| m.name() == first)?;
    for n in names {
        message = message.nested_type.iter().find(|m| m.name() == n)?;
    }
    Some(message)
}

/// Rejects `message` if a field outside `supported` (proto field names) is set. Supported
/// fields may still be ignored by the proxy when they do not change traffic (`stat_prefix`).
///
/// Only the top level of the encoded message is scanned (tags, not values), so checking each
/// level of a large route configuration stays linear in its size per level.
pub(crate) fn check_fields<M: Message + Name>(
    message: &M,
    supported: &[&str],
    path: &Path,
) -> Result<(), ConfigError> {
    let name = M::full_name();
    let internal = |what: String| path.err(format!("internal error: {what}"));
    let fields = fields_of(&name).ok_or_else(|| internal(format!("no descriptor for {name}")))?;
    if cfg!(debug_assertions)
        && let Some(typo) = supported
            .iter()
            .find(|f| !fields.iter().any(|(_, n)| n == *f))
    {
        return Err(internal(format!("{name} has no field {typo}")));
    }
    let encoded = message.encode_to_vec();
    let set = top_level_fields(&encoded).ok_or_else(|| internal(format!("cannot scan {name}")))?;
    let mut unsupported: Vec<String> = Vec::new();
    for (number, _) in set {
        let field = fields
            .iter()
            .find(|(n, _)| *n == number)
            .map_or_else(|| format!("#{number}"), |(_, name)| name.clone());
        if !supported.contains(&field.as_str()) && !unsupported.contains(&field) {
            unsupported.push(field);
        }
    }
    if unsupported.is_empty() {
        Ok(())
    } else {
        Err(path.err(format!(
            "unsupported field{} {} (this proxy implements a subset of Envoy; see \
             switchboard-proxy-xds's config module)",
            if unsupported.len() > 1 { "s" } else { "" },
            unsupported.join(", ")
        )))
    }
}

/// A top-level field of an encoded message: its number and, when it is length-delimited,
/// its bytes.
type RawField<'a> = (u32, Option<&'a [u8]>);

/// The fields at the top level of an encoded message, in order.
fn top_level_fields(mut buf: &[u8]) -> Option<Vec<RawField<'_>>> {
    use prost::encoding::decode_varint;
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = decode_varint(&mut buf).ok()?;
        let number = u32::try_from(key >> 3).ok()?;
        let (skip, delimited) = match key & 7 {
            0 => {
                decode_varint(&mut buf).ok()?;
                (0, false)
            }
            1 => (8, false),
            2 => (usize::try_from(decode_varint(&mut buf).ok()?).ok()?, true),
            5 => (4, false),
            _ => return None, // groups: not used by any xDS message
        };
        let value = buf.get(..skip)?;
        buf = buf.get(skip..)?;
        out.push((number, delimited.then_some(value)));
    }
    Some(out)
}

/// A protobuf duration, rejecting negative ones.
pub(crate) fn duration(d: &PbDuration, path: &Path) -> Result<Duration, ConfigError> {
    let secs = u64::try_from(d.seconds).map_err(|_| path.err("negative duration"))?;
    let nanos = u32::try_from(d.nanos).map_err(|_| path.err("negative duration"))?;
    if nanos >= 1_000_000_000 {
        return Err(path.err("duration nanos out of range"));
    }
    Ok(Duration::new(secs, nanos))
}

/// A TCP socket address with an IP (no DNS names: the proxy does not resolve).
pub(crate) fn socket_addr(addr: &Address, path: &Path) -> Result<SocketAddr, ConfigError> {
    let Some(address::Address::SocketAddress(sa)) = &addr.address else {
        return Err(
            path.err("only socket addresses are supported (no pipes or internal addresses)")
        );
    };
    let path = path.field("socket_address");
    check_fields(sa, &["protocol", "address", "port_value"], &path)?;
    if sa.protocol != socket_address::Protocol::Tcp as i32 {
        return Err(path.err("only TCP is supported"));
    }
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        path.field("address").err(format!(
            "{:?} is not an IP address (hint: the proxy does not resolve DNS names)",
            sa.address
        ))
    })?;
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).map_err(|_| {
            path.field("port_value")
                .err(format!("port {p} is out of range"))
        })?,
        _ => return Err(path.err("a port_value is required")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// RDS and EDS must come over the same ADS stream: the only source this client has.
pub(crate) fn ads_source(source: Option<&ConfigSource>, path: &Path) -> Result<(), ConfigError> {
    match source.and_then(|s| s.config_source_specifier.as_ref()) {
        Some(config_source::ConfigSourceSpecifier::Ads(_)) => Ok(()),
        _ => Err(path.err("only the ADS config source is supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(message: &str, number: u32) -> Option<String> {
        fields_of(message)?
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, name)| name.clone())
    }

    #[test]
    fn fields_are_named_from_the_descriptor_set() {
        let cluster = "envoy.config.cluster.v3.Cluster";
        assert_eq!(named(cluster, 1).as_deref(), Some("name"));
        assert_eq!(named(cluster, 4).as_deref(), Some("connect_timeout"));
        // A nested message, and one from another file of the same package.
        let common = "envoy.config.cluster.v3.Cluster.CommonLbConfig";
        assert_eq!(named(common, 1).as_deref(), Some("healthy_panic_threshold"));
        let thresholds = "envoy.config.cluster.v3.CircuitBreakers.Thresholds";
        assert_eq!(named(thresholds, 2).as_deref(), Some("max_connections"));
        assert!(fields_of("envoy.config.cluster.v3.NoSuchMessage").is_none());
        assert!(fields_of("no.such.package.Message").is_none());
    }
}
