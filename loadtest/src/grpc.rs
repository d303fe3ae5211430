//! The proxy benchmark's gRPC method, without a `.proto`: a unary call to [`PATH`] whose
//! request and response are each one uncompressed message of fixed length in gRPC's
//! length-prefixed framing (a zero flag byte, a big-endian `u32` length, the bytes), over
//! HTTP/2 with `content-type: application/grpc`. The message bytes mean nothing; the load
//! generator checks the response's framing, its length and the `grpc-status: 0` trailer, the
//! backend checks the request's framing. Hand-framed because pulling in a codec and generated
//! code would measure them, not the proxy.

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;

/// The method's path.
pub const PATH: &str = "/proxybench.Bench/Call";
/// The content type of a gRPC request and response.
pub const CONTENT_TYPE: &str = "application/grpc";
/// The trailer (or, in a trailers-only response, header) that carries the call's status.
pub const STATUS: &str = "grpc-status";
/// `grpc-status` of a successful call.
pub const OK: &str = "0";
/// `grpc-status` INVALID_ARGUMENT: the backend's answer to a malformed request message.
pub const INVALID_ARGUMENT: &str = "3";

/// The length prefix's size.
const PREFIX: usize = 5;

/// One uncompressed message of `len` bytes of `fill`, framed.
pub fn frame(len: usize, fill: u8) -> Bytes {
    let mut b = BytesMut::with_capacity(PREFIX + len);
    b.put_u8(0);
    b.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    b.put_bytes(fill, len);
    b.freeze()
}

/// The length of the single uncompressed message that `body` frames exactly; `None` when
/// `body` is anything else (compressed, truncated, several messages, trailing bytes).
pub fn message_len(body: &[u8]) -> Option<usize> {
    let (prefix, message) = body.split_first_chunk::<PREFIX>()?;
    let [flag, len @ ..] = prefix;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    (*flag == 0 && message.len() == len).then_some(len)
}

/// Whether `map` says the call succeeded (`grpc-status: 0`).
pub fn is_ok(map: &HeaderMap) -> bool {
    map.get(STATUS)
        .is_some_and(|v| v.as_bytes() == OK.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_as_its_length() {
        let f = frame(1024, b'x');
        assert_eq!(f.len(), 1029);
        assert_eq!(message_len(&f), Some(1024));
        assert_eq!(message_len(&frame(0, b'x')), Some(0));
    }

    #[test]
    fn anything_but_one_whole_uncompressed_message_is_refused() {
        let f = frame(16, b'x');
        assert_eq!(message_len(&f[..20]), None, "truncated");
        assert_eq!(message_len(&f[..3]), None, "no whole prefix");
        let mut two = f.to_vec();
        two.extend_from_slice(&f);
        assert_eq!(message_len(&two), None, "two messages");
        let mut compressed = f.to_vec();
        compressed[0] = 1;
        assert_eq!(message_len(&compressed), None, "compressed flag");
    }

    #[test]
    fn only_status_zero_is_ok() {
        let mut m = HeaderMap::new();
        assert!(!is_ok(&m));
        m.insert(STATUS, http::HeaderValue::from_static(INVALID_ARGUMENT));
        assert!(!is_ok(&m));
        m.insert(STATUS, http::HeaderValue::from_static(OK));
        assert!(is_ok(&m));
    }
}
