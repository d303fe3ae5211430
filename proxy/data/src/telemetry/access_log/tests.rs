use http::HeaderValue;

use super::*;

fn record() -> LogRecord {
    let mut request_headers = HeaderMap::new();
    request_headers.insert("host", "svc.test".parse().unwrap());
    request_headers.insert("user-agent", "curl/8".parse().unwrap());
    let mut response_headers = HeaderMap::new();
    response_headers.insert("content-type", "text/plain".parse().unwrap());
    LogRecord {
        // 2024-02-29T12:34:56.789Z
        start_time: UNIX_EPOCH + Duration::from_millis(1_709_210_096_789),
        method: Method::POST,
        uri: "/api/v1?x=1".parse().unwrap(),
        version: Version::HTTP_11,
        request_headers,
        downstream: Some(DownstreamAddrs {
            remote: "127.0.0.1:5000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
        }),
        status: 503,
        response_headers,
        trailers: None,
        flags: ResponseFlags::NO_HEALTHY_UPSTREAM,
        details: "no_healthy_upstream".into(),
        bytes_received: 12,
        bytes_sent: 34,
        duration: Duration::from_millis(56),
        response_duration: Duration::from_millis(7),
        upstream_host: None,
        cluster: "backend".into(),
        route: "api".into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
    }
}

#[test]
fn renders_every_operator() {
    let t = Template::parse(concat!(
        "[%START_TIME%] %REQ(:METHOD)% %REQ_METHOD% %REQ(:PATH)% %PROTOCOL% ",
        "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% ",
        "%BYTES_SENT% %DURATION% %RESPONSE_DURATION% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% ",
        "%ROUTE_NAME% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% ",
        "%DOWNSTREAM_LOCAL_ADDRESS% %REQ(:AUTHORITY)% %REQ(USER-AGENT):4% ",
        "%REQ(X-MISSING?User-Agent)% %RESP(Content-Type)% %RESP(:STATUS)% ",
        "%TRAILER(grpc-status)% %TRACE_ID% 100%%"
    ))
    .unwrap();
    assert_eq!(
        t.render(&record()),
        concat!(
            "[2024-02-29T12:34:56.789Z] POST POST /api/v1?x=1 HTTP/1.1 503 UH ",
            "no_healthy_upstream 12 34 56 7 - backend api 127.0.0.1:5000 127.0.0.1 ",
            "127.0.0.1:8080 svc.test curl curl/8 text/plain 503 - ",
            "4bf92f3577b34da6a3ce929d0e0e4736 100%"
        )
    );
}

#[test]
fn start_time_formats() {
    let t = Template::parse("%START_TIME(%Y/%m/%dT%H:%M:%S.%3f%z %s %j %F %T %6f %Z)%").unwrap();
    assert_eq!(
        t.render(&record()),
        "2024/02/29T12:34:56.789+0000 1709210096 060 2024-02-29 12:34:56 789000 UTC"
    );
    // Days since the epoch and their dates; a time before 1970 prints as the epoch.
    for (days, date) in [
        (0_i64, "1970-01-01"),
        (11_016, "2000-02-29"),
        (19_782, "2024-02-29"),
        (-1, "1970-01-01"),
    ] {
        let shift = Duration::from_secs(86_400 * days.unsigned_abs());
        let at = if days < 0 {
            UNIX_EPOCH - shift
        } else {
            UNIX_EPOCH + shift
        };
        assert_eq!(render_at("%START_TIME(%F)%", at), date, "{days}");
    }
    // An empty format prints nothing, so the missing-value dash.
    assert_eq!(render_at("%START_TIME()%", UNIX_EPOCH), "-");
}

#[test]
fn envoy_default_parses() {
    let t = Template::envoy_default();
    assert_eq!(t.as_str(), DEFAULT_FORMAT);
    Template::parse(DEFAULT_FORMAT).unwrap();
    let line = t.render(&record());
    assert!(
        line.starts_with(r#"[2024-02-29T12:34:56.789Z] "POST /api/v1?x=1 HTTP/1.1" 503 UH 12 34 56 - "-" "curl/8" "-" "svc.test" "-""#),
        "{line}"
    );
}

#[test]
fn errors_name_the_offset() {
    let cases: [(&str, usize, &str); 9] = [
        ("abc %FOO% x", 4, "unknown command operator %FOO%"),
        ("%REQ%", 0, "needs a header name"),
        ("%PROTOCOL(x)%", 10, "takes no argument"),
        ("%REQ(bad header)%", 5, "not a valid header name"),
        ("%REQ(:status)%", 5, "not available"),
        ("x %DURATION", 2, "not closed with '%'"),
        ("%REQ(x", 4, "is not closed"),
        ("50% off", 2, "expected a command operator name"),
        ("%START_TIME(%Q)%", 12, "unsupported time specifier %Q"),
    ];
    for (format, offset, message) in cases {
        match Template::parse(format) {
            Err(TelemetryError::AccessLogFormat {
                offset: o,
                message: m,
            }) => {
                assert_eq!(o, offset, "{format}: {m}");
                assert!(m.contains(message), "{format}: {m}");
            }
            other => panic!("{format}: {other:?}"),
        }
    }
    assert!(Template::parse("").is_err());
}

#[test]
fn flag_values() {
    assert!(matches!(
        AccessLog::parse("off").unwrap().format,
        AccessLogFormat::Off
    ));
    assert!(matches!(
        AccessLog::parse("json").unwrap().format,
        AccessLogFormat::Json
    ));
    assert!(matches!(
        AccessLog::parse("default").unwrap().format,
        AccessLogFormat::Text(_)
    ));
    assert!(AccessLog::parse("%NOPE%").is_err());
}

#[test]
fn json_record() {
    let v: serde_json::Value = serde_json::from_str(&record().to_json().unwrap()).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/api/v1?x=1");
    assert_eq!(v["response_code"], 503);
    assert_eq!(v["response_flags"], "UH");
    assert_eq!(v["bytes_sent"], 34);
    assert_eq!(v["authority"], "svc.test");
    assert_eq!(v["upstream_host"], serde_json::Value::Null);
    assert_eq!(v["downstream_remote_address"], "127.0.0.1:5000");
}

/// The instants the pinned outputs below are rendered at: the epoch, a leap day with one
/// nanosecond, the last nanosecond of a leap year (day 366), the test record's time, the
/// first day of 2100 (not a leap year), the last second of year 9999, and a time before
/// 1970 (printed as the epoch).
fn instants() -> [SystemTime; 7] {
    [
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::new(951_782_400, 1),
        UNIX_EPOCH + Duration::new(1_735_689_599, 999_999_999),
        UNIX_EPOCH + Duration::from_millis(1_709_210_096_789),
        UNIX_EPOCH + Duration::from_secs(4_102_444_800),
        UNIX_EPOCH + Duration::from_secs(253_402_300_799),
        UNIX_EPOCH - Duration::from_secs(1),
    ]
}

fn render_at(template: &str, at: SystemTime) -> String {
    let mut r = record();
    r.start_time = at;
    Template::parse(template).unwrap().render(&r)
}

/// `%START_TIME%` in every form, byte for byte as the hand-written calendar printed it.
#[test]
fn start_time_output_is_pinned() {
    let every = concat!(
        "%START_TIME%|%START_TIME(%Y-%m-%dT%H:%M:%S %j %s %z %Z)%|",
        "%START_TIME(%f %1f %2f %3f %4f %5f %6f %7f %8f %9f)%|",
        "%START_TIME(%F %T %% [x] \\ é)%|%START_TIME(%s):4%"
    );
    let zero_fractions = "000000000 0 00 000 0000 00000 000000 0000000 00000000 000000000";
    let expected = [
        format!(
            "1970-01-01T00:00:00.000Z|1970-01-01T00:00:00 001 0 +0000 UTC|{zero_fractions}|\
             1970-01-01 00:00:00 % [x] \\ é|0"
        ),
        String::from(
            "2000-02-29T00:00:00.000Z|2000-02-29T00:00:00 060 951782400 +0000 UTC|\
             000000001 0 00 000 0000 00000 000000 0000000 00000000 000000001|\
             2000-02-29 00:00:00 % [x] \\ é|9517",
        ),
        String::from(
            "2024-12-31T23:59:59.999Z|2024-12-31T23:59:59 366 1735689599 +0000 UTC|\
             999999999 9 99 999 9999 99999 999999 9999999 99999999 999999999|\
             2024-12-31 23:59:59 % [x] \\ é|1735",
        ),
        String::from(
            "2024-02-29T12:34:56.789Z|2024-02-29T12:34:56 060 1709210096 +0000 UTC|\
             789000000 7 78 789 7890 78900 789000 7890000 78900000 789000000|\
             2024-02-29 12:34:56 % [x] \\ é|1709",
        ),
        format!(
            "2100-01-01T00:00:00.000Z|2100-01-01T00:00:00 001 4102444800 +0000 UTC|\
             {zero_fractions}|2100-01-01 00:00:00 % [x] \\ é|4102"
        ),
        format!(
            "9999-12-31T23:59:59.000Z|9999-12-31T23:59:59 365 253402300799 +0000 UTC|\
             {zero_fractions}|9999-12-31 23:59:59 % [x] \\ é|2534"
        ),
        format!(
            "1970-01-01T00:00:00.000Z|1970-01-01T00:00:00 001 0 +0000 UTC|{zero_fractions}|\
             1970-01-01 00:00:00 % [x] \\ é|0"
        ),
    ];
    for (at, want) in instants().into_iter().zip(expected) {
        assert_eq!(render_at(every, at), want, "{at:?}");
    }
}

/// The JSON format, byte for byte as the hand-built `serde_json` map printed it (keys in
/// alphabetical order, absent values `null`).
#[test]
fn json_output_is_pinned() {
    assert_eq!(
        record().to_json().unwrap(),
        concat!(
            r#"{"authority":"svc.test","bytes_received":12,"bytes_sent":34,"#,
            r#""downstream_local_address":"127.0.0.1:8080","#,
            r#""downstream_remote_address":"127.0.0.1:5000","duration":56,"method":"POST","#,
            r#""path":"/api/v1?x=1","protocol":"HTTP/1.1","request_id":null,"#,
            r#""response_code":503,"response_code_details":"no_healthy_upstream","#,
            r#""response_flags":"UH","route_name":"api","#,
            r#""start_time":"2024-02-29T12:34:56.789Z","#,
            r#""trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","upstream_cluster":"backend","#,
            r#""upstream_host":null,"user_agent":"curl/8","x_forwarded_for":null}"#
        )
    );
    let mut r = record();
    let headers = &mut r.request_headers;
    headers.insert("x-forwarded-for", "10.0.0.1, 10.0.0.2".parse().unwrap());
    headers.insert("x-request-id", HeaderValue::from_static(""));
    headers.insert(
        "user-agent",
        HeaderValue::from_bytes(b"say \"hi\"\\ \xff tab\t").unwrap(),
    );
    headers.insert("x-envoy-original-path", "/orig?q=\"1\"".parse().unwrap());
    r.uri = "http://abs.test:8080/x".parse().unwrap();
    r.method = Method::from_bytes(b"PURGE").unwrap();
    r.version = Version::HTTP_2;
    r.status = 0;
    r.flags = ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION;
    r.details = "".into();
    r.upstream_host = Some("[::1]:8443".parse().unwrap());
    r.cluster = String::new();
    r.route = "r\u{e9}\n".into();
    r.downstream = Some(DownstreamAddrs {
        remote: "[fe80::1%2]:5000".parse().unwrap(),
        local: "[::]:80".parse().unwrap(),
    });
    r.trace_id = String::new();
    r.duration = Duration::from_micros(1_999);
    r.start_time = UNIX_EPOCH + Duration::new(951_782_400, 1);
    assert_eq!(
        r.to_json().unwrap(),
        concat!(
            r#"{"authority":"abs.test:8080","bytes_received":12,"bytes_sent":34,"#,
            r#""downstream_local_address":"[::]:80","#,
            r#""downstream_remote_address":"[fe80::1%2]:5000","duration":1,"method":"PURGE","#,
            r#""path":"/orig?q=\"1\"","protocol":"HTTP/2","request_id":"","response_code":0,"#,
            r#""response_code_details":null,"response_flags":"DC","route_name":"ré\n","#,
            r#""start_time":"2000-02-29T00:00:00.000Z","trace_id":null,"#,
            r#""upstream_cluster":null,"upstream_host":"[::1]:8443","#,
            r#""user_agent":"say \"hi\"\\ "#,
            "\u{fffd}",
            r#" tab\t","x_forwarded_for":"10.0.0.1, 10.0.0.2"}"#
        )
    );
    r.downstream = None;
    r.request_headers = HeaderMap::new();
    r.uri = "/".parse().unwrap();
    r.version = Version::HTTP_09;
    assert_eq!(
        r.to_json().unwrap(),
        concat!(
            r#"{"authority":null,"bytes_received":12,"bytes_sent":34,"#,
            r#""downstream_local_address":null,"downstream_remote_address":null,"#,
            r#""duration":1,"method":"PURGE","path":"/","protocol":"HTTP/0.9","#,
            r#""request_id":null,"response_code":0,"response_code_details":null,"#,
            r#""response_flags":"DC","route_name":"ré\n","#,
            r#""start_time":"2000-02-29T00:00:00.000Z","trace_id":null,"#,
            r#""upstream_cluster":null,"upstream_host":"[::1]:8443","#,
            r#""user_agent":null,"x_forwarded_for":null}"#
        )
    );
}

/// The fast paths write what `time` and std would: the default start time (also the second
/// after a cached one, and twice in one second), and addresses with and without the port.
#[test]
fn fast_paths_match_the_general_ones() {
    for at in instants() {
        for later in [0, 1, 999, 1_000, 1_001] {
            let at = at + Duration::from_millis(later);
            let mut fast = String::new();
            write_default_time(at, &mut fast);
            let mut general = String::new();
            write_time(at, &DEFAULT_TIME, &mut general);
            assert_eq!(fast, general, "{at:?}");
        }
    }
    for a in [
        "127.0.0.1:8080",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "10.1.20.3:443",
        "[::1]:8080",
        "[::ffff:10.0.0.1]:80",
        "[fe80::1]:9",
    ] {
        let a: SocketAddr = a.parse().unwrap();
        let mut with_port = String::new();
        write_addr(Some(a), true, &mut with_port);
        assert_eq!(with_port, a.to_string());
        let mut without = String::new();
        write_addr(Some(a), false, &mut without);
        assert_eq!(without, a.ip().to_string());
    }
    let mut none = String::new();
    write_addr(None, true, &mut none);
    assert_eq!(none, "");
}
