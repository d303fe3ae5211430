#![allow(clippy::unwrap_used)]

use super::*;

fn limits() -> HttpLimits {
    HttpLimits::default()
}

fn parse_all(bytes: &[u8], limits: &HttpLimits) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let mut headers = HeaderMap::new();
    let parsed = parse(&mut buf, &mut headers, limits);
    (parsed, buf)
}

#[test]
fn a_plain_get_is_parsed_and_taken_off_the_buffer() {
    let (parsed, rest) = parse_all(
        b"GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nX-Thing: one\r\nx-thing: two\r\n\r\nGET /next",
        &limits(),
    );
    let Parsed::Request(req, keep_alive) = parsed else {
        panic!("not served here");
    };
    assert!(keep_alive);
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri(), "/a?b=1");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["host"], "svc");
    let things: Vec<_> = req.headers().get_all("x-thing").iter().collect();
    assert_eq!(things, ["one", "two"]);
    assert!(matches!(req.body(), Inbound::Empty));
    assert_eq!(&rest[..], b"GET /next", "the next request's bytes stay");
}

#[test]
fn connection_close_in_any_spelling_ends_keep_alive() {
    for value in ["close", "Close", "keep-alive, close", " CLOSE "] {
        let head = format!("GET / HTTP/1.1\r\nconnection: {value}\r\n\r\n");
        let (parsed, _) = parse_all(head.as_bytes(), &limits());
        assert!(
            matches!(parsed, Parsed::Request(_, false)),
            "{value:?} kept the connection"
        );
    }
    let (parsed, _) = parse_all(
        b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
        &limits(),
    );
    assert!(matches!(parsed, Parsed::Request(_, true)));
}

#[test]
fn requests_with_more_to_negotiate_are_left_whole_for_hyper() {
    let heads: [&[u8]; 11] = [
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
        b"GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b"\x16\x03\x01 not http at all\r\n\r\n",
    ];
    for head in heads {
        let (parsed, rest) = parse_all(head, &limits());
        assert!(
            matches!(parsed, Parsed::Other),
            "{:?} was served here",
            String::from_utf8_lossy(head)
        );
        assert_eq!(&rest[..], head, "bytes were taken");
    }
}

#[test]
fn a_target_the_uri_type_refuses_is_put_back_whole() {
    // httparse takes any visible characters; `Uri` refuses an unclosed IPv6 literal.
    let head: &[u8] = b"GET http://[::1/ HTTP/1.1\r\nhost: a\r\n\r\nGET / HTTP/1.1\r\n";
    assert!(Uri::try_from("http://[::1/").is_err());
    let mut lines = [httparse::EMPTY_HEADER; 4];
    let mut req = httparse::Request::new(&mut lines);
    assert!(matches!(req.parse(head), Ok(httparse::Status::Complete(_))));
    let (parsed, rest) = parse_all(head, &limits());
    assert!(matches!(parsed, Parsed::Other));
    assert_eq!(&rest[..], head);
}

#[test]
fn heads_over_the_limits_are_left_for_hyper_to_answer() {
    let mut small = limits();
    small.max_request_headers_bytes = 64;
    let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(80));
    assert!(matches!(parse_all(big.as_bytes(), &small).0, Parsed::Other));
    // Incomplete but already over the limit.
    let partial = format!("GET / HTTP/1.1\r\nx-big: {}", "a".repeat(80));
    assert!(matches!(
        parse_all(partial.as_bytes(), &small).0,
        Parsed::Other
    ));
    // Incomplete within it: wait for more.
    assert!(matches!(
        parse_all(b"GET / HTTP/1.1\r\nhost", &small).0,
        Parsed::Partial
    ));
    let mut few = limits();
    few.max_headers_count = 2;
    let three = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
    assert!(matches!(parse_all(three, &few).0, Parsed::Other));
    let two = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\n\r\n";
    assert!(matches!(parse_all(two, &few).0, Parsed::Request(..)));
    assert!(serves(&limits()));
    let mut many = limits();
    many.max_headers_count = MAX_HEADERS + 1;
    assert!(!serves(&many));
}

fn head_of(
    status: u16,
    headers: &[(&str, &str)],
    length: BodyLength,
    keep_alive: bool,
) -> (String, Framing, bool) {
    let mut resp = http::Response::new(());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        resp.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let (mut parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    let (framing, last) = encode_head(&mut parts, length, keep_alive, &mut out).unwrap();
    (String::from_utf8(out).unwrap(), framing, last)
}

/// The head without its `date` line, which changes every second.
fn without_date(head: &str) -> String {
    head.split("\r\n")
        .filter(|l| !l.starts_with("date: "))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[test]
fn heads_are_framed_as_hypers_server_frames_them() {
    let (head, framing, last) = head_of(200, &[("x-a", "1")], BodyLength::Known(5), true);
    assert_eq!(
        without_date(&head),
        "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n"
    );
    assert!(head.contains("\r\ndate: ") && head.ends_with(" GMT\r\n\r\n"));
    assert_eq!((framing, last), (Framing::Length(5), false));

    let (head, framing, _) = head_of(404, &[], BodyLength::Unknown, true);
    assert_eq!(
        without_date(&head),
        "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(framing, Framing::Chunked);

    let (head, framing, _) = head_of(200, &[], BodyLength::None, true);
    assert_eq!(
        without_date(&head),
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    );
    assert_eq!(framing, Framing::Length(0));

    // A length header already there is written once and trusted.
    let (head, framing, _) = head_of(
        200,
        &[("content-length", "3"), ("content-length", "3")],
        BodyLength::Known(3),
        true,
    );
    assert_eq!(
        without_date(&head),
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"
    );
    assert_eq!(framing, Framing::Length(3));
    let (_, framing, _) = head_of(200, &[("content-length", "7")], BodyLength::Unknown, true);
    assert_eq!(framing, Framing::Length(7));

    // 204 and 304 carry no body and no framing header.
    for status in [204, 304] {
        let (head, framing, _) = head_of(status, &[], BodyLength::Known(4), true);
        assert!(
            !head.contains("content-length") && !head.contains("chunked"),
            "{head}"
        );
        assert_eq!(framing, Framing::Length(0));
    }

    // A date of the response's own is kept, not doubled.
    let (head, _, _) = head_of(
        200,
        &[("date", "Sun, 06 Nov 1994 08:49:37 GMT")],
        BodyLength::None,
        true,
    );
    assert_eq!(head.matches("date: ").count(), 1);
    assert!(head.contains("date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
}

#[test]
fn closing_is_said_once_and_ends_the_connection() {
    let (head, _, last) = head_of(200, &[], BodyLength::Known(1), false);
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(last);
    let (head, _, last) = head_of(200, &[("connection", "close")], BodyLength::Known(1), false);
    assert_eq!(head.matches("close").count(), 1, "{head}");
    assert!(last);
    // The response's own close ends the connection too.
    let (_, _, last) = head_of(200, &[("Connection", "Close")], BodyLength::Known(1), true);
    assert!(last);
    let (head, _, last) = head_of(
        200,
        &[("connection", "keep-alive")],
        BodyLength::Known(1),
        false,
    );
    assert!(head.contains("connection: keep-alive, close\r\n"), "{head}");
    assert!(last);
}

#[test]
fn transfer_codings_end_in_chunked_and_exclude_a_length() {
    let (head, framing, _) = head_of(
        200,
        &[("transfer-encoding", "gzip"), ("x-a", "1")],
        BodyLength::Unknown,
        true,
    );
    assert!(
        head.contains("transfer-encoding: gzip, chunked\r\nx-a: 1\r\n"),
        "{head}"
    );
    assert_eq!(framing, Framing::Chunked);
    // A length beside a coding, and lengths that differ: no head at all.
    for second in [(TRANSFER_ENCODING, "chunked"), (CONTENT_LENGTH, "4")] {
        let mut resp = http::Response::new(());
        let headers = resp.headers_mut();
        headers.append(CONTENT_LENGTH, HeaderValue::from_static("3"));
        headers.append(second.0, HeaderValue::from_static(second.1));
        let (mut parts, ()) = resp.into_parts();
        assert!(encode_head(&mut parts, BodyLength::Unknown, true, &mut Vec::new()).is_err());
    }
}

#[test]
fn http10_responses_and_reason_phrases_are_written_as_given() {
    let mut resp = http::Response::new(());
    *resp.version_mut() = Version::HTTP_10;
    let (mut parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    let (framing, last) = encode_head(&mut parts, BodyLength::Unknown, true, &mut out).unwrap();
    assert!(out.starts_with(b"HTTP/1.0 200 OK\r\n"));
    // No chunked coding for HTTP/1.0: the body runs to the connection's end.
    assert_eq!((framing, last), (Framing::Close, true));

    let mut resp = http::Response::new(());
    *resp.status_mut() = StatusCode::IM_A_TEAPOT;
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(b"Short and stout"));
    let (mut parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    encode_head(&mut parts, BodyLength::None, true, &mut out).unwrap();
    assert!(out.starts_with(b"HTTP/1.1 418 Short and stout\r\n"));

    let (head, _, last) = head_of(103, &[("link", "</a>")], BodyLength::Known(2), true);
    assert!(
        head.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
        "{head}"
    );
    assert!(!head.contains("link"));
    assert!(last);
}

#[test]
fn chunk_sizes_are_lowercase_hex_lines() {
    for (n, want) in [
        (0usize, "0\r\n"),
        (1, "1\r\n"),
        (15, "f\r\n"),
        (16, "10\r\n"),
        (1024, "400\r\n"),
        (0xdead_beef, "deadbeef\r\n"),
        (usize::MAX, "ffffffffffffffff\r\n"),
    ] {
        let mut out = [0u8; 18];
        let len = chunk_size(n, &mut out);
        assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), want);
    }
}

/// One poll of [`poll_read_head`], with a waker that does nothing.
fn read_once(io: &mut tokio::io::DuplexStream, buf: &mut BytesMut) -> Poll<usize> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    poll_read_head(io, buf, &mut cx).map(|read| read.unwrap())
}

#[tokio::test]
async fn a_connection_waiting_for_a_request_holds_no_read_buffer() {
    let (mut client, mut server) = tokio::io::duplex(64);
    // Spares are per thread; counted from what this one has.
    let base = spare::count();
    let mut buf = BytesMut::new();
    assert!(read_once(&mut server, &mut buf).is_pending());
    assert_eq!(buf.capacity(), 0, "the buffer went back to the worker");
    assert_eq!(spare::count(), base + 1);

    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert_eq!(read_once(&mut server, &mut buf), Poll::Ready(16));
    assert_eq!(spare::count(), base, "the read took the worker's spare");
    assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
    assert!(buf.capacity() >= spare::BUFFER);
}

#[tokio::test]
async fn storage_a_live_head_shares_stays_with_the_connection_until_the_head_is_gone() {
    let (mut client, mut server) = tokio::io::duplex(8192);
    let base = spare::count();
    let mut buf = BytesMut::new();
    let head = vec![b'h'; spare::BUFFER - 500];
    client.write_all(&head).await.unwrap();
    assert_eq!(read_once(&mut server, &mut buf), Poll::Ready(head.len()));
    // Taken off the front, as a parsed head is: the room left behind it is small, and the
    // rest of the storage cannot be taken back while the head lives.
    let head = buf.split().freeze();
    assert!(read_once(&mut server, &mut buf).is_pending());
    assert_eq!(spare::count(), base);
    assert_eq!(buf.capacity(), 500);
    drop(head);
    assert!(read_once(&mut server, &mut buf).is_pending());
    assert_eq!(buf.capacity(), 0);
    assert_eq!(spare::count(), base + 1);
    // Whole again for the next request.
    client.write_all(b"GET").await.unwrap();
    assert_eq!(read_once(&mut server, &mut buf), Poll::Ready(3));
    assert_eq!(buf.capacity(), spare::BUFFER);
}

#[tokio::test]
async fn bytes_read_ahead_stay_and_storage_grown_for_a_long_head_is_freed() {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let base = spare::count();
    let mut buf = BytesMut::new();
    client.write_all(b"GET /").await.unwrap();
    assert_eq!(read_once(&mut server, &mut buf), Poll::Ready(5));
    assert!(read_once(&mut server, &mut buf).is_pending());
    assert_eq!(&buf[..], b"GET /", "a partial head stays where it is");
    assert_eq!(spare::count(), base);

    // A head longer than a few reads grows the storage; once empty it is freed, not kept.
    let long = vec![b'a'; 3 * spare::BUFFER];
    client.write_all(&long).await.unwrap();
    while buf.len() < 5 + long.len() {
        assert!(read_once(&mut server, &mut buf).is_ready());
    }
    buf.clear();
    assert!(read_once(&mut server, &mut buf).is_pending());
    assert_eq!(buf.capacity(), 0);
    assert_eq!(spare::count(), base);
}

#[test]
fn a_requests_box_is_reused_through_the_worker_and_only_when_empty() {
    type Fut = std::future::Ready<u8>;
    let base = spare::slots::<Fut>();
    let mut slot = Some(spare::take_slot::<Fut>());
    let at: *const Option<Fut> = &**slot.as_ref().unwrap();
    spare::give_slot(&mut slot);
    assert!(slot.is_none());
    assert_eq!(spare::slots::<Fut>(), base + 1);
    let mut slot = Some(spare::take_slot::<Fut>());
    assert_eq!(
        &**slot.as_ref().unwrap() as *const Option<Fut>,
        at,
        "the same box"
    );
    assert_eq!(spare::slots::<Fut>(), base);
    // A box with a future in it stays with its connection.
    slot.as_mut().unwrap().set(Some(std::future::ready(1)));
    spare::give_slot(&mut slot);
    assert!(slot.is_some());
    assert_eq!(spare::slots::<Fut>(), base);
    // So does one for a second type, while the worker keeps the first's.
    let mut other = Some(spare::take_slot::<std::future::Ready<u16>>());
    spare::give_slot(&mut other);
    assert!(other.is_some());
    assert_eq!(spare::slots::<std::future::Ready<u16>>(), 0);
}
