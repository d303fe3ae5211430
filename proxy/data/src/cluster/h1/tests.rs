//! The response head parser and the body decoder, on bytes in memory.

use super::*;

fn parse(raw: &str, head_only: bool) -> Result<Option<Parsed>, String> {
    parse_head(&mut BytesMut::from(raw), head_only)
}

fn framing(raw: &str) -> (Framing, bool) {
    match parse(raw, false) {
        Ok(Some(Parsed::Final(h))) => (h.framing, h.keep_alive),
        Ok(Some(Parsed::Informational)) => panic!("informational"),
        Ok(None) => panic!("incomplete"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn framing_follows_rfc_9112() {
    let cases = [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            Framing::Length(5),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
            Framing::Length(5),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            Framing::Chunked(Chunk::Size),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            Framing::Eof,
            false,
        ),
        ("HTTP/1.1 200 OK\r\n\r\n", Framing::Eof, false),
        (
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
            Framing::Length(0),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            Framing::Length(1),
            false,
        ),
        (
            "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
            Framing::Length(1),
            false,
        ),
        (
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
            Framing::Length(1),
            true,
        ),
    ];
    for (raw, want, keep) in cases {
        assert_eq!(framing(raw), (want, keep), "{raw:?}");
    }
}

#[test]
fn bad_heads_are_errors() {
    for raw in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
        "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "NOT HTTP\r\n\r\n",
    ] {
        assert!(parse(raw, false).is_err(), "{raw:?} was accepted");
    }
}

/// Decodes `wire` fed in pieces of `step` bytes: the data, the trailers, whether it ended.
fn decode_all(
    mut framing: Framing,
    wire: &[u8],
    step: usize,
) -> Result<(Vec<u8>, Option<HeaderMap>, bool), ResponseError> {
    let mut buf = BytesMut::new();
    let (mut data, mut trailers) = (Vec::new(), None);
    for piece in wire.chunks(step) {
        buf.extend_from_slice(piece);
        while let Some(frame) = decode(&mut framing, &mut buf)? {
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
    }
    let done = matches!(framing, Framing::Length(0) | Framing::Chunked(Chunk::Done));
    Ok((data, trailers, done && buf.is_empty()))
}

#[test]
fn chunked_bodies_decode_in_any_pieces() {
    let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n";
    for step in [1, 2, 3, 7, wire.len()] {
        let (data, trailers, done) =
            decode_all(Framing::Chunked(Chunk::Size), wire, step).expect("decodes");
        assert_eq!(data, b"hello world", "step {step}");
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
        assert!(done, "step {step}");
    }
    let (data, trailers, done) =
        decode_all(Framing::Chunked(Chunk::Size), b"3\r\nabc\r\n0\r\n\r\n", 1).expect("decodes");
    assert_eq!(
        (data.as_slice(), trailers.is_none(), done),
        (&b"abc"[..], true, true)
    );
    for bad in [&b"x\r\n"[..], b"3\r\nabcXY", b"0\r\nbad header\r\n\r\n"] {
        assert!(
            decode_all(Framing::Chunked(Chunk::Size), bad, 1).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn lengths_stop_at_the_length() {
    let (data, _, done) = decode_all(Framing::Length(4), b"abcd", 3).expect("decodes");
    assert_eq!((data.as_slice(), done), (&b"abcd"[..], true));
    let mut framing = Framing::Length(2);
    let mut buf = BytesMut::from("abcd");
    let frame = decode(&mut framing, &mut buf)
        .expect("decodes")
        .expect("a frame");
    assert_eq!(frame.into_data().expect("data"), "ab");
    assert_eq!((framing, &buf[..]), (Framing::Length(0), &b"cd"[..]));
}

#[test]
fn head_responses_and_1xx_have_no_body() {
    let Ok(Some(Parsed::Final(h))) = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
    else {
        panic!("not parsed");
    };
    assert_eq!(h.framing, Framing::Length(0));
    let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n");
    assert!(matches!(
        parse_head(&mut buf, false),
        Ok(Some(Parsed::Informational))
    ));
    assert!(
        matches!(parse_head(&mut buf, false), Ok(None)),
        "incomplete"
    );
    assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
}

#[test]
fn common_header_names_match_what_from_bytes_gives() {
    let names = [
        "content-length",
        "Content-Length",
        "CONTENT-LENGTH",
        "content-type",
        "Content-Type",
        "date",
        "Date",
        "server",
        "Server",
        "connection",
        "Connection",
        "transfer-encoding",
        "Transfer-Encoding",
        "host",
        "Host",
        "HOST",
        "user-agent",
        "User-Agent",
        "accept",
        "Accept",
        "accepts",
        "x-upstream",
        "X-Upstream",
        "dates",
        "",
        "bad name",
        "content-length:",
    ];
    for n in names {
        let fast = header_name(n.as_bytes()).ok();
        let table = HeaderName::from_bytes(n.as_bytes()).ok();
        assert_eq!(fast, table, "{n:?}");
    }
    // Capitalised on the wire, lowercase as a name.
    assert_eq!(
        header_name(b"Content-Length")
            .ok()
            .as_ref()
            .map(HeaderName::as_str),
        Some("content-length")
    );
}
