//! The bootstrap: where the control plane is and who this node is. Parsed from YAML or JSON
//! (YAML is a superset) or built by callers such as the proxy's command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchboard_xds_proto::Node;
use switchboard_xds_proto::pb::google::protobuf::{Struct, Value, value::Kind};

/// Also what `switchboard bootstrap proxy` prints, so the two cannot drift apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// `http://host:port` of the ADS server, or `https://host:port` for TLS (with
    /// `xds_ca_file`).
    pub xds_address: String,
    /// `tenants/{tenant}/meshes/{mesh}/nodes/{name}` for Switchboard.
    pub node_id: String,
    /// Node metadata, e.g. `role: sidecar`, `service`, `app_port`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// A file holding the proxy token, read on every connect so it can be rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates the control plane's TLS certificate must chain to (an `https`
    /// `xds_address`), read on every connect so they can be rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds_ca_file: Option<PathBuf>,
    /// A PEM certificate chain (leaf first) this proxy presents to the control plane over
    /// TLS, e.g. a workload certificate of the mesh CA, which authenticates it instead of a
    /// token. Read, with `xds_client_key_file`, on every connect so it can be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds_client_cert_file: Option<PathBuf>,
    /// The PEM private key of `xds_client_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds_client_key_file: Option<PathBuf>,
    /// Which ADS protocol to speak, in the shape of Envoy's `dynamic_resources.ads_config`.
    #[serde(default, skip_serializing_if = "AdsConfig::is_unset")]
    pub ads_config: AdsConfig,
}

/// The part of Envoy's `ads_config` the proxy reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdsConfig {
    /// `DELTA_GRPC` (incremental xDS) or `GRPC` (state of the world), Envoy's names.
    ///
    /// Absent, the proxy speaks delta and falls back to state of the world, once, when the
    /// control plane answers `UNIMPLEMENTED` (an older control plane); named, it speaks
    /// exactly that protocol and retries with backoff if the server refuses it, as Envoy does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_type: Option<ApiType>,
}

impl AdsConfig {
    fn is_unset(&self) -> bool {
        self.api_type.is_none()
    }
}

/// Envoy's `ApiConfigSource.ApiType` values that make sense for ADS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ApiType {
    /// `DeltaAggregatedResources`: incremental xDS.
    #[serde(rename = "DELTA_GRPC")]
    DeltaGrpc,
    /// `StreamAggregatedResources`: state of the world.
    #[serde(rename = "GRPC")]
    Grpc,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read bootstrap {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid bootstrap {path}: {source} (hint: it needs xds_address and node_id)")]
    Parse {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
}

impl Bootstrap {
    pub fn from_file(path: &Path) -> Result<Self, BootstrapError> {
        let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| BootstrapError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses YAML or JSON text.
    pub fn parse(text: &str) -> Result<Self, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(text)
    }

    /// TLS to the control plane needs both an `https` address and a CA, and a CA only makes
    /// sense with TLS; a client certificate comes with its key, and only over TLS.
    pub fn check_tls(&self) -> Result<(), &'static str> {
        let https = self.xds_address.starts_with("https://");
        match (
            self.xds_client_cert_file.is_some(),
            self.xds_client_key_file.is_some(),
        ) {
            (true, false) => {
                return Err(
                    "xds_client_cert_file needs xds_client_key_file, the private key of the certificate",
                );
            }
            (false, true) => {
                return Err(
                    "xds_client_key_file needs xds_client_cert_file, the certificate of the key",
                );
            }
            (true, true) if !https => {
                return Err(
                    "a client certificate is for TLS to the control plane: write the xds_address as https://host:port",
                );
            }
            _ => {}
        }
        match (https, self.xds_ca_file.is_some()) {
            (true, false) => Err(
                "an https:// xds_address needs xds_ca_file, the CA certificates that verify the control plane",
            ),
            (false, true) => Err(
                "xds_ca_file is for TLS to the control plane: write the xds_address as https://host:port",
            ),
            _ => Ok(()),
        }
    }

    /// The `Node` sent on the first request of each stream.
    pub fn node(&self) -> Node {
        let fields = self
            .metadata
            .iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue(v.clone())),
                };
                (k.clone(), value)
            })
            .collect();
        Node {
            id: self.node_id.clone(),
            metadata: Some(Struct { fields }),
            user_agent_name: "switchboard-proxy".to_owned(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_and_json() {
        let yaml = "xds_address: http://127.0.0.1:18000\nnode_id: tenants/a/meshes/m/nodes/n\n\
                    metadata: {role: sidecar, service: pay}\ntoken_file: /run/token\n";
        let b = Bootstrap::parse(yaml).unwrap();
        assert_eq!(b.metadata["role"], "sidecar");
        assert_eq!(b.token_file.as_deref(), Some(Path::new("/run/token")));
        let json = r#"{"xds_address": "http://x:1", "node_id": "n"}"#;
        assert!(Bootstrap::parse(json).unwrap().metadata.is_empty());
        assert!(Bootstrap::parse("node_id: n\n").is_err());
        assert!(Bootstrap::parse("xds_address: a\nnode_id: n\nbogus: 1\n").is_err());
    }

    #[test]
    fn ads_api_type_takes_envoys_names_and_defaults_to_unset() {
        let base = "xds_address: http://x:1\nnode_id: n\n";
        assert_eq!(Bootstrap::parse(base).unwrap().ads_config.api_type, None);
        let with = |t: &str| Bootstrap::parse(&format!("{base}ads_config: {{api_type: {t}}}\n"));
        assert_eq!(
            with("DELTA_GRPC").unwrap().ads_config.api_type,
            Some(ApiType::DeltaGrpc)
        );
        assert_eq!(
            with("GRPC").unwrap().ads_config.api_type,
            Some(ApiType::Grpc)
        );
        let e = with("REST").unwrap_err().to_string();
        assert!(e.contains("DELTA_GRPC") && e.contains("GRPC"), "{e}");
        // Unset, nothing is written: the printed bootstrap keeps the proxy's default.
        let b = Bootstrap::parse(base).unwrap();
        assert!(!serde_yaml_ng::to_string(&b).unwrap().contains("ads_config"));
        let b = with("GRPC").unwrap();
        let text = serde_yaml_ng::to_string(&b).unwrap();
        assert_eq!(Bootstrap::parse(&text).unwrap(), b, "{text}");
    }

    #[test]
    fn a_client_certificate_comes_with_its_key_and_tls() {
        let base = "node_id: n\nxds_ca_file: /ca.pem\n";
        let parse = |extra: &str| {
            Bootstrap::parse(&format!("{base}{extra}"))
                .unwrap()
                .check_tls()
        };
        let both = "xds_client_cert_file: /c.pem\nxds_client_key_file: /k.pem\n";
        assert_eq!(parse(&format!("xds_address: https://x:1\n{both}")), Ok(()));
        let e = parse("xds_address: https://x:1\nxds_client_cert_file: /c.pem\n").unwrap_err();
        assert!(e.contains("needs xds_client_key_file"), "{e}");
        let e = parse("xds_address: https://x:1\nxds_client_key_file: /k.pem\n").unwrap_err();
        assert!(e.contains("needs xds_client_cert_file"), "{e}");
        let e = Bootstrap::parse(&format!("node_id: n\nxds_address: http://x:1\n{both}"))
            .unwrap()
            .check_tls()
            .unwrap_err();
        assert!(e.contains("https://"), "{e}");
    }
}
