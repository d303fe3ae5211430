//! TLS origination (`ServiceSpec.tls`): sidecars and gateways call a service's endpoints over
//! TLS, sending the configured SNI and verifying the server's certificate for that DNS name
//! against the given CA certificates or, without them, the platform's roots
//! (`system_root_certs`, Envoy's way of saying "the trust store of the host").
//!
//! The cluster's own transport socket carries it, for every endpoint: such a service is
//! outside the mesh, so mesh mTLS (`transport_socket_matches`) does not apply to it. Proxyless
//! gRPC clients keep the plaintext cluster: gRPC takes server roots from certificate provider
//! instances only, and would reject inline ones.

use switchboard_model::spec::Protocol;
use switchboard_model::spec::ServiceTls;
use switchboard_xds_proto::pack;

use crate::names;
use crate::pb::envoy::config::cluster::v3::Cluster;
use crate::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source, transport_socket,
};
use crate::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, UpstreamTlsContext,
    certificate_validation_context::SystemRootCerts, common_tls_context,
};

/// `plain` (a service's cluster) with a TLS transport socket for `tls`.
pub(crate) fn originating_cluster(
    mut plain: Cluster,
    tls: &ServiceTls,
    protocol: Protocol,
) -> Cluster {
    let validation = match &tls.ca_certificates {
        Some(pem) => CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(pem.clone())),
                ..Default::default()
            }),
            ..Default::default()
        },
        None => CertificateValidationContext {
            system_root_certs: Some(SystemRootCerts::default()),
            ..Default::default()
        },
    };
    let context = UpstreamTlsContext {
        sni: tls.sni.clone(),
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(validation),
            ),
            alpn_protocols: if protocol.is_http2() {
                vec!["h2".to_owned()]
            } else {
                vec!["http/1.1".to_owned()]
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    plain.transport_socket = Some(TransportSocket {
        name: names::TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    });
    plain
}
