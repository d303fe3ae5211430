//! The endpoint a sidecar registers as: its name and its spec (marked `mtls`: a sidecar
//! terminates mesh mTLS), validated as a REST write would be. Pure: every replica derives the same endpoint from the same stream.

use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};
use switchboard_model::{Kind, Spec, ValidationErrors, validate_name};
use switchboard_translator::SidecarParams;

use crate::node::SidecarEndpointMeta;

/// Every endpoint name a sidecar registers starts with this.
pub const ENDPOINT_PREFIX: &str = "sidecar-";

/// The longest name a resource may have (a DNS label).
const MAX_NAME: usize = 63;

/// The hex digits of the hash suffix of an altered node name.
const HASH_LEN: usize = 8;

/// The endpoint a sidecar registers as: `sidecar-{node name}` when the node name is already a
/// valid resource name, else the node name lowercased, with every character a name cannot
/// hold turned into `-`, cut to fit, and a short hash of the original name appended so two
/// names that alter alike stay apart. Deterministic: every replica derives the same name.
pub fn endpoint_name(node_name: &str) -> String {
    let plain = format!("{ENDPOINT_PREFIX}{node_name}");
    if validate_name("name", &plain).is_ok() {
        return plain;
    }
    let hash = hex::encode(Sha256::digest(node_name.as_bytes()));
    let hash = &hash[..HASH_LEN];
    let room = MAX_NAME - ENDPOINT_PREFIX.len() - HASH_LEN - 1;
    let body: String = node_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(room)
        .collect();
    let body = body.trim_matches('-');
    if body.is_empty() {
        format!("{ENDPOINT_PREFIX}{hash}")
    } else {
        format!("{ENDPOINT_PREFIX}{body}-{hash}")
    }
}

/// Why a sidecar cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error(
        "no address to register: the node metadata has no address and the stream's peer \
         address is unknown"
    )]
    NoAddress,
    #[error("the endpoint would not be valid: {0}")]
    Invalid(#[from] ValidationErrors),
}

/// The endpoint a sidecar stream asks for, validated as a REST write would be.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub name: String,
    pub spec: Spec,
}

impl Desired {
    /// The endpoint of a sidecar named `node_name` with `params` and `meta`, reached at
    /// `meta.address` or else at `peer`'s IP.
    pub fn new(
        node_name: &str,
        params: &SidecarParams,
        meta: &SidecarEndpointMeta,
        peer: Option<SocketAddr>,
    ) -> Result<Desired, DesiredError> {
        let address: IpAddr = meta
            .address
            .or_else(|| peer.map(|p| p.ip().to_canonical()))
            .ok_or(DesiredError::NoAddress)?;
        let name = endpoint_name(node_name);
        validate_name("name", &name).map_err(|e| ValidationErrors(vec![e]))?;
        let spec = Spec::parse(
            Kind::Endpoint,
            serde_json::json!({
                "service": params.service,
                "address": address.to_string(),
                "port": params.inbound_port,
                "weight": 1,
                "locality": {
                    "region": meta.region,
                    "zone": meta.zone,
                    "subZone": meta.sub_zone,
                },
                "node": node_name,
                // A sidecar terminates mesh mTLS: callers may use it.
                "mtls": true,
            }),
        )?;
        spec.validate()?;
        Ok(Desired { name, spec })
    }

    /// The service the endpoint belongs to.
    pub(super) fn service(&self) -> &str {
        match &self.spec {
            Spec::Endpoint(e) => &e.service,
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_are_valid_and_stable() {
        assert_eq!(endpoint_name("pay-7f9c"), "sidecar-pay-7f9c");
        for node in [
            "Pay-1",
            "pay.default.svc:8080",
            "pay_1",
            "a-",
            "-",
            "...",
            &"x".repeat(253),
            &"X.".repeat(120),
        ] {
            let name = endpoint_name(node);
            assert!(validate_name("name", &name).is_ok(), "{node:?} → {name:?}");
            assert!(name.starts_with(ENDPOINT_PREFIX), "{name}");
            assert_eq!(name, endpoint_name(node), "deterministic");
        }
        // Altered names keep apart what alters alike.
        assert_ne!(endpoint_name("Pay-1"), endpoint_name("pay.1"));
        assert_ne!(endpoint_name("Pay-1"), endpoint_name("pay-1"));
        assert!(endpoint_name("Pay.1").starts_with("sidecar-pay-1-"));
        assert_eq!(endpoint_name(&"x".repeat(55)).len(), MAX_NAME);
        assert_ne!(
            endpoint_name(&"x".repeat(56)),
            format!("sidecar-{}", "x".repeat(56))
        );
    }

    fn params() -> SidecarParams {
        SidecarParams {
            service: "pay".to_owned(),
            inbound_port: 15006,
            app_port: 8080,
            outbound_port: 15001,
        }
    }

    #[test]
    fn desired_endpoint() {
        let peer: SocketAddr = "[::ffff:10.1.2.3]:4567".parse().unwrap();
        let d = Desired::new(
            "pay-1",
            &params(),
            &SidecarEndpointMeta::default(),
            Some(peer),
        )
        .unwrap();
        assert_eq!(d.name, "sidecar-pay-1");
        assert_eq!(d.service(), "pay");
        let Spec::Endpoint(e) = &d.spec else {
            panic!("{d:?}")
        };
        assert_eq!(e.address, "10.1.2.3");
        assert_eq!(e.port, Some(15006));
        assert_eq!(e.weight, 1);
        assert_eq!(e.service, "pay");
        assert!(e.mtls, "a sidecar's endpoint speaks mesh mTLS");
        let meta = SidecarEndpointMeta {
            address: Some("fd00::7".parse().unwrap()),
            region: "eu".to_owned(),
            zone: "eu-1".to_owned(),
            sub_zone: String::new(),
        };
        let d = Desired::new("pay-1", &params(), &meta, Some(peer)).unwrap();
        let Spec::Endpoint(e) = &d.spec else {
            panic!("{d:?}")
        };
        assert_eq!(e.address, "fd00::7");
        assert_eq!(
            (e.locality.region.as_str(), e.locality.zone.as_str()),
            ("eu", "eu-1")
        );
        assert!(matches!(
            Desired::new("pay-1", &params(), &SidecarEndpointMeta::default(), None),
            Err(DesiredError::NoAddress)
        ));
    }
}
