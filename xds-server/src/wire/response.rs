//! The two response messages, holding resources as the snapshot's `Arc`s.

use std::sync::Arc;

use bytes::BufMut;
use prost::encoding::{self, WireType};
use switchboard_translator::XdsResource;
use switchboard_xds_proto::pb::envoy::service::discovery::v3::Resource;
use switchboard_xds_proto::{DeltaDiscoveryResponse, DiscoveryResponse};

use super::codec::WireMessage;

/// A state-of-the-world `DiscoveryResponse`. Encodes exactly as the prost message with the
/// same fields would (`canary`, `control_plane` and `resource_errors` are never set).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SotwResponse {
    pub version_info: String,
    pub resources: Vec<Arc<XdsResource>>,
    pub type_url: String,
    pub nonce: String,
}

impl SotwResponse {
    /// The prost message (copies every resource; for the unary Fetch and for tests).
    pub fn to_message(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|r| r.any()).collect(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl WireMessage for SotwResponse {
    fn encoded_len(&self) -> usize {
        string_len(1, &self.version_info)
            + self
                .resources
                .iter()
                .map(|r| bytes_len(2, r.encoded_any().len()))
                .sum::<usize>()
            + string_len(4, &self.type_url)
            + string_len(5, &self.nonce)
    }

    fn encode_to(&self, buf: &mut impl BufMut) {
        put_string(1, &self.version_info, buf);
        for r in &self.resources {
            put_bytes(2, r.encoded_any(), buf);
        }
        put_string(4, &self.type_url, buf);
        put_string(5, &self.nonce, buf);
    }
}

/// An incremental `DeltaDiscoveryResponse`: resources added or changed (each with its name
/// and version) and the names removed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub resources: Vec<Arc<XdsResource>>,
    pub type_url: String,
    pub removed_resources: Vec<String>,
    pub nonce: String,
}

impl DeltaResponse {
    /// The response carrying `resources` (as the snapshot's `Arc`s) and removing `removed`.
    pub fn new(
        type_url: impl Into<String>,
        nonce: impl Into<String>,
        resources: Vec<Arc<XdsResource>>,
        removed: Vec<String>,
    ) -> Self {
        Self {
            system_version_info: String::new(),
            resources,
            type_url: type_url.into(),
            removed_resources: removed,
            nonce: nonce.into(),
        }
    }

    /// The prost message (copies every resource; for tests).
    pub fn to_message(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .iter()
                .map(|r| Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.clone(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

/// The length of a `Resource` message body: version (1), resource (2), name (3).
fn delta_resource_len(r: &XdsResource) -> usize {
    string_len(1, &r.version) + bytes_len(2, r.encoded_any().len()) + string_len(3, &r.name)
}

impl WireMessage for DeltaResponse {
    fn encoded_len(&self) -> usize {
        string_len(1, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|r| bytes_len(2, delta_resource_len(r)))
                .sum::<usize>()
            + string_len(4, &self.type_url)
            + string_len(5, &self.nonce)
            + self
                .removed_resources
                .iter()
                .map(|n| bytes_len(6, n.len()))
                .sum::<usize>()
    }

    fn encode_to(&self, buf: &mut impl BufMut) {
        put_string(1, &self.system_version_info, buf);
        for r in &self.resources {
            encoding::encode_key(2, WireType::LengthDelimited, buf);
            encoding::encode_varint(delta_resource_len(r) as u64, buf);
            put_string(1, &r.version, buf);
            put_bytes(2, r.encoded_any(), buf);
            put_string(3, &r.name, buf);
        }
        put_string(4, &self.type_url, buf);
        put_string(5, &self.nonce, buf);
        // Repeated strings are written even when empty (an empty name is still an entry).
        for name in &self.removed_resources {
            put_bytes(6, name.as_bytes(), buf);
        }
    }
}

/// A length-delimited field's size with its key and length prefix.
fn bytes_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

/// A proto3 string field's size: nothing when empty (the default is not written).
fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        bytes_len(tag, s.len())
    }
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

fn put_string(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        put_bytes(tag, s.as_bytes(), buf);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use prost::Message;
    use switchboard_xds_proto::pb::envoy::config::cluster::v3::Cluster;
    use switchboard_xds_proto::pb::envoy::config::listener::v3::Listener;

    use super::*;

    fn resources() -> Vec<Arc<XdsResource>> {
        let cluster = Cluster {
            name: "pay".to_owned(),
            ..Default::default()
        };
        let listener = Listener {
            name: "pay:8080".to_owned(),
            // A long one, so that lengths need more than one varint byte.
            stat_prefix: "x".repeat(300),
            ..Default::default()
        };
        vec![
            Arc::new(XdsResource::new("pay", &cluster)),
            Arc::new(XdsResource::new("pay:8080", &listener)),
        ]
    }

    fn encode(m: &impl WireMessage) -> Vec<u8> {
        let mut buf = Vec::new();
        m.encode_to(&mut buf);
        assert_eq!(
            buf.len(),
            m.encoded_len(),
            "encoded_len must match what is written"
        );
        buf
    }

    #[test]
    fn sotw_encodes_as_prost_does() {
        let r = SotwResponse {
            version_info: "v1".to_owned(),
            resources: resources(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned(),
            nonce: "7".to_owned(),
        };
        let ours = encode(&r);
        assert_eq!(ours, r.to_message().encode_to_vec());
        assert_eq!(
            DiscoveryResponse::decode(ours.as_slice()).unwrap(),
            r.to_message()
        );
        let empty = SotwResponse::default();
        assert!(encode(&empty).is_empty());
    }

    #[test]
    fn delta_encodes_as_prost_does() {
        let r = DeltaResponse::new(
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "3",
            resources(),
            vec!["gone".to_owned(), String::new()],
        );
        let ours = encode(&r);
        assert_eq!(ours, r.to_message().encode_to_vec());
        let back = DeltaDiscoveryResponse::decode(ours.as_slice()).unwrap();
        assert_eq!(back, r.to_message());
        assert_eq!(back.resources[1].name, "pay:8080");
        let any = back.resources[1].resource.as_ref().unwrap();
        let listener: Listener = switchboard_xds_proto::unpack(any).unwrap();
        assert_eq!(listener.stat_prefix.len(), 300);
    }
}
