//! Access logs: one `tracing` event per request, target [`ACCESS_LOG_TARGET`] at INFO,
//! written when the response body ends (or the downstream goes away), so that byte counts
//! and durations are final.
//!
//! The text format is Envoy's: literal text with command operators `%NAME%`,
//! `%NAME(ARG)%` and `%NAME(ARG):MAX%` (truncated to `MAX` characters), `%%` for a literal
//! `%`. It is parsed once into a [`Template`]; an unknown operator is an error at startup.
//! A missing value prints `-`, as in Envoy. `%START_TIME(...)%` formats are translated once
//! into the `time` crate's format descriptions, which do the calendar and the formatting.
//! The JSON format is a derived `Serialize` record borrowing from the request's record.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, Method, Uri, Version};
use serde::Serialize;
use time::UtcDateTime;
use time::format_description::FormatDescriptionV3;

use super::{DownstreamAddrs, ResponseFlags, TelemetryError};

/// The `tracing` target of access log events: `RUST_LOG=access_log=off` turns them off.
pub const ACCESS_LOG_TARGET: &str = "access_log";

/// Envoy's default access log format (without its trailing newline).
pub const DEFAULT_FORMAT: &str = concat!(
    r#"[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" "#,
    r#"%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "#,
    r#"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "#,
    r#""%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%""#
);

/// How requests are logged.
#[derive(Debug, Clone)]
pub enum AccessLogFormat {
    /// No access log.
    Off,
    /// One JSON object per request, with the keys of Istio's JSON access log
    /// (`start_time`, `method`, `path`, `protocol`, `response_code`, `response_flags`, …).
    Json,
    /// A line rendered from an Envoy format string.
    Text(Template),
}

/// The process's access log configuration.
#[derive(Debug, Clone)]
pub struct AccessLog {
    pub format: AccessLogFormat,
}

impl AccessLog {
    /// Reads a `--access-log-format` value: `off`, `json`, `default` (Envoy's default text
    /// format), or an Envoy format string.
    pub fn parse(value: &str) -> Result<Self, TelemetryError> {
        let format = match value {
            "off" => AccessLogFormat::Off,
            "json" => AccessLogFormat::Json,
            "default" => AccessLogFormat::Text(Template::envoy_default()),
            template => AccessLogFormat::Text(Template::parse(template)?),
        };
        Ok(Self { format })
    }

    /// Whether a request starting now would be logged: a format is set and the subscriber
    /// wants INFO events of [`ACCESS_LOG_TARGET`].
    pub(crate) fn enabled(&self) -> bool {
        !matches!(self.format, AccessLogFormat::Off)
            && tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO)
    }

    pub(crate) fn emit(&self, record: &LogRecord) {
        match &self.format {
            AccessLogFormat::Off => {}
            AccessLogFormat::Json => match record.to_json() {
                Ok(line) => tracing::info!(target: ACCESS_LOG_TARGET, "{line}"),
                Err(e) => tracing::warn!(error = %e, "cannot write a JSON access log line"),
            },
            AccessLogFormat::Text(t) => {
                tracing::info!(target: ACCESS_LOG_TARGET, "{}", t.render(record));
            }
        }
    }
}

impl Default for AccessLog {
    /// Envoy's default text format.
    fn default() -> Self {
        Self {
            format: AccessLogFormat::Text(Template::envoy_default()),
        }
    }
}

impl FromStr for AccessLog {
    type Err = TelemetryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// Sets the process's access log, once, before serving; later calls are ignored with a
/// warning. Without a call, requests are logged in Envoy's default text format.
pub fn set_access_log(log: AccessLog) {
    if ACCESS_LOG.set(log).is_err() {
        tracing::warn!("the access log format is already set; ignoring the new one");
    }
}

pub(crate) fn access_log() -> &'static AccessLog {
    ACCESS_LOG.get_or_init(AccessLog::default)
}

/// A parsed Envoy format string.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Operator {
        op: Operator,
        max_len: Option<usize>,
    },
}

#[derive(Debug, Clone)]
enum Operator {
    StartTime(Option<FormatDescriptionV3<'static>>),
    Req(HeaderRef),
    Resp(HeaderRef),
    Trailer(HeaderRef),
    Method,
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    Duration,
    ResponseDuration,
    BytesReceived,
    BytesSent,
    UpstreamHost,
    UpstreamCluster,
    RouteName,
    DownstreamRemoteAddress { port: bool },
    DownstreamLocalAddress { port: bool },
    TraceId,
}

/// `%REQ(X?Y)%`: header `X`, else `Y`.
#[derive(Debug, Clone)]
struct HeaderRef {
    main: HeaderKey,
    fallback: Option<HeaderKey>,
}

#[derive(Debug, Clone)]
enum HeaderKey {
    Name(HeaderName),
    Method,
    Path,
    Authority,
    Scheme,
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderSide {
    Request,
    Response,
    Trailer,
}

fn err(offset: usize, message: impl Into<String>) -> TelemetryError {
    TelemetryError::AccessLogFormat {
        offset,
        message: message.into(),
    }
}

impl Template {
    /// Envoy's default format, [`DEFAULT_FORMAT`].
    pub fn envoy_default() -> Self {
        // Checked by a test; the fallback only keeps this infallible.
        Self::parse(DEFAULT_FORMAT).unwrap_or_else(|_| Self {
            source: String::new(),
            parts: Vec::new(),
        })
    }

    /// Parses an Envoy format string; unknown operators, operators with a missing or
    /// unexpected argument, bad header names and unclosed operators are errors naming the
    /// byte offset where the problem starts.
    pub fn parse(format: &str) -> Result<Self, TelemetryError> {
        if format.is_empty() {
            return Err(err(0, "the format is empty"));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while i < format.len() {
            let rest = &format[i..];
            let Some(rel) = rest.find('%') else {
                literal.push_str(rest);
                break;
            };
            literal.push_str(&rest[..rel]);
            let start = i + rel;
            let after = &format[start + 1..];
            if after.starts_with('%') {
                literal.push('%');
                i = start + 2;
                continue;
            }
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..name_len];
            if name.is_empty() {
                return Err(err(
                    start,
                    "expected a command operator name after '%' (write %% for a literal %)",
                ));
            }
            let mut j = start + 1 + name_len;
            let mut arg = None;
            if format[j..].starts_with('(') {
                let Some(close) = format[j..].find(')') else {
                    return Err(err(j, format!("'(' of %{name}(…)% is not closed")));
                };
                arg = Some((j + 1, &format[j + 1..j + close]));
                j += close + 1;
            }
            let mut max_len = None;
            if format[j..].starts_with(':') {
                let digits = format[j + 1..]
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(format.len() - j - 1);
                let n = format[j + 1..j + 1 + digits]
                    .parse::<usize>()
                    .map_err(|_| err(j + 1, format!("expected a length after %{name}…:")))?;
                max_len = Some(n);
                j += 1 + digits;
            }
            if !format[j..].starts_with('%') {
                return Err(err(
                    start,
                    format!("command operator %{name}… is not closed with '%'"),
                ));
            }
            let op = Operator::new(name, arg, start)?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Operator { op, max_len });
            i = j + 1;
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self {
            source: format.to_owned(),
            parts,
        })
    }

    /// The format string this was parsed from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub(crate) fn render(&self, r: &LogRecord) -> String {
        let mut out = String::with_capacity(256);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Operator { op, max_len } => {
                    let start = out.len();
                    op.render(r, &mut out);
                    if out.len() == start {
                        out.push('-');
                    } else if let Some(max) = max_len
                        && let Some((cut, _)) = out[start..].char_indices().nth(*max)
                    {
                        out.truncate(start + cut);
                    }
                }
            }
        }
        out
    }
}

impl FromStr for Template {
    type Err = TelemetryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Operator {
    fn new(name: &str, arg: Option<(usize, &str)>, offset: usize) -> Result<Self, TelemetryError> {
        let header = |side| match arg {
            Some((at, a)) => HeaderRef::parse(a, side, at),
            None => Err(err(
                offset,
                format!("%{name}% needs a header name: %{name}(X-HEADER)%"),
            )),
        };
        let op = match name {
            "REQ" => return Ok(Self::Req(header(HeaderSide::Request)?)),
            "RESP" => return Ok(Self::Resp(header(HeaderSide::Response)?)),
            "TRAILER" => return Ok(Self::Trailer(header(HeaderSide::Trailer)?)),
            "START_TIME" => {
                return Ok(Self::StartTime(match arg {
                    Some((at, f)) => Some(parse_time_format(f, at)?),
                    None => None,
                }));
            }
            "REQ_METHOD" => Self::Method,
            "PROTOCOL" => Self::Protocol,
            "RESPONSE_CODE" => Self::ResponseCode,
            "RESPONSE_FLAGS" => Self::ResponseFlags,
            "RESPONSE_CODE_DETAILS" => Self::ResponseCodeDetails,
            "DURATION" => Self::Duration,
            "RESPONSE_DURATION" => Self::ResponseDuration,
            "BYTES_RECEIVED" => Self::BytesReceived,
            "BYTES_SENT" => Self::BytesSent,
            "UPSTREAM_HOST" => Self::UpstreamHost,
            "UPSTREAM_CLUSTER" => Self::UpstreamCluster,
            "ROUTE_NAME" => Self::RouteName,
            "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
                Self::DownstreamRemoteAddress { port: true }
            }
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
            | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
                Self::DownstreamRemoteAddress { port: false }
            }
            "DOWNSTREAM_LOCAL_ADDRESS" => Self::DownstreamLocalAddress { port: true },
            "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Self::DownstreamLocalAddress { port: false },
            "TRACE_ID" => Self::TraceId,
            _ => return Err(err(offset, format!("unknown command operator %{name}%"))),
        };
        match arg {
            Some((at, _)) => Err(err(at, format!("%{name}% takes no argument"))),
            None => Ok(op),
        }
    }

    fn render(&self, r: &LogRecord, out: &mut String) {
        match self {
            // No format: Envoy's default.
            Self::StartTime(None) => write_default_time(r.start_time, out),
            Self::StartTime(Some(format)) => write_time(r.start_time, format, out),
            Self::Req(h) => h.render(r, HeaderSide::Request, out),
            Self::Resp(h) => h.render(r, HeaderSide::Response, out),
            Self::Trailer(h) => h.render(r, HeaderSide::Trailer, out),
            Self::Method => out.push_str(r.method.as_str()),
            Self::Protocol => out.push_str(protocol(r.version)),
            Self::ResponseCode => push_int(out, r.status),
            Self::ResponseFlags => push_display(out, r.flags),
            Self::ResponseCodeDetails => out.push_str(&r.details),
            Self::Duration => push_int(out, r.duration.as_millis()),
            Self::ResponseDuration => push_int(out, r.response_duration.as_millis()),
            Self::BytesReceived => push_int(out, r.bytes_received),
            Self::BytesSent => push_int(out, r.bytes_sent),
            Self::UpstreamHost => {
                write_addr(r.upstream_host, true, out);
            }
            Self::UpstreamCluster => out.push_str(&r.cluster),
            Self::RouteName => out.push_str(&r.route),
            Self::DownstreamRemoteAddress { port } => {
                write_addr(r.downstream.map(|d| d.remote), *port, out);
            }
            Self::DownstreamLocalAddress { port } => {
                write_addr(r.downstream.map(|d| d.local), *port, out);
            }
            Self::TraceId => out.push_str(&r.trace_id),
        }
    }
}

impl HeaderRef {
    fn parse(arg: &str, side: HeaderSide, offset: usize) -> Result<Self, TelemetryError> {
        let (main, fallback) = match arg.split_once('?') {
            Some((a, b)) => (a, Some(b)),
            None => (arg, None),
        };
        let main = HeaderKey::parse(main, side, offset)?;
        let fallback = fallback
            .map(|f| HeaderKey::parse(f, side, offset))
            .transpose()?;
        Ok(Self { main, fallback })
    }

    fn render(&self, r: &LogRecord, side: HeaderSide, out: &mut String) {
        let start = out.len();
        self.main.render(r, side, out);
        if out.len() == start
            && let Some(f) = &self.fallback
        {
            f.render(r, side, out);
        }
    }
}

impl HeaderKey {
    fn parse(name: &str, side: HeaderSide, offset: usize) -> Result<Self, TelemetryError> {
        let lower = name.to_ascii_lowercase();
        let key = match (side, lower.as_str()) {
            (HeaderSide::Request, ":method") => Self::Method,
            (HeaderSide::Request, ":path") => Self::Path,
            (HeaderSide::Request, ":authority") => Self::Authority,
            (HeaderSide::Request, ":scheme") => Self::Scheme,
            (HeaderSide::Response, ":status") => Self::Status,
            (_, pseudo) if pseudo.starts_with(':') => {
                return Err(err(
                    offset,
                    format!("pseudo-header {name:?} is not available here"),
                ));
            }
            (_, header) => Self::Name(
                HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| err(offset, format!("{name:?} is not a valid header name")))?,
            ),
        };
        Ok(key)
    }

    fn render(&self, r: &LogRecord, side: HeaderSide, out: &mut String) {
        let headers = match side {
            HeaderSide::Request => &r.request_headers,
            HeaderSide::Response => &r.response_headers,
            HeaderSide::Trailer => match &r.trailers {
                Some(t) => t,
                None => return,
            },
        };
        match self {
            Self::Name(n) => {
                if let Some(v) = headers.get(n) {
                    out.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
            }
            Self::Method => out.push_str(r.method.as_str()),
            Self::Path => {
                if let Some(pq) = r.uri.path_and_query() {
                    out.push_str(pq.as_str());
                }
            }
            Self::Authority => {
                if let Some(a) = r.uri.authority() {
                    out.push_str(a.as_str());
                } else if let Some(h) = r.request_headers.get(http::header::HOST) {
                    out.push_str(&String::from_utf8_lossy(h.as_bytes()));
                }
            }
            Self::Scheme => out.push_str(r.uri.scheme_str().unwrap_or("http")),
            Self::Status => push_int(out, r.status),
        }
    }
}

/// Everything an access log line can show about one request.
#[derive(Debug, Clone)]
pub(crate) struct LogRecord {
    pub(crate) start_time: SystemTime,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) request_headers: HeaderMap,
    pub(crate) downstream: Option<DownstreamAddrs>,
    /// 0 when no response was sent (the downstream went away first).
    pub(crate) status: u16,
    pub(crate) response_headers: HeaderMap,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) flags: ResponseFlags,
    pub(crate) details: Cow<'static, str>,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) duration: Duration,
    pub(crate) response_duration: Duration,
    pub(crate) upstream_host: Option<SocketAddr>,
    pub(crate) cluster: String,
    pub(crate) route: String,
    pub(crate) trace_id: String,
}

impl LogRecord {
    fn to_json(&self) -> Result<String, serde_json::Error> {
        let header = |name: &str| {
            self.request_headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
        };
        let mut start_time = String::with_capacity(24);
        write_default_time(self.start_time, &mut start_time);
        let path = header("x-envoy-original-path")
            .or_else(|| self.uri.path_and_query().map(|pq| pq.as_str().into()))
            .filter(|p| !p.is_empty());
        serde_json::to_string(&JsonLine {
            authority: self
                .uri
                .authority()
                .map(|a| a.as_str().into())
                .or_else(|| header("host")),
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            downstream_local_address: self.downstream.map(|d| d.local),
            downstream_remote_address: self.downstream.map(|d| d.remote),
            duration: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            method: self.method.as_str(),
            path,
            protocol: protocol(self.version),
            request_id: header("x-request-id"),
            response_code: self.status,
            response_code_details: non_empty(&self.details),
            response_flags: self.flags,
            route_name: non_empty(&self.route),
            start_time: &start_time,
            trace_id: non_empty(&self.trace_id),
            upstream_cluster: non_empty(&self.cluster),
            upstream_host: self.upstream_host,
            user_agent: header("user-agent"),
            x_forwarded_for: header("x-forwarded-for"),
        })
    }
}

/// One line of the JSON format, with the keys of Istio's JSON access log; absent values are
/// `null`. The fields are in alphabetical order, the order this format has always printed.
#[derive(Serialize)]
struct JsonLine<'a> {
    authority: Option<Cow<'a, str>>,
    bytes_received: u64,
    bytes_sent: u64,
    downstream_local_address: Option<SocketAddr>,
    downstream_remote_address: Option<SocketAddr>,
    duration: u64,
    method: &'a str,
    path: Option<Cow<'a, str>>,
    protocol: &'static str,
    request_id: Option<Cow<'a, str>>,
    response_code: u16,
    response_code_details: Option<&'a str>,
    #[serde(serialize_with = "as_display")]
    response_flags: ResponseFlags,
    route_name: Option<&'a str>,
    start_time: &'a str,
    trace_id: Option<&'a str>,
    upstream_cluster: Option<&'a str>,
    upstream_host: Option<SocketAddr>,
    user_agent: Option<Cow<'a, str>>,
    x_forwarded_for: Option<Cow<'a, str>>,
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn as_display<S: serde::Serializer>(
    v: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(v)
}

fn push_display(out: &mut String, v: impl std::fmt::Display) {
    let _ = write!(out, "{v}");
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "",
    }
}

/// An address as std prints it (`a.b.c.d:port`, `[v6]:port`); IPv4, the usual case, without
/// `core::fmt`, whose padding support made it the costliest operator of the default format.
fn write_addr(addr: Option<SocketAddr>, port: bool, out: &mut String) {
    match addr {
        Some(SocketAddr::V4(a)) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_int(out, octet);
            }
            if port {
                out.push(':');
                push_int(out, a.port());
            }
        }
        Some(a) if port => push_display(out, a),
        Some(a) => push_display(out, a.ip()),
        None => {}
    }
}

/// An integer, formatted without `core::fmt` (several per line).
fn push_int(out: &mut String, v: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Envoy's default `%START_TIME%`: `2024-01-31T23:59:59.123Z`. [`write_default_time`]
/// writes it; the tests hold it to this description.
#[cfg(test)]
const DEFAULT_TIME: FormatDescriptionV3<'static> = time::macros::format_description!(
    version = 3,
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// Translates a `%START_TIME(...)%` format (strftime's `%Y %m %d %H %M %S %j %s %z %Z %F %T`
/// and Envoy's `%f`, `%1f`…`%9f` for the fraction of the second) into a format description
/// of the `time` crate, once, at startup. The time is always UTC.
fn parse_time_format(
    f: &str,
    offset: usize,
) -> Result<FormatDescriptionV3<'static>, TelemetryError> {
    let mut description = String::with_capacity(f.len() * 4);
    let mut chars = f.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c != '%' {
            if matches!(c, '[' | ']' | '\\') {
                description.push('\\');
            }
            description.push(c);
            continue;
        }
        let Some((_, spec)) = chars.next() else {
            return Err(err(offset + at, "START_TIME format ends with '%'"));
        };
        description.push_str(match spec {
            '%' => "%",
            'Y' => "[year]",
            'm' => "[month]",
            'd' => "[day]",
            'H' => "[hour]",
            'M' => "[minute]",
            'S' => "[second]",
            'j' => "[ordinal]",
            's' => "[unix_timestamp]",
            'z' => "[offset_hour sign:mandatory][offset_minute]",
            'Z' => "UTC",
            'f' => "[subsecond digits:9]",
            'F' => "[year]-[month]-[day]",
            'T' => "[hour]:[minute]:[second]",
            d @ '1'..='9' if chars.peek().map(|(_, c)| *c) == Some('f') => {
                chars.next();
                let _ = write!(description, "[subsecond digits:{d}]");
                continue;
            }
            other => {
                return Err(err(
                    offset + at,
                    format!("START_TIME: unsupported time specifier %{other}"),
                ));
            }
        });
    }
    time::format_description::parse_owned::<3>(&description)
        .map_err(|e| err(offset, format!("START_TIME: {e}")))
}

/// Envoy's default `%START_TIME%` to the second, which [`write_default_time`] formats once
/// a second.
const TO_THE_SECOND: FormatDescriptionV3<'static> =
    time::macros::format_description!(version = 3, "[year]-[month]-[day]T[hour]:[minute]:[second]");

/// `t` in Envoy's default `%START_TIME%` format. A line per request, most of them in the
/// same second as the one before: the date and time to the second are formatted once a
/// second per thread, and the milliseconds appended.
fn write_default_time(t: SystemTime, out: &mut String) {
    /// The second last formatted, its text, and whether `time` could represent it (else the
    /// text is the epoch's, as [`write_time`] prints any time it cannot).
    struct Second {
        secs: u64,
        text: String,
        in_range: bool,
    }
    thread_local! {
        static SECOND: RefCell<Second> = const {
            RefCell::new(Second { secs: u64::MAX, text: String::new(), in_range: false })
        };
    }
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let in_range = SECOND.with_borrow_mut(|second| {
        if second.secs != secs {
            let whole = Duration::from_secs(secs);
            second.in_range = time::Duration::try_from(whole)
                .ok()
                .and_then(|d| UtcDateTime::UNIX_EPOCH.checked_add(d))
                .is_some();
            second.text.clear();
            write_time(
                UNIX_EPOCH.checked_add(whole).unwrap_or(UNIX_EPOCH),
                &TO_THE_SECOND,
                &mut second.text,
            );
            second.secs = secs;
        }
        out.push_str(&second.text);
        second.in_range
    });
    let ms = if in_range { since.subsec_millis() } else { 0 };
    out.push('.');
    for digit in [ms / 100, ms / 10 % 10, ms % 10] {
        out.push(char::from_digit(digit, 10).unwrap_or('0'));
    }
    out.push('Z');
}

/// Writes `t` in UTC as `format` says. Times before 1970 print as 1970, as they always have.
fn write_time(t: SystemTime, format: &FormatDescriptionV3<'_>, out: &mut String) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let utc = time::Duration::try_from(since)
        .ok()
        .and_then(|d| UtcDateTime::UNIX_EPOCH.checked_add(d))
        .unwrap_or(UtcDateTime::UNIX_EPOCH);
    let _ = utc.format_into(&mut LineWriter(out), format);
}

/// Lets the `time` crate write into the line being rendered. It writes digits, signs and the
/// format's literals, each a whole UTF-8 string.
struct LineWriter<'a>(&'a mut String);

impl io::Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let s =
            std::str::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.0.push_str(s);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
