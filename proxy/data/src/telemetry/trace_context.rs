//! W3C Trace Context (`traceparent`): read by OpenTelemetry's propagator (the one parser,
//! plus the W3C field widths it does not check), new ids, and the sampling ratio for traces
//! the proxy starts.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::TelemetryError;

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The share of new traces (requests without a valid `traceparent`) marked sampled, as
/// `f64` bits; 1.0 until [`set_trace_sampling_ratio`] says otherwise.
static SAMPLING_RATIO: AtomicU64 = AtomicU64::new(1.0f64.to_bits());

/// Sets the share of new traces the proxy marks sampled, from 0.0 (none) to 1.0 (all, the
/// default). A request with a valid `traceparent` keeps its caller's decision. The OTLP
/// exporter's sampler reads the same ratio, so exported spans follow it too.
pub fn set_trace_sampling_ratio(ratio: f64) -> Result<(), TelemetryError> {
    if !(0.0..=1.0).contains(&ratio) {
        return Err(TelemetryError::SamplingRatio(ratio));
    }
    SAMPLING_RATIO.store(ratio.to_bits(), Ordering::Relaxed);
    Ok(())
}

/// The ratio set by [`set_trace_sampling_ratio`].
pub fn trace_sampling_ratio() -> f64 {
    f64::from_bits(SAMPLING_RATIO.load(Ordering::Relaxed))
}

/// One `traceparent`: a trace id, the id of the caller's span (the parent of whoever
/// receives it), and the flags, of which only `sampled` (bit 0) is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    const SAMPLED: u8 = 0x01;

    /// Parses a `traceparent` value by the W3C rules, with OpenTelemetry's propagator:
    /// lowercase hex fields, version `ff` and all-zero ids invalid, version `00` exactly 55
    /// characters, and a later version read by its first four fields if it has more.
    pub fn parse(value: &str) -> Option<Self> {
        extract(value, None).map(|cx| Self::of(cx.span().span_context()))
    }

    /// A new trace with a random id; `sampled` as given.
    pub fn new_root(sampled: bool) -> Self {
        Self {
            trace_id: random_nonzero(),
            parent_id: random_nonzero(),
            flags: if sampled { Self::SAMPLED } else { 0 },
        }
    }

    /// A new trace sampled at the ratio of [`set_trace_sampling_ratio`].
    pub fn new_sampled_root() -> Self {
        let ratio = trace_sampling_ratio();
        let sampled = ratio >= 1.0 || (ratio > 0.0 && rand::rng().random::<f64>() < ratio);
        Self::new_root(sampled)
    }

    /// The same trace and sampling decision with a new random span id as parent: what the
    /// proxy sends upstream for its own span.
    pub fn child(&self) -> Self {
        Self {
            parent_id: random_nonzero(),
            ..*self
        }
    }

    fn of(sc: &SpanContext) -> Self {
        Self::from_parts(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.is_sampled(),
        )
    }

    pub(crate) fn from_parts(trace_id: [u8; 16], parent_id: [u8; 8], sampled: bool) -> Self {
        Self {
            trace_id,
            parent_id,
            flags: if sampled { Self::SAMPLED } else { 0 },
        }
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    pub fn sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        // The same 32 lowercase digits as `TraceId`'s `Display`, without `core::fmt`
        // (once per logged request); 16 bytes always fit 32 digits.
        let mut out = [0u8; 32];
        match hex::encode_to_slice(self.trace_id, &mut out) {
            Ok(()) => String::from_utf8_lossy(&out).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// The `traceparent` header, written into a buffer on the stack: this runs for every
    /// request, and formatting through `Display` costs two allocations more.
    ///
    /// Marked never to be indexed: over HTTP/2 each request's new value would otherwise
    /// take a slot in HPACK's dynamic table, never to be used again, evicting the entries
    /// that do repeat (`:authority`, `content-type`, ...) and lengthening the encoder's
    /// walk over same-name entries on every request. h2's encoder offers no plain "without
    /// indexing" form; the never-indexed one also tells a proxy after us not to index it,
    /// which is as right for a value unique to one request. The value is no secret: besides
    /// HPACK encoders, only `Debug` formatting reads the mark, and the proxy does not log
    /// headers that way.
    pub(crate) fn to_header_value(self) -> HeaderValue {
        // 00-<32 hex>-<16 hex>-<2 hex>; each slice is exactly twice its input, so the
        // encodings cannot fail, and the digits and dashes always make a valid header value.
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let encoded = hex::encode_to_slice(self.trace_id, &mut out[3..35])
            .and_then(|()| hex::encode_to_slice(self.parent_id, &mut out[36..52]))
            .and_then(|()| hex::encode_to_slice([self.flags], &mut out[53..55]));
        let mut value = match encoded {
            Ok(()) => HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("")),
            Err(_) => HeaderValue::from_static(""),
        };
        value.set_sensitive(true);
        value
    }
}

/// Version `00`, the only one this proxy writes.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.parent_id),
            self.flags
        )
    }
}

thread_local! {
    /// The generator of new ids: a small fast generator per thread, seeded from the OS.
    /// Ids need to be unique and unguessable enough not to collide, not secret, and the
    /// proxy makes up to three per request; ChaCha (`rand::rng()`) costs several times more
    /// per id. OpenTelemetry's SDK makes its ids the same way.
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    IDS.with_borrow_mut(|rng| {
        loop {
            let id: [u8; N] = rng.random();
            if id != [0; N] {
                return id;
            }
        }
    })
}

/// The caller's trace context, read once per request: the remote parent of the proxy's span
/// (with the caller's `tracestate`).
pub(crate) struct CallerTrace(opentelemetry::Context);

impl CallerTrace {
    /// The request's trace context, if it has exactly one valid `traceparent` (W3C: two make
    /// it invalid).
    pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let mut values = crate::headers::get_all(headers, &TRACEPARENT)?.iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let tracestate = headers.get(TRACESTATE).and_then(|v| v.to_str().ok());
        extract(first.to_str().ok()?, tracestate).map(Self)
    }

    /// The caller's trace and sampling decision with a new span id as parent, for when no
    /// OpenTelemetry span of the proxy's own is there to name.
    pub(crate) fn child(&self) -> TraceParent {
        TraceParent::of(self.0.span().span_context()).child()
    }

    /// The OpenTelemetry context whose remote span is the caller's.
    pub(crate) fn otel_parent(&self) -> opentelemetry::Context {
        self.0.clone()
    }
}

/// Runs the propagator over one `traceparent` (and `tracestate`), with the W3C field widths
/// it does not check (the one parser, shared with the control plane's REST API); `None`
/// unless it yields a valid remote span context.
fn extract(traceparent: &str, tracestate: Option<&str>) -> Option<opentelemetry::Context> {
    switchboard_runtime::otel::remote_parent(traceparent, tracestate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats() {
        let p = TraceParent::parse(VALID).unwrap();
        assert!(p.sampled());
        assert_eq!(p.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.to_string(), VALID);
        let child = p.child();
        assert_eq!(child.trace_id(), p.trace_id());
        assert_ne!(child.parent_id(), p.parent_id());
        assert!(child.sampled());
    }

    #[test]
    fn rejects_invalid() {
        let cases = [
            "",
            "garbage",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // zero trace id / parent id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // version ff, and version 00 with extra fields
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // wrong separators and lengths
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            // fields the propagator alone would take: a trailing '-' after version 00, a
            // sign in an id, a one-digit flags field of a later version
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-+bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-what-follows",
        ];
        for c in cases {
            assert_eq!(TraceParent::parse(c), None, "{c:?}");
        }
    }

    #[test]
    fn later_versions_are_read_by_their_first_fields() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-follows";
        let p = TraceParent::parse(v).unwrap();
        assert!(p.sampled());
        assert!(p.to_string().starts_with("00-4bf92f35"));
        assert!(
            TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09x")
                .is_none()
        );
    }

    #[test]
    fn two_traceparent_headers_are_invalid() {
        let mut h = HeaderMap::new();
        h.append(TRACEPARENT, HeaderValue::from_static(VALID));
        let caller = CallerTrace::from_headers(&h).unwrap();
        assert_eq!(
            caller.child().trace_id(),
            TraceParent::parse(VALID).unwrap().trace_id()
        );
        h.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(CallerTrace::from_headers(&h).is_none());
    }

    #[test]
    fn traceparent_is_never_indexed() {
        // Over HTTP/2 a value new with each request must not churn HPACK's dynamic table.
        let root = TraceParent::new_root(true);
        assert!(root.to_header_value().is_sensitive());
        assert!(root.child().to_header_value().is_sensitive());
    }

    #[test]
    fn new_roots_are_valid() {
        let p = TraceParent::new_root(false);
        assert!(!p.sampled());
        assert_eq!(TraceParent::parse(&p.to_string()), Some(p));
        assert_eq!(
            p.to_header_value().to_str().ok(),
            Some(p.to_string().as_str())
        );
    }
}
