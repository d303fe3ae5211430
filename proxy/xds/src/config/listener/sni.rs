//! Filter chains chosen by SNI (`filter_chain_match.server_names`), as gateways terminating
//! TLS with several certificates have them: every chain terminates TLS and runs the same
//! filters, and only the certificate differs. They are merged into one chain whose
//! [`DownstreamTls`] picks the certificate by the client's SNI during the handshake
//! ([`DownstreamTls::sni_certificates`]). Exactly one chain has no `server_names`: the
//! default. Chains that differ in anything but their certificate are refused by name (this
//! proxy chooses certificates by SNI, not filters).

use super::super::tls::SniCertificate;
use super::{Chain, ConfigError, Path, Transport};

/// Checks and lowercases `server_names`: DNS names, or `*.` followed by one (a wildcard).
pub(super) fn server_names(names: &[String], path: &Path) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        let host = lower.strip_prefix("*.").unwrap_or(&lower);
        let valid = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(path.index("server_names", i).err(format!(
                "{name:?} is not a DNS name or a `*.` wildcard of one"
            )));
        }
        out.push(lower);
    }
    Ok(out)
}

/// The chains of one listener, at least one with `server_names`, merged into one.
pub(super) fn merge(chains: Vec<Chain>, path: &Path) -> Result<Chain, ConfigError> {
    let defaults = chains.iter().filter(|c| c.server_names.is_empty()).count();
    if defaults != 1 {
        return Err(path.err(format!(
            "filter chains chosen by server_names need exactly one chain without server_names \
             (the default, for clients whose SNI no chain names); got {defaults}"
        )));
    }
    let mut default = None;
    let mut others = Vec::new();
    for (i, chain) in chains.into_iter().enumerate() {
        // `path` is the listener's `filter_chains`.
        let p = Path(format!("{}[{i}]", path.0));
        if chain.tls.is_none() || chain.transport == Transport::RawBuffer {
            return Err(p.field("transport_socket").err(
                "a filter chain chosen by server_names must terminate TLS (SNI is read from \
                 the TLS handshake)",
            ));
        }
        if chain.server_names.is_empty() {
            default = Some(chain);
        } else {
            others.push((p, chain));
        }
    }
    let Some(mut default) = default else {
        return Err(path.err("no default filter chain"));
    };
    let mut seen: Vec<String> = Vec::new();
    let mut sni_certificates = Vec::new();
    for (p, chain) in others {
        let (Some(tls), Some(base)) = (chain.tls, default.tls.as_ref()) else {
            return Err(p.err("a filter chain chosen by server_names must terminate TLS"));
        };
        let same_tls = tls.alpn_protocols == base.alpn_protocols
            && tls.client_validation == base.client_validation
            && tls.handshake_timeout == base.handshake_timeout
            && tls.sni_certificates.is_empty();
        if chain.kind != default.kind || chain.network_rbac != default.network_rbac || !same_tls {
            return Err(p.err(
                "filter chains chosen by server_names must run the same filters with the same \
                 TLS settings as the default chain; only the certificate may differ",
            ));
        }
        for name in &chain.server_names {
            if seen.contains(name) {
                return Err(p.field("filter_chain_match").err(format!(
                    "server name {name:?} is matched by two filter chains"
                )));
            }
            seen.push(name.clone());
        }
        sni_certificates.push(SniCertificate {
            server_names: chain.server_names,
            certificate_chain: tls.certificate_chain,
            private_key: tls.private_key,
        });
    }
    if let Some(tls) = default.tls.as_mut() {
        tls.sni_certificates = sni_certificates;
    }
    Ok(default)
}
