//! A resource ready to send: packed into `Any` and encoded once, versioned by its content.

use bytes::{BufMut, Bytes, BytesMut};
use prost::{Message, Name};
use switchboard_xds_proto::UnpackError;

use crate::hash;
use crate::pb::google::protobuf::Any;

/// One xDS resource of a snapshot.
///
/// The packed `Any` is kept encoded, once: every stream that sends the resource writes these
/// very bytes into its response (the xDS server's `wire` module) instead of cloning and
/// re-encoding the message per stream.
#[derive(Debug, Clone, PartialEq)]
pub struct XdsResource {
    /// The xDS resource name clients subscribe to.
    pub name: String,
    /// Hex of a hash of the encoded resource: equal versions mean equal bytes.
    pub version: String,
    /// The `type.googleapis.com/…` type URL of the packed message.
    type_url: String,
    /// The encoded `google.protobuf.Any` (type URL and value).
    encoded: Bytes,
    /// The encoded message inside the `Any` (a view into `encoded`).
    value: Bytes,
}

impl XdsResource {
    /// Packs and versions `message` under `name`.
    pub fn new<M: Message + Name>(name: impl Into<String>, message: &M) -> Self {
        Self::from_encoded::<M>(name, message.encode_to_vec())
    }

    /// A resource already encoded as an `M` (built by hand for speed, see `virtual_host`).
    pub(crate) fn from_encoded<M: Name>(name: impl Into<String>, value: Vec<u8>) -> Self {
        Self::from_any(name, M::type_url(), value)
    }

    /// Packs `message` under `name` with a version the caller chose (a secret is versioned by
    /// what it is, such as its certificate's serial, not by its bytes).
    pub fn with_version<M: Message + Name>(
        name: impl Into<String>,
        version: impl Into<String>,
        message: &M,
    ) -> Self {
        Self::build(
            name.into(),
            version.into(),
            M::type_url(),
            message.encode_to_vec(),
        )
    }

    /// A resource of type `type_url` whose encoded message is `value`, versioned by its bytes.
    pub fn from_any(name: impl Into<String>, type_url: String, value: Vec<u8>) -> Self {
        let version = hash::version(&value);
        Self::build(name.into(), version, type_url, value)
    }

    fn build(name: String, version: String, type_url: String, value: Vec<u8>) -> Self {
        let any = Any { type_url, value };
        let mut buf = BytesMut::with_capacity(any.encoded_len());
        // `Any` has two length-delimited fields: type_url (1), then value (2). Written by hand
        // so that the value's position in the encoding is known without searching for it.
        prost::encoding::string::encode(1, &any.type_url, &mut buf);
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut buf);
        prost::encoding::encode_varint(any.value.len() as u64, &mut buf);
        let value_at = buf.len();
        buf.put_slice(&any.value);
        let encoded = buf.freeze();
        let value = encoded.slice(value_at..);
        Self {
            name,
            version,
            type_url: any.type_url,
            encoded,
            value,
        }
    }

    /// The type URL of the packed message.
    pub fn type_url(&self) -> &str {
        &self.type_url
    }

    /// The encoded `google.protobuf.Any`, shared (cloning it copies no bytes).
    pub fn encoded_any(&self) -> &Bytes {
        &self.encoded
    }

    /// The encoded message inside the `Any`.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The resource as a prost `Any` (a copy; for CSDS, the REST view and tests, not for
    /// the per-stream path).
    pub fn any(&self) -> Any {
        Any {
            type_url: self.type_url.clone(),
            value: self.value.to_vec(),
        }
    }

    /// Decodes the resource back (for tests, CSDS and debugging), with `unpack`'s rules.
    pub fn decode<M: Message + Name + Default>(&self) -> Result<M, UnpackError> {
        if switchboard_xds_proto::type_url::message_name(&self.type_url) != M::full_name() {
            return Err(UnpackError::TypeMismatch {
                expected: M::type_url(),
                actual: self.type_url.clone(),
            });
        }
        M::decode(self.value.as_ref()).map_err(|source| UnpackError::Decode {
            type_url: self.type_url.clone(),
            source,
        })
    }
}
