//! TLS contexts of listeners (`DownstreamTlsContext`) and clusters (`UpstreamTlsContext`):
//! certificates and trusted CAs given inline, by file, or by name over SDS (on the same ADS
//! stream), and peer SAN matchers (`match_typed_subject_alt_names`, URI or DNS, exact or
//! prefix) for SPIFFE identities.
//!
//! A named secret is a [`DataSource::Sds`]: the data path resolves it in the snapshot's
//! secrets when it builds a TLS configuration, so rotating a secret needs no listener or
//! cluster change.

use std::path::PathBuf;
use std::time::Duration;

use switchboard_xds_proto::pb::envoy::config::core::v3::{
    DataSource as PbDataSource, TransportSocket, data_source, transport_socket,
};
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher::SanType as PbSanType,
};
use switchboard_xds_proto::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use switchboard_xds_proto::{type_url, unpack};

use super::{ConfigError, Path, ads_source, check_fields};

/// TLS termination: one certificate chain and key, ALPN, and optionally client
/// certificates (mTLS). `Debug` never shows private key material.
#[derive(Clone, PartialEq)]
pub struct DownstreamTls {
    pub certificate_chain: DataSource,
    /// PEM (PKCS#8, PKCS#1 or SEC1). With SDS, the same secret as `certificate_chain`.
    pub private_key: DataSource,
    /// Offered in preference order; `h2` selects HTTP/2 on an HTTP listener.
    pub alpn_protocols: Vec<String>,
    /// Client certificates are verified against these roots when present.
    pub client_validation: Option<ClientValidation>,
    /// `transport_socket_connect_timeout` of the filter chain: the whole TLS handshake.
    pub handshake_timeout: Duration,
    /// Certificates chosen by the client's SNI, from filter chains that differ only in their
    /// certificate and `filter_chain_match.server_names`; `certificate_chain` and
    /// `private_key` above are the default chain's (no SNI, or an SNI none of these names).
    pub sni_certificates: Vec<SniCertificate>,
}

/// A certificate served to clients whose SNI is one of `server_names` (exact, or `*.`
/// wildcards matching by the longest suffix, as Envoy matches them). `Debug` shows no key.
#[derive(Clone, PartialEq)]
pub struct SniCertificate {
    /// Lowercase.
    pub server_names: Vec<String>,
    pub certificate_chain: DataSource,
    pub private_key: DataSource,
}

impl std::fmt::Debug for SniCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniCertificate")
            .field("server_names", &self.server_names)
            .field("certificate_chain", &self.certificate_chain)
            .field("private_key", &Redacted(&self.private_key))
            .finish()
    }
}

impl std::fmt::Debug for DownstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownstreamTls")
            .field("certificate_chain", &self.certificate_chain)
            .field("private_key", &Redacted(&self.private_key))
            .field("alpn_protocols", &self.alpn_protocols)
            .field("client_validation", &self.client_validation)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("sni_certificates", &self.sni_certificates)
            .finish()
    }
}

/// A key source in `Debug`: a file name or secret name, never inline bytes.
struct Redacted<'a>(&'a DataSource);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            DataSource::Inline(_) => f.write_str("\"<redacted>\""),
            other => other.fmt(f),
        }
    }
}

/// How client certificates are checked (mTLS).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientValidation {
    /// PEM CA certificates (`validation_context.trusted_ca`, or an SDS validation secret).
    pub trusted_ca: DataSource,
    /// `require_client_certificate`: refuse the handshake without a valid certificate.
    /// Otherwise a certificate is optional, but verified when one is presented.
    pub required: bool,
    /// The peer's certificate must have a SAN matching one of these (none: any SAN).
    pub san_matchers: Vec<SanMatcher>,
}

/// TLS origination towards a cluster's endpoints. `Debug` never shows key material.
#[derive(Clone, PartialEq)]
pub struct UpstreamTls {
    /// The client certificate and key presented to the server (mTLS), if any.
    pub client_certificate: Option<(DataSource, DataSource)>,
    /// How the server's certificate is verified (required: the proxy has no platform roots).
    pub validation: ServerValidation,
    /// The SNI sent; also the DNS name checked when there are no SAN matchers.
    pub sni: Option<String>,
    /// Offered in preference order (`h2` for HTTP/2 clusters).
    pub alpn_protocols: Vec<String>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cert = self
            .client_certificate
            .as_ref()
            .map(|(chain, key)| (chain, Redacted(key)));
        f.debug_struct("UpstreamTls")
            .field("client_certificate", &cert)
            .field("validation", &self.validation)
            .field("sni", &self.sni)
            .field("alpn_protocols", &self.alpn_protocols)
            .finish()
    }
}

/// Where the roots that verify a server come from.
#[derive(Debug, Clone, PartialEq)]
pub enum TrustedCa {
    /// PEM CA certificates.
    Source(DataSource),
    /// The platform's trust store (`system_root_certs`), for servers outside the mesh.
    System,
}

/// How a server certificate is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerValidation {
    pub trusted_ca: TrustedCa,
    /// The server's certificate must have a SAN matching one of these; none means the DNS
    /// name of `sni` is checked, as for any TLS client.
    pub san_matchers: Vec<SanMatcher>,
}

/// One of `match_typed_subject_alt_names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanMatcher {
    pub san_type: SanType,
    pub matcher: SanMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    Uri,
    Dns,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanMatch {
    Exact(String),
    Prefix(String),
}

impl SanMatcher {
    /// Whether `value` (a SAN of type `self.san_type`) matches.
    pub fn matches(&self, value: &str) -> bool {
        match &self.matcher {
            SanMatch::Exact(e) => value == e,
            SanMatch::Prefix(p) => value.starts_with(p.as_str()),
        }
    }
}

/// PEM bytes given inline, read from a file, or held in a named SDS secret. Files are read
/// when the TLS configuration is built (changes to a file apply when the configuration
/// changes); secrets are looked up in the applied snapshot.
#[derive(Clone, PartialEq, Eq)]
pub enum DataSource {
    File(PathBuf),
    Inline(Vec<u8>),
    /// The secret of this name (SDS over ADS).
    Sds(String),
}

impl std::fmt::Debug for DataSource {
    /// The length only: inline sources may be keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Inline(bytes) => write!(f, "Inline(<{} bytes>)", bytes.len()),
            Self::Sds(name) => f.debug_tuple("Sds").field(name).finish(),
        }
    }
}

impl DataSource {
    /// The secret this source names, if it is one.
    pub fn secret(&self) -> Option<&str> {
        match self {
            Self::Sds(name) => Some(name),
            _ => None,
        }
    }
}

impl DownstreamTls {
    /// The SDS secrets this context needs (none for inline and file sources).
    pub fn secret_names(&self) -> Vec<&str> {
        let ca = self.client_validation.as_ref().map(|v| &v.trusted_ca);
        [Some(&self.certificate_chain), ca]
            .into_iter()
            .flatten()
            .chain(self.sni_certificates.iter().map(|c| &c.certificate_chain))
            .filter_map(DataSource::secret)
            .collect()
    }
}

impl UpstreamTls {
    /// The SDS secrets this context needs.
    pub fn secret_names(&self) -> Vec<&str> {
        let chain = self.client_certificate.as_ref().map(|(c, _)| c);
        let ca = match &self.validation.trusted_ca {
            TrustedCa::Source(s) => Some(s),
            TrustedCa::System => None,
        };
        [chain, ca]
            .into_iter()
            .flatten()
            .filter_map(DataSource::secret)
            .collect()
    }
}

/// A filter chain's `transport_socket`: `envoy.transport_sockets.tls` with a
/// `DownstreamTlsContext`.
pub(crate) fn downstream_socket(
    t: &TransportSocket,
    handshake_timeout: Duration,
    path: &Path,
) -> Result<DownstreamTls, ConfigError> {
    check_fields(t, &["name", "typed_config"], path)?;
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &t.config_type else {
        return Err(path.err(format!("transport socket {} has no typed_config", t.name)));
    };
    if any.type_url != type_url::DOWNSTREAM_TLS_CONTEXT {
        return Err(path.err(format!(
            "unsupported transport socket {} ({}); only envoy.transport_sockets.tls with a \
             DownstreamTlsContext is supported",
            t.name, any.type_url
        )));
    }
    let p = path.field("typed_config");
    let ctx = unpack::<DownstreamTlsContext>(any).map_err(|e| p.err(e.to_string()))?;
    downstream_tls(ctx, handshake_timeout, &p)
}

fn downstream_tls(
    ctx: DownstreamTlsContext,
    handshake_timeout: Duration,
    path: &Path,
) -> Result<DownstreamTls, ConfigError> {
    check_fields(
        &ctx,
        &["common_tls_context", "require_client_certificate"],
        path,
    )?;
    let required = ctx.require_client_certificate.is_some_and(|b| b.value);
    let p = path.field("common_tls_context");
    let Some(common) = ctx.common_tls_context else {
        return Err(p.err("a common_tls_context with tls_certificates is required"));
    };
    let CommonTls {
        certificate,
        alpn_protocols,
        validation,
    } = common_tls(common, &p)?;
    let Some((certificate_chain, private_key)) = certificate else {
        return Err(p.field("tls_certificates").err(
            "exactly one certificate is supported, got 0 (give it in tls_certificates or \
             tls_certificate_sds_secret_configs)",
        ));
    };
    let client_validation = match (validation, required) {
        (Some((TrustedCa::Source(trusted_ca), san_matchers)), required) => Some(ClientValidation {
            trusted_ca,
            required,
            san_matchers,
        }),
        (Some((TrustedCa::System, _)), _) => {
            return Err(p.field("validation_context.system_root_certs").err(
                "client certificates are verified against a CA of your own (trusted_ca), not \
                 the platform's roots",
            ));
        }
        (None, true) => {
            return Err(path.field("require_client_certificate").err(
                "client certificates cannot be verified without a trusted CA \
                 (common_tls_context.validation_context.trusted_ca or an SDS validation context)",
            ));
        }
        (None, false) => None,
    };
    Ok(DownstreamTls {
        certificate_chain,
        private_key,
        alpn_protocols,
        client_validation,
        handshake_timeout,
        sni_certificates: Vec::new(),
    })
}

/// A cluster's (or a transport socket match's) `transport_socket`: TLS with an
/// `UpstreamTlsContext`, or `None` for `envoy.transport_sockets.raw_buffer` (plaintext).
pub(crate) fn upstream_socket(
    t: &TransportSocket,
    path: &Path,
) -> Result<Option<UpstreamTls>, ConfigError> {
    check_fields(t, &["name", "typed_config"], path)?;
    let any = match &t.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => any,
        None if t.name == "envoy.transport_sockets.raw_buffer" => return Ok(None),
        None => {
            return Err(path.err(format!("transport socket {} has no typed_config", t.name)));
        }
    };
    match any.type_url.as_str() {
        RAW_BUFFER => Ok(None),
        type_url::UPSTREAM_TLS_CONTEXT => {
            let p = path.field("typed_config");
            let ctx = unpack::<UpstreamTlsContext>(any).map_err(|e| p.err(e.to_string()))?;
            upstream_tls(ctx, &p).map(Some)
        }
        other => Err(path.err(format!(
            "unsupported transport socket {} ({other}); only envoy.transport_sockets.tls with \
             an UpstreamTlsContext, and raw_buffer, are supported",
            t.name
        ))),
    }
}

/// Envoy's plaintext transport socket.
const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

fn upstream_tls(ctx: UpstreamTlsContext, path: &Path) -> Result<UpstreamTls, ConfigError> {
    check_fields(&ctx, &["common_tls_context", "sni"], path)?;
    let (client_certificate, alpn_protocols, validation) = match ctx.common_tls_context {
        Some(common) => {
            let c = common_tls(common, &path.field("common_tls_context"))?;
            (c.certificate, c.alpn_protocols, c.validation)
        }
        None => (None, Vec::new(), None),
    };
    let sni = Some(ctx.sni).filter(|s| !s.is_empty());
    let Some((trusted_ca, san_matchers)) = validation else {
        return Err(path.field("common_tls_context").err(
            "a validation context is required (validation_context.trusted_ca, \
             validation_context.system_root_certs for the platform's roots, or an SDS \
             validation context)",
        ));
    };
    let validation = ServerValidation {
        trusted_ca,
        san_matchers,
    };
    if validation.san_matchers.is_empty() && sni.is_none() {
        return Err(path.field("sni").err(
            "the server cannot be verified: give match_typed_subject_alt_names in the \
             validation context, or an sni (the DNS name checked)",
        ));
    }
    Ok(UpstreamTls {
        client_certificate,
        validation,
        sni,
        alpn_protocols,
    })
}

struct CommonTls {
    certificate: Option<(DataSource, DataSource)>,
    alpn_protocols: Vec<String>,
    validation: Option<(TrustedCa, Vec<SanMatcher>)>,
}

fn common_tls(c: CommonTlsContext, path: &Path) -> Result<CommonTls, ConfigError> {
    check_fields(
        &c,
        &[
            "tls_certificates",
            "tls_certificate_sds_secret_configs",
            "alpn_protocols",
            "validation_context",
            "validation_context_sds_secret_config",
            "combined_validation_context",
        ],
        path,
    )?;
    let certificate = match (
        c.tls_certificates.len(),
        c.tls_certificate_sds_secret_configs.len(),
    ) {
        (0, 0) => None,
        (1, 0) => {
            let [cert] = <[TlsCertificate; 1]>::try_from(c.tls_certificates).map_err(|_| {
                path.field("tls_certificates")
                    .err("exactly one is supported")
            })?;
            let cp = path.index("tls_certificates", 0);
            check_fields(&cert, &["certificate_chain", "private_key"], &cp)?;
            let chain = required_source(cert.certificate_chain, &cp.field("certificate_chain"))?;
            let key = required_source(cert.private_key, &cp.field("private_key"))?;
            Some((chain, key))
        }
        (0, 1) => {
            let p = path.index("tls_certificate_sds_secret_configs", 0);
            let name = sds_name(&c.tls_certificate_sds_secret_configs[0], &p)?;
            Some((DataSource::Sds(name.clone()), DataSource::Sds(name)))
        }
        (0, n) => {
            return Err(path
                .field("tls_certificate_sds_secret_configs")
                .err(format!("exactly one certificate is supported, got {n}")));
        }
        (n, 0) => {
            return Err(path
                .field("tls_certificates")
                .err(format!("exactly one certificate is supported, got {n}")));
        }
        _ => {
            return Err(path.field("tls_certificates").err(
                "give the certificate either in tls_certificates or in \
                 tls_certificate_sds_secret_configs, not both",
            ));
        }
    };
    for (i, proto) in c.alpn_protocols.iter().enumerate() {
        if proto.is_empty() || proto.len() > 255 {
            return Err(path
                .index("alpn_protocols", i)
                .err("an ALPN protocol name is 1 to 255 bytes"));
        }
    }
    use common_tls_context::ValidationContextType as V;
    let validation = match c.validation_context_type {
        None => None,
        Some(V::ValidationContext(v)) => {
            let vp = path.field("validation_context");
            let system = v.system_root_certs.is_some();
            let (ca, sans) = validation_context(v, &vp)?;
            let ca = match (ca, system) {
                (Some(ca), false) => TrustedCa::Source(ca),
                (None, true) => TrustedCa::System,
                (Some(_), true) => {
                    return Err(vp.err("give trusted_ca or system_root_certs, not both"));
                }
                (None, false) => {
                    return Err(vp.field("trusted_ca").err(
                        "required (filename, inline_bytes or inline_string; system_root_certs \
                         for the platform's roots; or use an SDS validation context)",
                    ));
                }
            };
            Some((ca, sans))
        }
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            let name = sds_name(&s, &path.field("validation_context_sds_secret_config"))?;
            Some((TrustedCa::Source(DataSource::Sds(name)), Vec::new()))
        }
        Some(V::CombinedValidationContext(combined)) => {
            let cp = path.field("combined_validation_context");
            check_fields(
                &combined,
                &[
                    "default_validation_context",
                    "validation_context_sds_secret_config",
                ],
                &cp,
            )?;
            let (inline_ca, sans) = match combined.default_validation_context {
                Some(v) if v.system_root_certs.is_some() => {
                    return Err(cp
                        .field("default_validation_context.system_root_certs")
                        .err("not supported in a combined validation context"));
                }
                Some(v) => validation_context(v, &cp.field("default_validation_context"))?,
                None => (None, Vec::new()),
            };
            if inline_ca.is_some() {
                return Err(cp.field("default_validation_context.trusted_ca").err(
                    "the trusted CA of a combined validation context comes from its SDS \
                     secret; give trusted_ca in validation_context instead",
                ));
            }
            let Some(s) = &combined.validation_context_sds_secret_config else {
                return Err(cp
                    .field("validation_context_sds_secret_config")
                    .err("required"));
            };
            let name = sds_name(s, &cp.field("validation_context_sds_secret_config"))?;
            Some((TrustedCa::Source(DataSource::Sds(name)), sans))
        }
        Some(_) => {
            return Err(path.err(
                "only validation_context, validation_context_sds_secret_config and \
                 combined_validation_context are supported (no certificate providers)",
            ));
        }
    };
    Ok(CommonTls {
        certificate,
        alpn_protocols: c.alpn_protocols,
        validation,
    })
}

/// A `CertificateValidationContext`: the CA (when inline or by file) and the SAN matchers.
type Validation = (Option<DataSource>, Vec<SanMatcher>);

fn validation_context(
    v: CertificateValidationContext,
    path: &Path,
) -> Result<Validation, ConfigError> {
    check_fields(
        &v,
        &[
            "trusted_ca",
            "system_root_certs",
            "match_typed_subject_alt_names",
        ],
        path,
    )?;
    let ca = v
        .trusted_ca
        .map(|s| required_source(Some(s), &path.field("trusted_ca")))
        .transpose()?;
    let sans = v
        .match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| san_matcher(m, &path.index("match_typed_subject_alt_names", i)))
        .collect::<Result<_, _>>()?;
    Ok((ca, sans))
}

fn san_matcher(m: &SubjectAltNameMatcher, path: &Path) -> Result<SanMatcher, ConfigError> {
    check_fields(m, &["san_type", "matcher"], path)?;
    let san_type = match PbSanType::try_from(m.san_type) {
        Ok(PbSanType::Uri) => SanType::Uri,
        Ok(PbSanType::Dns) => SanType::Dns,
        Ok(other) => {
            return Err(path.field("san_type").err(format!(
                "{} is not supported (URI and DNS are)",
                other.as_str_name()
            )));
        }
        Err(_) => return Err(path.field("san_type").err("unknown SAN type")),
    };
    let mp = path.field("matcher");
    let Some(matcher) = &m.matcher else {
        return Err(mp.err("required"));
    };
    Ok(SanMatcher {
        san_type,
        matcher: string_match(matcher, &mp)?,
    })
}

fn string_match(m: &StringMatcher, path: &Path) -> Result<SanMatch, ConfigError> {
    check_fields(m, &["exact", "prefix"], path)?;
    match &m.match_pattern {
        Some(string_matcher::MatchPattern::Exact(e)) if !e.is_empty() => {
            Ok(SanMatch::Exact(e.clone()))
        }
        Some(string_matcher::MatchPattern::Prefix(p)) if !p.is_empty() => {
            Ok(SanMatch::Prefix(p.clone()))
        }
        _ => Err(path.err("a non-empty exact or prefix is required")),
    }
}

/// The name of an SDS secret that comes over the ADS stream, the only source supported.
fn sds_name(s: &SdsSecretConfig, path: &Path) -> Result<String, ConfigError> {
    check_fields(s, &["name", "sds_config"], path)?;
    if s.name.is_empty() {
        return Err(path.field("name").err("required"));
    }
    match &s.sds_config {
        Some(source) => ads_source(Some(source), &path.field("sds_config")).map_err(|_| {
            path.field("sds_config").err(
                "only SDS over ADS is supported (sds_config: {ads: {}}); static secrets, \
                 paths and separate SDS servers are not",
            )
        })?,
        None => {
            return Err(path.field("sds_config").err(
                "required: static secrets are not supported, only SDS over ADS \
                 (sds_config: {ads: {}})",
            ));
        }
    }
    Ok(s.name.clone())
}

pub(crate) fn required_source(
    s: Option<PbDataSource>,
    path: &Path,
) -> Result<DataSource, ConfigError> {
    let Some(s) = s else {
        return Err(path.err("required (filename, inline_bytes or inline_string)"));
    };
    check_fields(&s, &["filename", "inline_bytes", "inline_string"], path)?;
    match s.specifier {
        Some(data_source::Specifier::Filename(f)) if !f.is_empty() => {
            Ok(DataSource::File(PathBuf::from(f)))
        }
        Some(data_source::Specifier::InlineBytes(b)) if !b.is_empty() => Ok(DataSource::Inline(b)),
        Some(data_source::Specifier::InlineString(s)) if !s.is_empty() => {
            Ok(DataSource::Inline(s.into_bytes()))
        }
        _ => Err(path.err("empty; give filename, inline_bytes or inline_string")),
    }
}
