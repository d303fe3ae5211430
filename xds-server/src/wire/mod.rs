//! The xDS responses on the wire, written around resources encoded once per snapshot.
//!
//! Every resource of a snapshot keeps its `Any` encoded ([`XdsResource::encoded_any`]).
//! [`SotwResponse`] and [`DeltaResponse`] hold the resources as the snapshot's `Arc`s, and
//! [`XdsCodec`] writes the response's few fields around those bytes: a response to many
//! streams costs one memory copy per stream into its HTTP/2 frames, never a clone of the
//! `Any`s nor a protobuf encoding of the resources. Requests decode with prost as before.
//!
//! `discovery` serves the state-of-the-world stream methods (ADS and the per-type
//! services) with this codec and hands every other method of the service (Delta, Fetch) to
//! the generated server it wraps. [`ResponseStream`] is a stream's queue of responses.
//!
//! [`XdsResource::encoded_any`]: switchboard_translator::XdsResource::encoded_any

mod codec;
mod queue;
mod response;

pub use codec::{DECODE_BUFFER, ENCODE_BUFFER, WireMessage, XdsCodec};
pub(crate) use queue::Queued;
pub use queue::{DeltaResponseStream, ResponseStream};
pub use response::{DeltaResponse, SotwResponse};
