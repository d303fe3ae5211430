//! Canonical proto3 JSON of xDS resources, for people: the API's "what is this proxy being
//! sent" and debugging. Decoded through the descriptor set, so nested `Any`s (filter configs)
//! come out readable too.

use crate::{Any, FILE_DESCRIPTOR_SET};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("the descriptor set does not load: {0}")]
    Descriptors(String),
    #[error("type {0:?} is not in the descriptor set")]
    UnknownType(String),
    #[error("cannot decode {type_url}: {source}")]
    Decode {
        type_url: String,
        source: prost::DecodeError,
    },
    #[error("cannot render {type_url} as JSON: {message}")]
    Render { type_url: String, message: String },
}

fn pool() -> Result<&'static DescriptorPool, JsonError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| JsonError::Descriptors(e.clone()))
}

/// The proto3 JSON of a packed resource, with an `@type` field naming it.
pub fn any_to_json(any: &Any) -> Result<serde_json::Value, JsonError> {
    let name = crate::type_url::message_name(&any.type_url);
    let desc = pool()?
        .get_message_by_name(name)
        .ok_or_else(|| JsonError::UnknownType(any.type_url.clone()))?;
    let msg =
        DynamicMessage::decode(desc, any.value.as_slice()).map_err(|source| JsonError::Decode {
            type_url: any.type_url.clone(),
            source,
        })?;
    let opts = SerializeOptions::new().skip_default_fields(true);
    let mut value = msg
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| JsonError::Render {
            type_url: any.type_url.clone(),
            message: e.to_string(),
        })?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert(
            "@type".into(),
            serde_json::Value::String(any.type_url.clone()),
        );
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn renders_a_cluster() {
        let c = Cluster {
            name: "payments".into(),
            ..Default::default()
        };
        let v = any_to_json(&crate::pack(&c)).unwrap();
        assert_eq!(v["name"], "payments");
        assert_eq!(v["@type"], crate::type_url::CLUSTER);
    }

    #[test]
    fn unknown_types_are_named() {
        let any = Any {
            type_url: "type.googleapis.com/nope.Nope".into(),
            value: vec![],
        };
        assert!(matches!(any_to_json(&any), Err(JsonError::UnknownType(_))));
    }
}
