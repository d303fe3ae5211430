use super::Reference;
use crate::validate::Errors;
use crate::{Kind, ValidationErrors};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GatewayProtocol {
    #[default]
    Http,
    Tcp,
}

/// A listener of edge proxies (nodes with `role: gateway`, `gateway: <name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    pub port: u32,
    #[serde(default)]
    pub protocol: GatewayProtocol,
    /// HTTP: only these host names are served (all of the attached routes' when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// HTTP: the routes attached to this gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// TCP: the service that connections are forwarded to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// TLS termination with uploaded certificates (`certificates` kind), chosen by SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTls>,
}

/// The most certificates one gateway serves.
pub const MAX_GATEWAY_CERTIFICATES: usize = 32;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GatewayTlsMode {
    /// The gateway terminates TLS and forwards plaintext (HTTP routes or the TCP service).
    #[default]
    Terminate,
}

/// A gateway's TLS: each certificate serves the SNI names of its DNS SANs (exact, or
/// `*.`-wildcard); a client sending no SNI, or one no certificate names, gets the first
/// certificate listed without DNS names, else the first one listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayTls {
    #[serde(default)]
    pub mode: GatewayTlsMode,
    /// Names of `certificates` resources of the mesh, in order of preference.
    pub certificates: Vec<String>,
}

impl GatewaySpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = Errors::default();
        e.port("spec.port", self.port);
        for (i, h) in self.hostnames.iter().enumerate() {
            e.hostname(&format!("spec.hostnames[{i}]"), h);
        }
        for (i, r) in self.routes.iter().enumerate() {
            e.reference(&format!("spec.routes[{i}]"), r);
        }
        if let Some(tls) = &self.tls {
            if tls.certificates.is_empty() {
                e.push(
                    "spec.tls.certificates",
                    "name at least one certificate to terminate TLS with",
                );
            }
            if tls.certificates.len() > MAX_GATEWAY_CERTIFICATES {
                e.push(
                    "spec.tls.certificates",
                    format!("at most {MAX_GATEWAY_CERTIFICATES} certificates"),
                );
            }
            for (i, c) in tls.certificates.iter().enumerate() {
                let field = format!("spec.tls.certificates[{i}]");
                e.reference(&field, c);
                if tls.certificates[..i].contains(c) {
                    e.push(field, format!("certificate {c:?} is listed twice"));
                }
            }
        }
        match self.protocol {
            GatewayProtocol::Http => {
                if self.service.is_some() {
                    e.push(
                        "spec.service",
                        "only a tcp gateway forwards to a service; an http gateway uses routes",
                    );
                }
            }
            GatewayProtocol::Tcp => {
                match &self.service {
                    Some(s) => e.reference("spec.service", s),
                    None => e.push(
                        "spec.service",
                        "a tcp gateway needs the service to forward to",
                    ),
                }
                if !self.routes.is_empty() {
                    e.push("spec.routes", "a tcp gateway has no HTTP routes");
                }
                if !self.hostnames.is_empty() {
                    e.push("spec.hostnames", "a tcp gateway has no host names");
                }
            }
        }
        e.into_result()
    }

    pub fn references(&self) -> Vec<Reference> {
        let mut refs: Vec<Reference> = self
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Reference {
                field: format!("spec.routes[{i}]"),
                kind: Kind::Route,
                name: r.clone(),
            })
            .collect();
        if let Some(s) = &self.service {
            refs.push(Reference {
                field: "spec.service".into(),
                kind: Kind::Service,
                name: s.clone(),
            });
        }
        if let Some(tls) = &self.tls {
            refs.extend(tls.certificates.iter().enumerate().map(|(i, c)| Reference {
                field: format!("spec.tls.certificates[{i}]"),
                kind: Kind::Certificate,
                name: c.clone(),
            }));
        }
        refs
    }
}
