//! Packing messages into, and unpacking them from, protobuf `Any`.
//!
//! envoy-types generates its own `google.protobuf.Any` ([`Any`], re-exported
//! at the crate root) and every xDS message (`DiscoveryResponse.resources`,
//! `Resource.resource`, `typed_config`, ...) uses that one, not
//! `prost_types::Any`, so these helpers work on it. [`to_prost_any`] and
//! [`from_prost_any`] convert for code that meets `prost_types` elsewhere.

use prost::{Message, Name};

use crate::pb::google::protobuf::Any;
use crate::type_url;

/// Why an [`Any`] could not be turned into the message the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    /// The `Any` holds a different message type. A client that sends this is
    /// confused about the stream or type it is on; the NACK should say so.
    #[error("expected type URL {expected}, got {actual:?}")]
    TypeMismatch {
        /// `M::type_url()` of the requested message.
        expected: String,
        /// The `type_url` found in the `Any`.
        actual: String,
    },
    /// The type URL matched but the bytes are not a valid encoding of it.
    #[error("cannot decode {type_url}: {source}")]
    Decode {
        /// The type URL that was being decoded.
        type_url: String,
        /// What prost reported.
        #[source]
        source: prost::DecodeError,
    },
}

/// Encodes `message` into an [`Any`] with its canonical
/// `type.googleapis.com/` type URL, the form Envoy expects in responses.
pub fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Decodes an [`Any`] as `M` after checking that it holds an `M`.
///
/// Following protobuf's rule for `Any`, only the part of the type URL after
/// the last `/` is compared, so a non-default prefix is accepted.
pub fn unpack<M: Message + Default + Name>(any: &Any) -> Result<M, UnpackError> {
    if type_url::message_name(&any.type_url) != M::full_name() {
        return Err(UnpackError::TypeMismatch {
            expected: M::type_url(),
            actual: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|source| UnpackError::Decode {
        type_url: any.type_url.clone(),
        source,
    })
}

/// Converts envoy-types' [`Any`] to [`prost_types::Any`] (same wire format).
pub fn to_prost_any(any: Any) -> prost_types::Any {
    prost_types::Any {
        type_url: any.type_url,
        value: any.value,
    }
}

/// Converts [`prost_types::Any`] to envoy-types' [`Any`] (same wire format).
pub fn from_prost_any(any: prost_types::Any) -> Any {
    Any {
        type_url: any.type_url,
        value: any.value,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::{Cluster, Listener};

    fn cluster() -> Cluster {
        Cluster {
            name: "payments".to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn cluster_roundtrip() {
        let any = pack(&cluster());
        assert_eq!(any.type_url, type_url::CLUSTER);
        let back: Cluster = unpack(&any).unwrap();
        assert_eq!(back, cluster());
    }

    #[test]
    fn other_prefix_is_accepted() {
        let mut any = pack(&cluster());
        any.type_url = "example.com/x/envoy.config.cluster.v3.Cluster".to_owned();
        assert_eq!(unpack::<Cluster>(&any).unwrap(), cluster());
    }

    #[test]
    fn wrong_type_url_names_both() {
        let any = pack(&cluster());
        let err = unpack::<Listener>(&any).unwrap_err();
        assert_eq!(
            err,
            UnpackError::TypeMismatch {
                expected: type_url::LISTENER.to_owned(),
                actual: type_url::CLUSTER.to_owned(),
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "expected type URL {}, got \"{}\"",
                type_url::LISTENER,
                type_url::CLUSTER
            )
        );
    }

    #[test]
    fn bad_bytes_is_a_decode_error() {
        let any = Any {
            type_url: type_url::CLUSTER.to_owned(),
            value: vec![0xff, 0xff, 0xff],
        };
        match unpack::<Cluster>(&any) {
            Err(UnpackError::Decode { type_url, .. }) => assert_eq!(type_url, type_url::CLUSTER),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn prost_any_conversion_roundtrips() {
        let any = pack(&cluster());
        let prost_any = to_prost_any(any.clone());
        assert_eq!(prost_any.type_url, type_url::CLUSTER);
        assert_eq!(from_prost_any(prost_any), any);
    }
}
