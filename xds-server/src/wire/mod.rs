//! The xDS responses on the wire, written around resources encoded once per snapshot.
//!
//! Every resource of a snapshot keeps its `Any` encoded ([`XdsResource::encoded_any`]).
//! [`SotwResponse`] and [`DeltaResponse`] hold the resources as the snapshot's `Arc`s, and
//! each is written as one gRPC frame of its own around those bytes: a response to many
//! streams costs one memory copy per stream into a buffer freed once HTTP/2 has sent it,
//! never a clone of the `Any`s nor a protobuf encoding of the resources, and an idle stream
//! holds no send buffer. Requests decode with prost.
//!
//! `discovery` serves the stream methods (state of the world and delta, of ADS and the
//! per-type services) through [`body::streaming`] and hands every other method (Fetch) to
//! the generated server it wraps. [`ResponseStream`] is a stream's queue of responses.
//!
//! [`XdsResource::encoded_any`]: switchboard_translator::XdsResource::encoded_any

pub(crate) mod body;
mod codec;
mod queue;
mod response;

pub use codec::{DECODE_BUFFER, WireMessage};
pub(crate) use queue::Queued;
pub use queue::{DeltaResponseStream, ResponseStream};
pub use response::{DeltaResponse, SotwResponse};
