use super::Reference;
use crate::validate::Errors;
use crate::{Kind, ValidationErrors};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Healthy,
    Unhealthy,
    Draining,
    Unknown,
}

#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Locality {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_zone: String,
}

/// One member of a service: becomes an LbEndpoint of the service's ClusterLoadAssignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    pub service: String,
    /// An IP address (v4 or v6).
    pub address: String,
    /// Defaults to the service's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub locality: Locality,
    /// 0 is the highest priority; higher priorities take traffic when lower ones fail.
    #[serde(default)]
    pub priority: u32,
    #[serde(default)]
    pub health: Health,
    /// The xDS node (its name in the mesh) whose stream keeps this endpoint: set by sidecar
    /// self-registration. Once no stream of that node has been connected to any replica for
    /// the sidecar grace period, the endpoint is deleted. Unset for endpoints users manage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The endpoint is a mesh workload behind a sidecar that terminates mesh mTLS: when the
    /// mesh's mTLS mode is not `off`, proxies call it with mutual TLS, and plaintext otherwise
    /// (an endpoint outside the mesh has no certificate to answer with). Sidecar
    /// self-registration sets it; set it by hand only for a workload behind a sidecar.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mtls: bool,
}

fn default_weight() -> u32 {
    1
}

impl EndpointSpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = Errors::default();
        e.reference("spec.service", &self.service);
        if self.address.parse::<std::net::IpAddr>().is_err() {
            e.push(
                "spec.address",
                format!("{:?} is not an IP address", self.address),
            );
        }
        if let Some(p) = self.port {
            e.port("spec.port", p);
        }
        e.range("spec.weight", self.weight, 1, 1000);
        e.range("spec.priority", self.priority, 0, 127);
        for (f, v) in [
            ("region", &self.locality.region),
            ("zone", &self.locality.zone),
            ("subZone", &self.locality.sub_zone),
        ] {
            if v.len() > 128 || v.chars().any(|c| c.is_control()) {
                e.push(
                    format!("spec.locality.{f}"),
                    "use at most 128 printable characters",
                );
            }
        }
        if let Some(node) = &self.node
            && (node.is_empty()
                || node.len() > 253
                || node.chars().any(|c| c.is_control() || c == '/'))
        {
            e.push(
                "spec.node",
                "use a node name of 1 to 253 printable characters, without '/'",
            );
        }
        e.into_result()
    }

    pub fn references(&self) -> Vec<Reference> {
        vec![Reference {
            field: "spec.service".into(),
            kind: Kind::Service,
            name: self.service.clone(),
        }]
    }
}
