//! Mesh mTLS (`MeshSpec.mtls`): the TLS contexts of sidecars and gateways, with certificates
//! from SDS over ADS (secret `default`, the proxy's own certificate, and `ROOTCA`, the mesh's
//! trust bundle), in the shapes Envoy documents and Istio uses.
//!
//! - Inbound (a sidecar's `sidecar/inbound`): a `DownstreamTlsContext` requiring a client
//!   certificate that chains to `ROOTCA` and carries a URI SAN under the mesh's identity prefix,
//!   so that only this mesh's workloads get in. `strict`: the only filter chain. `permissive`:
//!   a TLS inspector picks between that chain (transport protocol `tls`) and a plaintext one.
//! - Outbound (the service clusters sidecars and gateways use): "auto mTLS". A cluster's
//!   `transport_socket_matches` uses an `UpstreamTlsContext` verifying the destination
//!   service's SPIFFE ID for endpoints whose metadata says they are mesh workloads (see
//!   [`mtls_endpoint_metadata`]), and plaintext (the cluster's own transport socket) for the
//!   rest, which have no certificate to answer with.
//!
//! Proxyless gRPC clients never get these: gRPC knows certificate provider instances, not SDS.

use std::collections::HashMap;

use switchboard_model::identity::{mesh_identity_prefix, spiffe_id};
use switchboard_model::spec::{MtlsMode, Protocol};
use switchboard_xds_proto::pack;

use crate::common::ads;
use crate::names;
use crate::pb::envoy::config::cluster::v3::{Cluster, cluster::TransportSocketMatch};
use crate::pb::envoy::config::core::v3::{Metadata, TransportSocket, transport_socket};
use crate::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use crate::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use crate::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use crate::pb::google::protobuf::{BoolValue, Struct, Value, value};
use crate::{InboundSecurity, MeshConfig};

/// The mTLS mode the translator applies: the mesh's, except that `permissive` is `off` while
/// the mesh has no CA (an empty trust bundle). Permissive promises that nothing breaks, and
/// with no certificates to issue, TLS could not work; `strict` promises that nothing goes in
/// plaintext, so it stays TLS, and calls fail until the CA exists.
pub(crate) fn effective_mode(config: &MeshConfig) -> MtlsMode {
    match config.spec.mtls.mode {
        MtlsMode::Permissive if config.trust.is_empty() => MtlsMode::Off,
        mode => mode,
    }
}

/// Everything of a mesh's configuration that the TLS contexts depend on: when it changes,
/// every service's cluster for proxies and inbound security are rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MtlsInputs {
    mode: MtlsMode,
    tenant: String,
    trust_domain: String,
    mesh: String,
}

impl MtlsInputs {
    pub(crate) fn of(config: &MeshConfig) -> Self {
        Self {
            mode: effective_mode(config),
            tenant: config.tenant.clone(),
            trust_domain: config.trust_domain.clone(),
            mesh: config.mesh.clone(),
        }
    }
}

/// The transport-level part of a service's inbound security (no authorization filters).
pub(crate) fn inbound_tls(config: &MeshConfig, protocol: Protocol) -> InboundSecurity {
    let mode = effective_mode(config);
    if mode == MtlsMode::Off {
        return InboundSecurity::default();
    }
    let prefix = mesh_identity_prefix(&config.tenant, &config.trust_domain, &config.mesh);
    let context = DownstreamTlsContext {
        common_tls_context: Some(common_tls_context(
            uri_san(string_matcher::MatchPattern::Prefix(prefix)),
            downstream_alpn(protocol),
        )),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    InboundSecurity {
        transport_socket: Some(tls_socket(pack(&context))),
        accept_plaintext: mode == MtlsMode::Permissive,
        ..Default::default()
    }
}

/// `plain` (a service's cluster as proxyless clients get it) for proxies: mTLS towards the
/// endpoints that are mesh workloads, plaintext towards the others. Only called when the
/// effective mode is not `off`.
pub(crate) fn proxy_cluster(
    config: &MeshConfig,
    service: &str,
    protocol: Protocol,
    mut plain: Cluster,
) -> Cluster {
    let id = spiffe_id(&config.tenant, &config.trust_domain, &config.mesh, service);
    let context = UpstreamTlsContext {
        common_tls_context: Some(common_tls_context(
            uri_san(string_matcher::MatchPattern::Exact(id)),
            upstream_alpn(protocol),
        )),
        // A service name is a DNS label, so it is a valid SNI; identity is checked by SAN.
        sni: service.to_owned(),
        ..Default::default()
    };
    plain.transport_socket_matches = vec![TransportSocketMatch {
        name: names::MTLS_MATCH_KEY.to_owned(),
        r#match: Some(mtls_match()),
        transport_socket: Some(tls_socket(pack(&context))),
    }];
    plain.transport_socket = Some(TransportSocket {
        name: names::RAW_BUFFER_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(
            &RawBuffer {},
        ))),
    });
    plain
}

/// The metadata of an endpoint that is a mesh workload (`EndpointSpec.mtls`), which the
/// clusters' transport socket match selects.
pub(crate) fn mtls_endpoint_metadata() -> Metadata {
    // One entry per map: see `hash` on why.
    Metadata {
        filter_metadata: HashMap::from([(names::TRANSPORT_SOCKET_MATCH.to_owned(), mtls_match())]),
        ..Default::default()
    }
}

fn mtls_match() -> Struct {
    Struct {
        fields: HashMap::from([(
            names::MTLS_MATCH_KEY.to_owned(),
            Value {
                kind: Some(value::Kind::StringValue(names::MTLS_MATCH_VALUE.to_owned())),
            },
        )]),
    }
}

fn tls_socket(context: crate::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket {
        name: names::TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(context)),
    }
}

/// Our certificate is `default`; the peer's must chain to `ROOTCA` (merged, as Envoy does for
/// a combined validation context, with the SAN matcher given here).
fn common_tls_context(san: SubjectAltNameMatcher, alpn: &[&str]) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(names::WORKLOAD_CERTIFICATE_SECRET)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: vec![san],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(names::ROOT_CA_SECRET)),
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: alpn.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

fn uri_san(pattern: string_matcher::MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}

/// What the inbound side offers: HTTP kinds go through an HTTP connection manager with an
/// automatic codec, which takes either; TCP offers none.
fn downstream_alpn(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::Tcp => &[],
        _ => &["h2", "http/1.1"],
    }
}

/// What a caller asks for: the protocol the cluster speaks upstream.
fn upstream_alpn(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::Tcp => &[],
        p if p.is_http2() => &["h2"],
        _ => &["http/1.1"],
    }
}
