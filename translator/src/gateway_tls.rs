//! TLS termination on gateways with certificates users upload (the `certificates` kind),
//! several per gateway chosen by SNI, in Envoy's shape: a `tls_inspector` listener filter
//! reads the SNI, and each certificate gets a filter chain whose
//! `filter_chain_match.server_names` are its DNS names, with a `DownstreamTlsContext` taking
//! the certificate over SDS (secret [`names::certificate_secret`], on the ADS stream). A last
//! chain without `server_names` is the default: for clients that send no SNI, or one no
//! certificate names.
//!
//! Which certificate is the default: the first one listed without DNS names, else the first
//! one listed. A DNS name two certificates carry goes to the first one listed (Envoy refuses
//! a listener whose chains match the same name).

use std::collections::{BTreeMap, BTreeSet};

use switchboard_model::spec::{CertificateSpec, GatewayTls};
use switchboard_xds_proto::pack;

use crate::common::ads;
use crate::names;
use crate::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use crate::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
use crate::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
};

/// One filter chain of a TLS gateway: the SNI names it takes (none: the default chain) and
/// the certificate it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SniChain {
    pub server_names: Vec<String>,
    pub certificate: String,
}

/// The chains of `tls` (SNI chains in the order listed, the default last), and warnings
/// about certificates that are missing or serve nothing. Empty when no listed certificate
/// exists.
pub(crate) fn sni_chains(
    gateway: &str,
    tls: &GatewayTls,
    certificates: &BTreeMap<String, CertificateSpec>,
    warnings: &mut Vec<String>,
) -> Vec<SniChain> {
    let existing: Vec<(&String, &CertificateSpec)> = tls
        .certificates
        .iter()
        .filter_map(|name| match certificates.get(name) {
            Some(c) => Some((name, c)),
            None => {
                warnings.push(format!(
                    "gateway {gateway}: certificate {name} does not exist; not served"
                ));
                None
            }
        })
        .collect();
    let Some(default) = existing
        .iter()
        .find(|(_, c)| c.dns_names.is_empty())
        .or(existing.first())
        .map(|(name, _)| (*name).clone())
    else {
        return Vec::new();
    };
    let mut taken = BTreeSet::new();
    let mut chains = Vec::new();
    for (name, cert) in &existing {
        let server_names: Vec<String> = cert
            .dns_names
            .iter()
            .filter(|n| taken.insert(n.as_str()))
            .cloned()
            .collect();
        if server_names.len() < cert.dns_names.len() {
            warnings.push(format!(
                "gateway {gateway}: certificate {name} shares DNS names with a certificate \
                 listed before it, which serves them"
            ));
        }
        if !server_names.is_empty() {
            chains.push(SniChain {
                server_names,
                certificate: (*name).clone(),
            });
        } else if **name != default {
            warnings.push(format!(
                "gateway {gateway}: certificate {name} has no DNS name of its own and is not the \
                 default; it is never served"
            ));
        }
    }
    chains.push(SniChain {
        server_names: Vec::new(),
        certificate: default,
    });
    chains
}

/// The filter chains of `chains`, each running `filter` behind TLS with its certificate.
pub(crate) fn filter_chains(
    chains: &[SniChain],
    filter: &Filter,
    alpn: &[&str],
) -> Vec<FilterChain> {
    chains
        .iter()
        .map(|c| {
            let context = DownstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                        name: names::certificate_secret(&c.certificate),
                        sds_config: Some(ads()),
                    }],
                    alpn_protocols: alpn.iter().map(|p| (*p).to_owned()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            FilterChain {
                filter_chain_match: (!c.server_names.is_empty()).then(|| FilterChainMatch {
                    server_names: c.server_names.clone(),
                    ..Default::default()
                }),
                filters: vec![filter.clone()],
                transport_socket: Some(TransportSocket {
                    name: names::TLS_TRANSPORT_SOCKET.to_owned(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
                }),
                ..Default::default()
            }
        })
        .collect()
}
