//! Listener: a socket address and one filter chain that is either an HTTP connection manager
//! (routes over RDS or inline; fault and router filters) or a TCP proxy to one cluster (or a
//! weighted choice of clusters), optionally behind TLS (`envoy.transport_sockets.tls`) and
//! RBAC network filters (see [`super::rbac`]).
//!
//! Limits that protect the proxy from bad clients are explicit here, with documented
//! defaults (see [`HttpLimits`]); where a default differs from Envoy's, the constant says so.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_xds_proto::pb::envoy::config::core::v3::{
    Http2ProtocolOptions, HttpProtocolOptions,
};
use switchboard_xds_proto::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener as PbListener, ListenerFilter, filter, listener_filter,
};
use switchboard_xds_proto::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as PbHcm, HttpFilter, http_connection_manager, http_filter,
};
use switchboard_xds_proto::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy as PbTcpProxy, tcp_proxy,
};
use switchboard_xds_proto::{
    HttpFault, HttpRbac as PbHttpRbac, NetworkRbac as PbNetworkRbac, Router, type_url, unpack,
};

mod sni;

pub(crate) use super::ads_source;
use super::rbac::{HttpRbac, NetworkRbac, http_rbac, network_rbac};
use super::route::{Clusters, Fault, RouteConfig, fault, route_config};
use super::tls::downstream_socket;
pub use super::tls::{ClientValidation, DataSource, DownstreamTls, SniCertificate};
pub use super::xfcc::Xfcc;
use super::{ConfigError, Path, check_fields, duration, socket_addr};

/// A listener the proxy binds.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub kind: ListenerKind,
    /// TLS termination for every connection (the filter chain's `transport_socket`);
    /// `None` for plaintext.
    pub tls: Option<DownstreamTls>,
    /// Permissive mode (`tls_inspector` and two filter chains told apart by
    /// `filter_chain_match.transport_protocol`): connections that do not open with a TLS
    /// handshake are served by this chain; `kind` and `tls` above are the TLS chain's.
    pub plaintext: Option<PlaintextChain>,
    /// RBAC network filters before the HCM or TCP proxy, in order: each connection is
    /// checked once, after the TLS handshake.
    pub network_rbac: Vec<NetworkRbac>,
}

/// The plaintext filter chain of a listener that also accepts TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaintextChain {
    pub kind: ListenerKind,
    /// This chain's RBAC network filters (as [`Listener::network_rbac`]).
    pub network_rbac: Vec<NetworkRbac>,
}

/// The listener filter that tells TLS from plaintext connections.
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// What the listener does with a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenerKind {
    Http(HttpConnectionManager),
    Tcp(TcpProxy),
}

/// HTTP on a listener: where its routes come from and which filters run before the router.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConnectionManager {
    pub routes: RouteSource,
    /// The fault filter runs (its per-route configs apply); `Some` default config when the
    /// filter has a listener-wide one.
    pub fault: Option<Fault>,
    /// Accept absolute-form URIs (`GET http://svc/ HTTP/1.1`): the HTTP_PROXY style.
    pub allow_absolute_url: bool,
    /// Per-connection limits and timeouts against slow or abusive clients.
    pub limits: HttpLimits,
    /// RBAC filters, in filter chain order; they run before routing (and before the fault
    /// filter, which must come after them).
    pub rbac: Vec<HttpRbac>,
    /// `x-forwarded-client-cert`: removed by default, set from a verified client certificate
    /// when configured.
    pub xfcc: Xfcc,
}

/// Envoy's default for `max_request_headers_kb`: 60 KiB.
pub const DEFAULT_MAX_REQUEST_HEADERS_BYTES: usize = 60 * 1024;
/// Envoy's upper bound for `max_request_headers_kb`: 8 MiB.
pub const MAX_MAX_REQUEST_HEADERS_KB: u32 = 8192;
/// Envoy's default for `common_http_protocol_options.max_headers_count`.
pub const DEFAULT_MAX_HEADERS_COUNT: usize = 100;
/// The largest `max_headers_count` accepted. **Deviation:** Envoy has no upper bound; the
/// HTTP/1 parser reserves room for this many headers per request, so it is bounded here.
pub const MAX_MAX_HEADERS_COUNT: u32 = 8192;
/// Default for `request_headers_timeout`. **Deviation:** Envoy has no timeout by default;
/// this proxy cuts a client that has not sent complete request headers 10 s after their
/// first byte (slowloris), unless the HCM sets the field (`0s` disables it, as in Envoy).
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's default for the HCM's `stream_idle_timeout`: 5 min.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's default for `common_http_protocol_options.idle_timeout`: 1 h.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default for `http2_protocol_options.max_concurrent_streams`. **Deviation:** Envoy's is
/// 2^31 - 1; 1024 bounds the memory one HTTP/2 connection can hold.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Envoy's default for the TCP proxy's `idle_timeout`: 1 h.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default for the filter chain's `transport_socket_connect_timeout` (the TLS handshake).
/// **Deviation:** Envoy has none by default; an unfinished handshake would hold a socket
/// forever.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits and timeouts of an HTTP listener's connections. Every field has a default (the
/// `DEFAULT_*` constants), so an HCM that says nothing still gets bounded connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// `max_request_headers_kb`: the request line and headers of an HTTP/1 request (answered
    /// 431 above it), and the HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`.
    pub max_request_headers_bytes: usize,
    /// `common_http_protocol_options.max_headers_count` (HTTP/1; answered 431 above it).
    pub max_headers_count: usize,
    /// `request_headers_timeout`: from the first byte of a request's headers until they are
    /// complete (HTTP/1); `None` when set to zero.
    pub request_headers_timeout: Option<Duration>,
    /// `stream_idle_timeout`: a request whose stream moves nothing either way for this long
    /// is answered 408, or reset once its response has started; `None` when set to zero.
    pub stream_idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.idle_timeout`: a connection with no request in flight
    /// for this long is closed (HTTP/2 with a GOAWAY); `None` when set to zero.
    pub idle_timeout: Option<Duration>,
    /// `http2_protocol_options.max_concurrent_streams`.
    pub max_concurrent_streams: u32,
    /// `http2_protocol_options.initial_stream_window_size` (hyper's default when `None`).
    pub initial_stream_window_size: Option<u32>,
    /// `http2_protocol_options.initial_connection_window_size` (hyper's default when `None`).
    pub initial_connection_window_size: Option<u32>,
    /// `http2_protocol_options.connection_keepalive`: PINGs on HTTP/2 connections.
    pub http2_keepalive: Option<Keepalive>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_request_headers_bytes: DEFAULT_MAX_REQUEST_HEADERS_BYTES,
            max_headers_count: DEFAULT_MAX_HEADERS_COUNT,
            request_headers_timeout: Some(DEFAULT_REQUEST_HEADERS_TIMEOUT),
            stream_idle_timeout: Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            initial_stream_window_size: None,
            initial_connection_window_size: None,
            http2_keepalive: None,
        }
    }
}

/// HTTP/2 keep-alive: a PING every `interval`; no ACK within `timeout` closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// Routes named for RDS over the same ADS stream, or given inline.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    Rds(String),
    Inline(RouteConfig),
}

/// Raw TCP to one cluster, or to one picked by weight per connection.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpProxy {
    pub clusters: Clusters,
    /// No bytes either way for this long closes both sides; `None` when set to zero.
    pub idle_timeout: Option<Duration>,
    /// Connection attempts per downstream connection (at least 1), each to an endpoint not
    /// tried yet when the cluster has one.
    pub max_connect_attempts: u32,
}

impl Listener {
    /// The RDS names this listener needs (empty for inline routes and TCP).
    pub fn route_names(&self) -> Option<&str> {
        match &self.kind {
            ListenerKind::Http(HttpConnectionManager {
                routes: RouteSource::Rds(name),
                ..
            }) => Some(name),
            _ => None,
        }
    }
}

impl TryFrom<PbListener> for Listener {
    type Error = ConfigError;

    fn try_from(l: PbListener) -> Result<Self, ConfigError> {
        let path = Path::root("listener", &l.name);
        check_fields(
            &l,
            &[
                "name",
                "address",
                "filter_chains",
                "listener_filters",
                "traffic_direction",
                "stat_prefix",
            ],
            &path,
        )?;
        let address = match &l.address {
            Some(a) => socket_addr(a, &path.field("address"))?,
            None => {
                return Err(
                    path.err("an address is required (API listeners are for proxyless gRPC)")
                );
            }
        };
        listener_filters(&l.listener_filters, &path)?;
        let count = l.filter_chains.len();
        let mut chains = Vec::with_capacity(count);
        for (i, chain) in l.filter_chains.into_iter().enumerate() {
            chains.push(filter_chain(chain, &path.index("filter_chains", i))?);
        }
        let (main, plaintext) = split_chains(chains, &path.field("filter_chains"))?;
        Ok(Listener {
            name: l.name,
            address,
            kind: main.kind,
            tls: main.tls,
            network_rbac: main.network_rbac,
            plaintext: plaintext.map(|c| PlaintextChain {
                kind: c.kind,
                network_rbac: c.network_rbac,
            }),
        })
    }
}

impl Listener {
    /// The SDS secrets this listener needs before it may accept connections.
    pub fn secret_names(&self) -> Vec<&str> {
        self.tls
            .as_ref()
            .map(DownstreamTls::secret_names)
            .unwrap_or_default()
    }

    /// The RDS names of every filter chain.
    pub fn all_route_names(&self) -> Vec<&str> {
        let plaintext = self.plaintext.as_ref().map(|p| &p.kind);
        [Some(&self.kind), plaintext]
            .into_iter()
            .flatten()
            .filter_map(|k| match k {
                ListenerKind::Http(HttpConnectionManager {
                    routes: RouteSource::Rds(name),
                    ..
                }) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// `listener_filters`: only the TLS inspector, which permissive mode needs (and which is
/// implied by a `transport_protocol` match, as Envoy injects it then).
fn listener_filters(filters: &[ListenerFilter], path: &Path) -> Result<(), ConfigError> {
    for (i, f) in filters.iter().enumerate() {
        let p = path.index("listener_filters", i);
        check_fields(f, &["name", "typed_config"], &p)?;
        match &f.config_type {
            Some(listener_filter::ConfigType::TypedConfig(any))
                if any.type_url == type_url::TLS_INSPECTOR =>
            {
                let t = unpack::<TlsInspector>(any)
                    .map_err(|e| p.field("typed_config").err(e.to_string()))?;
                check_fields(&t, &[], &p.field("typed_config"))?;
            }
            None if f.name == TLS_INSPECTOR => {}
            _ => {
                return Err(p.err(format!(
                    "unsupported listener filter {} (only {TLS_INSPECTOR} is supported)",
                    f.name
                )));
            }
        }
    }
    Ok(())
}

/// Which connections a filter chain takes (`filter_chain_match.transport_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Any,
    Tls,
    RawBuffer,
}

struct Chain {
    transport: Transport,
    /// `filter_chain_match.server_names` (lowercase; empty: any SNI).
    server_names: Vec<String>,
    kind: ListenerKind,
    tls: Option<DownstreamTls>,
    network_rbac: Vec<NetworkRbac>,
}

fn filter_chain(chain: FilterChain, path: &Path) -> Result<Chain, ConfigError> {
    check_fields(
        &chain,
        &[
            "filter_chain_match",
            "filters",
            "name",
            "transport_socket",
            "transport_socket_connect_timeout",
        ],
        path,
    )?;
    let server_names = match &chain.filter_chain_match {
        None => Vec::new(),
        Some(m) => sni::server_names(&m.server_names, &path.field("filter_chain_match"))?,
    };
    let transport = match &chain.filter_chain_match {
        None => Transport::Any,
        Some(m) => {
            let p = path.field("filter_chain_match");
            check_fields(m, &["transport_protocol", "server_names"], &p)?;
            match m.transport_protocol.as_str() {
                "" => Transport::Any,
                "tls" => Transport::Tls,
                "raw_buffer" => Transport::RawBuffer,
                other => {
                    return Err(p.field("transport_protocol").err(format!(
                        "{other:?} is not supported (\"tls\" or \"raw_buffer\")"
                    )));
                }
            }
        }
    };
    let handshake_timeout = match &chain.transport_socket_connect_timeout {
        Some(d) => {
            let d = duration(d, &path.field("transport_socket_connect_timeout"))?;
            if d.is_zero() {
                DEFAULT_TLS_HANDSHAKE_TIMEOUT
            } else {
                d
            }
        }
        None => DEFAULT_TLS_HANDSHAKE_TIMEOUT,
    };
    let tls = chain
        .transport_socket
        .as_ref()
        .map(|t| downstream_socket(t, handshake_timeout, &path.field("transport_socket")))
        .transpose()?;
    if transport == Transport::Tls && tls.is_none() {
        return Err(path.field("transport_socket").err(
            "a filter chain matching transport_protocol \"tls\" needs a TLS transport_socket",
        ));
    }
    if transport == Transport::RawBuffer && tls.is_some() {
        return Err(path.field("transport_socket").err(
            "a filter chain matching transport_protocol \"raw_buffer\" cannot terminate TLS",
        ));
    }
    let count = chain.filters.len();
    let mut network_rbac = Vec::new();
    let mut kind = None;
    for (i, filter) in chain.filters.into_iter().enumerate() {
        let p = path.index("filters", i);
        match network_filter(filter, &p)? {
            NetworkFilter::Rbac(_) if i + 1 == count => {
                return Err(p.err(
                    "the RBAC filter must be followed by http_connection_manager or tcp_proxy",
                ));
            }
            NetworkFilter::Rbac(r) => network_rbac.push(r),
            NetworkFilter::Terminal(k) if i + 1 == count => kind = Some(k),
            NetworkFilter::Terminal(_) => {
                return Err(
                    p.err("http_connection_manager or tcp_proxy must be the last network filter")
                );
            }
        }
    }
    let Some(kind) = kind else {
        return Err(path.field("filters").err(
            "one network filter (http_connection_manager or tcp_proxy) is required, \
             optionally after RBAC filters",
        ));
    };
    Ok(Chain {
        transport,
        server_names,
        kind,
        tls,
        network_rbac,
    })
}

/// One filter chain, or permissive mode's two: the TLS one first, then the plaintext one; or
/// TLS chains chosen by SNI, merged into one (see `sni`).
fn split_chains(chains: Vec<Chain>, path: &Path) -> Result<(Chain, Option<Chain>), ConfigError> {
    if chains.iter().any(|c| !c.server_names.is_empty()) {
        return sni::merge(chains, path).map(|c| (c, None));
    }
    let count = chains.len();
    let mut chains = chains.into_iter();
    match (chains.next(), chains.next(), chains.next()) {
        (Some(only), None, None) => Ok((only, None)),
        (Some(a), Some(b), None)
            if a.transport == Transport::Any && b.transport == Transport::Any =>
        {
            Err(path.err("exactly one filter chain is supported, got 2"))
        }
        (Some(a), Some(b), None) => {
            let (tls, plain) = if a.transport == Transport::Tls {
                (a, b)
            } else {
                (b, a)
            };
            if tls.transport != Transport::Tls
                || plain.transport == Transport::Tls
                || plain.tls.is_some()
            {
                return Err(path.err(
                    "two filter chains are supported only for TLS and plaintext on one port: \
                     one with filter_chain_match.transport_protocol \"tls\" and a TLS \
                     transport_socket, the other without a transport_socket",
                ));
            }
            Ok((tls, Some(plain)))
        }
        _ => Err(path.err(format!(
            "exactly one filter chain is supported (or two: TLS and plaintext), got {count}"
        ))),
    }
}

enum NetworkFilter {
    Rbac(NetworkRbac),
    Terminal(ListenerKind),
}

fn network_filter(f: Filter, path: &Path) -> Result<NetworkFilter, ConfigError> {
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(path.err(format!("filter {} has no typed_config", f.name)));
    };
    let decode =
        |e: switchboard_xds_proto::UnpackError| path.field("typed_config").err(e.to_string());
    match any.type_url.as_str() {
        type_url::HTTP_CONNECTION_MANAGER => Ok(NetworkFilter::Terminal(ListenerKind::Http(hcm(
            unpack::<PbHcm>(any).map_err(decode)?,
            &path.field("typed_config"),
        )?))),
        type_url::TCP_PROXY => Ok(NetworkFilter::Terminal(ListenerKind::Tcp(tcp(
            unpack::<PbTcpProxy>(any).map_err(decode)?,
            &path.field("typed_config"),
        )?))),
        type_url::NETWORK_RBAC => Ok(NetworkFilter::Rbac(network_rbac(
            unpack::<PbNetworkRbac>(any).map_err(decode)?,
            &path.field("typed_config"),
        )?)),
        other => Err(path.err(format!("unsupported filter {} ({other})", f.name))),
    }
}

fn tcp(t: PbTcpProxy, path: &Path) -> Result<TcpProxy, ConfigError> {
    check_fields(
        &t,
        &[
            "stat_prefix",
            "cluster",
            "weighted_clusters",
            "idle_timeout",
            "max_connect_attempts",
        ],
        path,
    )?;
    let clusters = match t.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)) if !cluster.is_empty() => {
            Clusters::One(cluster)
        }
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            let p = path.field("weighted_clusters");
            check_fields(&w, &["clusters"], &p)?;
            let mut out = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.into_iter().enumerate() {
                let cp = p.index("clusters", i);
                check_fields(&c, &["name", "weight"], &cp)?;
                if c.name.is_empty() {
                    return Err(cp.err("a cluster name is required"));
                }
                if c.weight > 0 {
                    out.push((c.name, c.weight));
                }
            }
            if out.is_empty() {
                return Err(p.err("at least one cluster with a positive weight is required"));
            }
            Clusters::Weighted(out)
        }
        _ => return Err(path.err("cluster or weighted_clusters is required")),
    };
    let idle_timeout = match &t.idle_timeout {
        None => Some(DEFAULT_TCP_IDLE_TIMEOUT),
        Some(d) => Some(duration(d, &path.field("idle_timeout"))?).filter(|d| !d.is_zero()),
    };
    let max_connect_attempts = match t.max_connect_attempts {
        None => 1,
        Some(n) if n.value >= 1 => n.value,
        Some(_) => return Err(path.field("max_connect_attempts").err("must be at least 1")),
    };
    Ok(TcpProxy {
        clusters,
        idle_timeout,
        max_connect_attempts,
    })
}

fn hcm(h: PbHcm, path: &Path) -> Result<HttpConnectionManager, ConfigError> {
    check_fields(
        &h,
        &[
            "stat_prefix",
            "codec_type",
            "rds",
            "route_config",
            "http_filters",
            "http_protocol_options",
            "common_http_protocol_options",
            "http2_protocol_options",
            "max_request_headers_kb",
            "request_headers_timeout",
            "stream_idle_timeout",
            "forward_client_cert_details",
            "set_current_client_cert_details",
        ],
        path,
    )?;
    let limits = http_limits(&h, path)?;
    let xfcc = super::xfcc::xfcc(&h, path)?;
    let allow_absolute_url = match &h.http_protocol_options {
        Some(o) => {
            let p = path.field("http_protocol_options");
            check_fields(o, &["allow_absolute_url"], &p)?;
            o.allow_absolute_url.as_ref().is_some_and(|b| b.value)
        }
        None => false,
    };
    let routes = match h.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
            let p = path.field("rds");
            check_fields(&rds, &["config_source", "route_config_name"], &p)?;
            ads_source(rds.config_source.as_ref(), &p.field("config_source"))?;
            if rds.route_config_name.is_empty() {
                return Err(p.err("route_config_name is required"));
            }
            RouteSource::Rds(rds.route_config_name)
        }
        Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(route_config(rc, &path.field("route_config"))?)
        }
        _ => return Err(path.err("rds or route_config is required")),
    };
    let mut fault_filter = None;
    let mut rbac = Vec::new();
    let count = h.http_filters.len();
    for (i, f) in h.http_filters.into_iter().enumerate() {
        let p = path.index("http_filters", i);
        match http_filter(f, &p)? {
            HttpFilterKind::Rbac(_) if fault_filter.is_some() => {
                return Err(p.err(
                    "RBAC filters must come before the fault filter (this proxy checks access \
                     before injecting faults)",
                ));
            }
            HttpFilterKind::Rbac(r) => rbac.push(r),
            HttpFilterKind::Router if i + 1 == count => {}
            HttpFilterKind::Router => return Err(p.err("the router filter must be last")),
            HttpFilterKind::Fault(_) if fault_filter.is_some() => {
                return Err(p.err("the fault filter is listed twice"));
            }
            HttpFilterKind::Fault(f) => fault_filter = Some(f),
        }
    }
    if count == 0 {
        return Err(path
            .field("http_filters")
            .err("the router filter is required (last)"));
    }
    Ok(HttpConnectionManager {
        routes,
        fault: fault_filter,
        allow_absolute_url,
        limits,
        rbac,
        xfcc,
    })
}

fn http_limits(h: &PbHcm, path: &Path) -> Result<HttpLimits, ConfigError> {
    let mut limits = HttpLimits::default();
    if let Some(kb) = &h.max_request_headers_kb {
        if kb.value == 0 || kb.value > MAX_MAX_REQUEST_HEADERS_KB {
            return Err(path.field("max_request_headers_kb").err(format!(
                "{} is out of range (1 to {MAX_MAX_REQUEST_HEADERS_KB})",
                kb.value
            )));
        }
        limits.max_request_headers_bytes = kb.value as usize * 1024;
    }
    if let Some(d) = &h.request_headers_timeout {
        limits.request_headers_timeout =
            Some(duration(d, &path.field("request_headers_timeout"))?).filter(|d| !d.is_zero());
    }
    if let Some(d) = &h.stream_idle_timeout {
        limits.stream_idle_timeout =
            Some(duration(d, &path.field("stream_idle_timeout"))?).filter(|d| !d.is_zero());
    }
    if let Some(o) = &h.common_http_protocol_options {
        common_http_options(o, &mut limits, &path.field("common_http_protocol_options"))?;
    }
    if let Some(o) = &h.http2_protocol_options {
        http2_options(o, &mut limits, &path.field("http2_protocol_options"))?;
    }
    Ok(limits)
}

fn common_http_options(
    o: &HttpProtocolOptions,
    limits: &mut HttpLimits,
    path: &Path,
) -> Result<(), ConfigError> {
    check_fields(o, &["idle_timeout", "max_headers_count"], path)?;
    if let Some(d) = &o.idle_timeout {
        limits.idle_timeout =
            Some(duration(d, &path.field("idle_timeout"))?).filter(|d| !d.is_zero());
    }
    if let Some(n) = &o.max_headers_count {
        if n.value == 0 || n.value > MAX_MAX_HEADERS_COUNT {
            return Err(path.field("max_headers_count").err(format!(
                "{} is out of range (1 to {MAX_MAX_HEADERS_COUNT})",
                n.value
            )));
        }
        limits.max_headers_count = n.value as usize;
    }
    Ok(())
}

fn http2_options(
    o: &Http2ProtocolOptions,
    limits: &mut HttpLimits,
    path: &Path,
) -> Result<(), ConfigError> {
    check_fields(
        o,
        &[
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
            "connection_keepalive",
        ],
        path,
    )?;
    if let Some(n) = &o.max_concurrent_streams {
        if n.value == 0 || n.value > i32::MAX as u32 {
            return Err(path
                .field("max_concurrent_streams")
                .err(format!("{} is out of range (1 to 2147483647)", n.value)));
        }
        limits.max_concurrent_streams = n.value;
    }
    // Envoy's bounds: at least the HTTP/2 default window, at most 2^31 - 1.
    let window = |v: Option<u32>, field: &str| match v {
        None => Ok(None),
        Some(w) if (65_535..=i32::MAX as u32).contains(&w) => Ok(Some(w)),
        Some(w) => Err(path
            .field(field)
            .err(format!("{w} is out of range (65535 to 2147483647)"))),
    };
    limits.initial_stream_window_size = window(
        o.initial_stream_window_size.as_ref().map(|w| w.value),
        "initial_stream_window_size",
    )?;
    limits.initial_connection_window_size = window(
        o.initial_connection_window_size.as_ref().map(|w| w.value),
        "initial_connection_window_size",
    )?;
    if let Some(k) = &o.connection_keepalive {
        let p = path.field("connection_keepalive");
        check_fields(k, &["interval", "timeout"], &p)?;
        let timeout = match &k.timeout {
            Some(d) => duration(d, &p.field("timeout"))?,
            None => return Err(p.field("timeout").err("required")),
        };
        if timeout.is_zero() {
            return Err(p.field("timeout").err("must be positive"));
        }
        // As in Envoy, no (or a zero) interval sends no periodic PINGs.
        let interval = match &k.interval {
            Some(d) => Some(duration(d, &p.field("interval"))?).filter(|d| !d.is_zero()),
            None => None,
        };
        limits.http2_keepalive = interval.map(|interval| Keepalive { interval, timeout });
    }
    Ok(())
}

enum HttpFilterKind {
    Router,
    Fault(Fault),
    Rbac(HttpRbac),
}

fn http_filter(f: HttpFilter, path: &Path) -> Result<HttpFilterKind, ConfigError> {
    check_fields(&f, &["name", "typed_config"], path)?;
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(path.err(format!("filter {} has no typed_config", f.name)));
    };
    let p = path.field("typed_config");
    let decode = |e: switchboard_xds_proto::UnpackError| p.err(e.to_string());
    match any.type_url.as_str() {
        type_url::ROUTER => {
            let r = unpack::<Router>(any).map_err(decode)?;
            check_fields(&r, &[], &p)?;
            Ok(HttpFilterKind::Router)
        }
        type_url::FAULT => Ok(HttpFilterKind::Fault(fault(
            unpack::<HttpFault>(any).map_err(decode)?,
            &p,
        )?)),
        type_url::RBAC => Ok(HttpFilterKind::Rbac(http_rbac(
            unpack::<PbHttpRbac>(any).map_err(decode)?,
            &p,
        )?)),
        other => Err(path.err(format!("unsupported HTTP filter {} ({other})", f.name))),
    }
}
