//! A resource ready to send: packed into `Any` once, versioned by its content.

use prost::{Message, Name};

use crate::hash;
use crate::pb::google::protobuf::Any;

/// One xDS resource of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct XdsResource {
    /// The xDS resource name clients subscribe to.
    pub name: String,
    /// Hex of a hash of the encoded resource: equal versions mean equal bytes.
    pub version: String,
    /// The resource, packed with its `type.googleapis.com/…` type URL.
    pub resource: Any,
}

impl XdsResource {
    /// Packs and versions `message` under `name`.
    pub fn new<M: Message + Name>(name: impl Into<String>, message: &M) -> Self {
        let resource = pack(message);
        Self {
            name: name.into(),
            version: hash::version(&resource.value),
            resource,
        }
    }

    /// A resource already encoded as an `M` (built by hand for speed, see `virtual_host`).
    pub(crate) fn from_encoded<M: Name>(name: impl Into<String>, value: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            version: hash::version(&value),
            resource: Any {
                type_url: M::type_url(),
                value,
            },
        }
    }

    /// Decodes the resource back (for tests, CSDS and debugging).
    pub fn decode<M: Message + Name + Default>(&self) -> Result<M, DecodeError> {
        if self.resource.type_url != M::type_url() {
            return Err(DecodeError::WrongType {
                name: self.name.clone(),
                actual: self.resource.type_url.clone(),
                expected: M::type_url(),
            });
        }
        M::decode(self.resource.value.as_slice()).map_err(|source| DecodeError::Bytes {
            name: self.name.clone(),
            source,
        })
    }
}

/// Why [`XdsResource::decode`] failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("resource {name} holds a {actual}, not a {expected}")]
    WrongType {
        name: String,
        actual: String,
        expected: String,
    },
    #[error("resource {name} does not decode: {source}")]
    Bytes {
        name: String,
        #[source]
        source: prost::DecodeError,
    },
}

/// Packs a message into `Any` with its canonical type URL (what Envoy expects).
pub(crate) fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}
