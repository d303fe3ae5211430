//! The messages' encoding: responses written by hand around shared, already-encoded
//! resources, each into a gRPC frame of its own; requests decoded with prost from a small
//! per-stream buffer.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};

/// The decode buffer a stream starts with (tonic's default is 8 KiB): ACKs are a few hundred
/// bytes, and the first request (with the node) grows it once if it must.
pub const DECODE_BUFFER: usize = 512;

/// tonic's default: decoded messages are handed on once this many bytes are buffered.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// A response message written by hand around shared, already-encoded resources.
pub trait WireMessage: Send + 'static {
    /// The size of the encoding, exactly.
    fn encoded_len(&self) -> usize;
    /// Writes the encoding (no length prefix).
    fn encode_to(&self, buf: &mut impl BufMut);
}

/// The gRPC frame of one message (uncompressed flag, big-endian length, the encoding) in a
/// buffer of its own, exactly its size.
///
/// Not tonic's encoder: that one writes every message of a stream into one buffer that keeps
/// the capacity of the largest message sent for the stream's whole life, so each idle stream
/// held a copy-sized buffer of its largest response (a full CDS or RDS). This buffer goes when
/// HTTP/2 has written it.
pub(crate) fn frame(message: &impl WireMessage) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!(
            "a response of {len} bytes is over gRPC's largest message (4 GiB)"
        ))
    })?;
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    message.encode_to(&mut buf);
    debug_assert_eq!(buf.len(), 5 + len, "encoded_len must match what is written");
    Ok(buf.freeze())
}

/// Decodes requests of type `D` with prost.
#[derive(Debug)]
pub struct ProstDecoder<D>(PhantomData<fn() -> D>);

impl<D> Default for ProstDecoder<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

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
