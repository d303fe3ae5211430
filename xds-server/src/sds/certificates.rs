//! Uploaded certificates (`certificates` kind) as `certificate/{name}` secrets: built at each
//! snapshot rebuild for the certificates some gateway names, their keys opened through the
//! CA port ([`WorkloadIssuer::open_certificate_key`]). A key that does not open leaves its
//! secret out (the gateway's listener then waits for it), with a warning naming the
//! certificate and never the key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use switchboard_translator::{MeshConfig, XdsResource, names};
use switchboard_xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, secret,
};

use super::ca::WorkloadIssuer;
use super::secrets::inline;

/// Gateway name → the certificates its spec names.
pub fn by_gateway(config: &MeshConfig) -> BTreeMap<String, BTreeSet<String>> {
    config
        .gateways
        .iter()
        .filter_map(|(g, spec)| {
            let tls = spec.tls.as_ref()?;
            Some((g.clone(), tls.certificates.iter().cloned().collect()))
        })
        .collect()
}

/// The `certificate/{name}` secrets of the certificates gateways name, by certificate name.
pub fn open(
    config: &MeshConfig,
    issuer: &dyn WorkloadIssuer,
) -> BTreeMap<String, Arc<XdsResource>> {
    let named: BTreeSet<String> = by_gateway(config).into_values().flatten().collect();
    let mut out = BTreeMap::new();
    for name in named {
        let Some(spec) = config.certificates.get(&name) else {
            continue;
        };
        let Some(sealed) = spec.sealed_key() else {
            tracing::warn!(certificate = %name, "stored certificate has no sealed key; not served");
            continue;
        };
        match issuer.open_certificate_key(&config.tenant, &config.mesh, &name, sealed) {
            Ok(key) => {
                let secret_name = names::certificate_secret(&name);
                let secret = Secret {
                    name: secret_name.clone(),
                    r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                        certificate_chain: inline(spec.certificate_chain.as_bytes()),
                        private_key: inline(key.as_bytes()),
                        ..Default::default()
                    })),
                };
                // The version is the certificate's fingerprint (a new key means a new
                // certificate), so nothing derived from the key leaves the process.
                let resource =
                    XdsResource::with_version(secret_name, spec.fingerprint.clone(), &secret);
                out.insert(name, Arc::new(resource));
            }
            Err(e) => {
                tracing::warn!(certificate = %name, error = %e, "cannot open the certificate's key; not served");
            }
        }
    }
    out
}
