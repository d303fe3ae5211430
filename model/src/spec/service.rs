use crate::validate::Errors;
use crate::{Duration, ValidationErrors};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    /// HTTP/2 upstream (gRPC needs it).
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    RingHash,
    Random,
}

/// Envoy's circuit-breaker thresholds for the default priority; unset means Envoy's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Passive health checking: eject an endpoint after consecutive 5xx.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10s")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "30s")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// TLS origination: sidecars and gateways call the service's endpoints over TLS (an API
/// outside the mesh, a database that requires TLS) and verify the server as any TLS client
/// does, so that the app can speak plaintext to its sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceTls {
    /// The server name sent (SNI) and the DNS name the server's certificate must hold.
    #[schema(example = "api.example.com")]
    pub sni: String,
    /// PEM CA certificates the server's certificate must chain to; without them, the
    /// platform's roots (the proxy host's system trust store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

/// A backend service: becomes an xDS Cluster named after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub protocol: Protocol,
    /// The port clients address the service by (`xds:///name:port`).
    pub port: u32,
    #[serde(default)]
    pub load_balancing: LbPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "1s")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Originate TLS towards the endpoints (see [`ServiceTls`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServiceTls>,
}

impl ServiceSpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = Errors::default();
        e.port("spec.port", self.port);
        if self.connect_timeout.is_some_and(|t| t.is_zero()) {
            e.push("spec.connectTimeout", "must be greater than 0s");
        }
        if let Some(o) = &self.outlier_detection {
            if let Some(p) = o.max_ejection_percent {
                e.range("spec.outlierDetection.maxEjectionPercent", p, 0, 100);
            }
            if o.consecutive_5xx == Some(0) {
                e.push("spec.outlierDetection.consecutive5xx", "must be at least 1");
            }
            for (f, d) in [
                ("interval", o.interval),
                ("baseEjectionTime", o.base_ejection_time),
            ] {
                if d.is_some_and(|d| d.is_zero()) {
                    e.push(
                        format!("spec.outlierDetection.{f}"),
                        "must be greater than 0s",
                    );
                }
            }
        }
        if let Some(tls) = &self.tls {
            if rustls_pki_types::DnsName::try_from(tls.sni.as_str()).is_err() {
                e.push("spec.tls.sni", "must be a DNS name (e.g. api.example.com)");
            }
            if let Some(pem) = &tls.ca_certificates
                && let Err(why) = pem_certificates(pem)
            {
                e.push("spec.tls.caCertificates", why);
            }
            if self.protocol == Protocol::Tcp {
                e.push(
                    "spec.tls",
                    "TLS origination is for HTTP, HTTP/2 and gRPC services; a tcp service's \
                     clients speak TLS themselves",
                );
            }
        }
        e.into_result()
    }
}

/// Checks that `pem` holds one or more PEM certificates and nothing else that looks like one.
fn pem_certificates(pem: &str) -> Result<(), &'static str> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        if cert.is_err() {
            return Err("is not valid PEM");
        }
        count += 1;
    }
    if count == 0 {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    Ok(())
}
