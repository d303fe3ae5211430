//! A tonic codec that writes [`WireMessage`]s and decodes requests with prost, with small
//! per-stream buffers.

use std::marker::PhantomData;

use bytes::{Buf, BufMut};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The encode buffer a stream starts with. tonic's default (8 KiB) is kept for the stream's
/// whole life whatever its messages' sizes; an idle xDS stream needs none, and a response
/// larger than this grows the buffer as needed.
pub const ENCODE_BUFFER: usize = 512;

/// The decode buffer a stream starts with (tonic's default is 8 KiB): ACKs are a few hundred
/// bytes, and the first request (with the node) grows it once if it must.
pub const DECODE_BUFFER: usize = 512;

/// tonic's default: encoded messages are handed to HTTP/2 once this many bytes are buffered.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// A response message written by hand around shared, already-encoded resources.
pub trait WireMessage: Send + 'static {
    /// The size of the encoding, exactly.
    fn encoded_len(&self) -> usize;
    /// Writes the encoding (no length prefix).
    fn encode_to(&self, buf: &mut impl BufMut);
}

/// Encodes `E` ([`WireMessage`]) and decodes `D` (a prost message).
#[derive(Debug)]
pub struct XdsCodec<E, D> {
    _types: PhantomData<fn(E) -> D>,
}

impl<E, D> Default for XdsCodec<E, D> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<E, D> Codec for XdsCodec<E, D>
where
    E: WireMessage,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = WireEncoder<E>;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

#[derive(Debug)]
pub struct WireEncoder<E>(PhantomData<fn(E)>);

impl<E: WireMessage> Encoder for WireEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode_to(dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD)
    }
}

#[derive(Debug)]
pub struct ProstDecoder<D>(PhantomData<fn() -> D>);

impl<D: prost::Message + Default> Decoder for ProstDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        let len = buf.remaining();
        D::decode(buf).map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "the request ({len} bytes) is not a valid protobuf message of this method: {e}"
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD)
    }
}
