//! A resource ready to send: packed into `Any` once, versioned by its content.

use prost::{Message, Name};
use switchboard_xds_proto::{UnpackError, pack};

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
    pub fn decode<M: Message + Name + Default>(&self) -> Result<M, UnpackError> {
        switchboard_xds_proto::unpack(&self.resource)
    }
}
