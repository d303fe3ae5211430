//! The command line: a bootstrap file, flags, or both (flags win), and process options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use switchboard_proxy_xds::{ApiType, Bootstrap};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard-proxy",
    version,
    about = "Switchboard's data-plane proxy, configured over standard xDS (ADS)",
    long_about = "Switchboard's data-plane proxy, configured over standard xDS (ADS).\n\n\
        Give a bootstrap file (`switchboard bootstrap proxy …` prints one), or the xDS address \
        and node id as flags; flags override the file. Needs no root, no capabilities and no \
        writable file system."
)]
pub struct Args {
    /// Bootstrap file (YAML or JSON): xds_address, node_id, metadata, token_file, xds_ca_file,
    /// xds_client_cert_file, xds_client_key_file, ads_config: {api_type: DELTA_GRPC | GRPC}.
    #[arg(long, env = "SWITCHBOARD_PROXY_BOOTSTRAP")]
    pub bootstrap: Option<PathBuf>,
    /// The control plane's xDS address, e.g. http://127.0.0.1:18000.
    #[arg(long)]
    pub xds_address: Option<String>,
    /// This node's id: tenants/{tenant}/meshes/{mesh}/nodes/{name} for Switchboard.
    #[arg(long)]
    pub node_id: Option<String>,
    /// Node metadata as key=value, repeatable: role=sidecar, service=…, app_port=…,
    /// inbound_port=…, outbound_port=…, or role=gateway, gateway=….
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// A file holding the proxy token (read on every connect, so it can be rotated).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates that verify the control plane's TLS certificate (with an
    /// https:// xDS address); read on every connect.
    #[arg(long)]
    pub xds_ca_file: Option<PathBuf>,
    /// PEM certificate chain this proxy presents to the control plane over TLS (a workload
    /// certificate of the mesh CA authenticates it without a token); read on every connect.
    #[arg(long, requires = "xds_client_key_file")]
    pub xds_client_cert_file: Option<PathBuf>,
    /// The PEM private key of --xds-client-cert-file.
    #[arg(long, requires = "xds_client_cert_file")]
    pub xds_client_key_file: Option<PathBuf>,
    /// The ADS protocol: `delta` (incremental xDS) or `sotw` (state of the world); overrides
    /// the bootstrap's ads_config.api_type. Neither given: delta, falling back to sotw when
    /// the control plane does not serve delta; given: exactly that protocol.
    #[arg(long, value_enum, env = "SWITCHBOARD_PROXY_XDS_PROTOCOL")]
    pub xds_protocol: Option<XdsProtocol>,
    /// Where the admin port listens (/ready, /stats, /config_dump, /clusters).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_address: SocketAddr,
    /// Worker threads; defaults to the number of CPUs.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Open downstream connections allowed at once, over every listener and worker (Envoy's
    /// `global_downstream_max_connections`). A connection over it is closed as soon as it is
    /// accepted and counted in switchboard_proxy_listener_connections_overflow_total. With
    /// the listeners' HTTP limits it bounds the proxy's memory under load.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_downstream_connections: u64,
    /// How long a removed listener's open connections may finish before they are closed.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Format of the proxy's own logs on standard error (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Access log: `off`, `json`, or an Envoy-style format string such as
    /// "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %DURATION%".
    /// Logged at INFO with target `access_log` (`RUST_LOG=access_log=off` silences it) on
    /// standard error; with `--log-format text` each line is written bare, as Envoy writes
    /// it. The default is Envoy's default text format.
    #[arg(long)]
    pub access_log_format: Option<String>,
    /// The share of new traces (requests without a `traceparent`) that are sampled, 0 to 1;
    /// a caller's sampling decision is always kept.
    #[arg(long, default_value_t = 1.0)]
    pub trace_sampling_ratio: f64,
    /// Export request spans over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdsProtocol {
    Delta,
    Sotw,
}

impl From<XdsProtocol> for ApiType {
    fn from(p: XdsProtocol) -> Self {
        match p {
            XdsProtocol::Delta => ApiType::DeltaGrpc,
            XdsProtocol::Sotw => ApiType::Grpc,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Bootstrap(#[from] switchboard_proxy_xds::BootstrapError),
    #[error(
        "no {0} given: pass --{1} or a --bootstrap file \
         (`switchboard bootstrap proxy …` prints one)"
    )]
    Missing(&'static str, &'static str),
    #[error("{0}")]
    Tls(&'static str),
}

impl Args {
    /// The bootstrap: the file's, with every flag given overriding it.
    pub fn bootstrap(&self) -> Result<Bootstrap, CliError> {
        let file = match &self.bootstrap {
            Some(path) => Some(Bootstrap::from_file(path)?),
            None => None,
        };
        let xds_address = self
            .xds_address
            .clone()
            .or_else(|| file.as_ref().map(|b| b.xds_address.clone()))
            .ok_or(CliError::Missing("xDS address", "xds-address"))?;
        let node_id = self
            .node_id
            .clone()
            .or_else(|| file.as_ref().map(|b| b.node_id.clone()))
            .ok_or(CliError::Missing("node id", "node-id"))?;
        let mut metadata = file
            .as_ref()
            .map(|b| b.metadata.clone())
            .unwrap_or_default();
        metadata.extend(self.metadata.iter().cloned());
        let token_file = self
            .token_file
            .clone()
            .or_else(|| file.as_ref().and_then(|b| b.token_file.clone()));
        let xds_ca_file = self
            .xds_ca_file
            .clone()
            .or_else(|| file.as_ref().and_then(|b| b.xds_ca_file.clone()));
        let mut ads_config = file
            .as_ref()
            .map(|b| b.ads_config.clone())
            .unwrap_or_default();
        if let Some(p) = self.xds_protocol {
            ads_config.api_type = Some(p.into());
        }
        // The pair comes from the flags or from the file, never one from each.
        let (xds_client_cert_file, xds_client_key_file) = match &self.xds_client_cert_file {
            Some(cert) => (Some(cert.clone()), self.xds_client_key_file.clone()),
            None => file
                .map(|b| (b.xds_client_cert_file, b.xds_client_key_file))
                .unwrap_or_default(),
        };
        let bootstrap = Bootstrap {
            xds_address,
            node_id,
            metadata,
            token_file,
            xds_ca_file,
            xds_client_cert_file,
            xds_client_key_file,
            ads_config,
        };
        bootstrap.check_tls().map_err(CliError::Tls)?;
        Ok(bootstrap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_downstream_connections_defaults_to_50000_and_refuses_zero() {
        let args = Args::parse_from(["switchboard-proxy"]);
        assert_eq!(args.max_downstream_connections, 50_000);
        let args = Args::parse_from(["switchboard-proxy", "--max-downstream-connections", "7"]);
        assert_eq!(args.max_downstream_connections, 7);
        let err = Args::try_parse_from(["switchboard-proxy", "--max-downstream-connections", "0"])
            .unwrap_err();
        assert!(
            err.to_string().contains("--max-downstream-connections"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.yaml");
        std::fs::write(
            &path,
            "xds_address: http://a:1\nnode_id: n\nmetadata: {role: sidecar, service: x}\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "switchboard-proxy",
            "--bootstrap",
            path.to_str().unwrap(),
            "--xds-address",
            "http://b:2",
            "--metadata",
            "service=y",
        ]);
        let b = args.bootstrap().unwrap();
        assert_eq!(b.xds_address, "http://b:2");
        assert_eq!(b.node_id, "n");
        assert_eq!(b.metadata["role"], "sidecar");
        assert_eq!(b.metadata["service"], "y");
    }

    #[test]
    fn tls_to_the_control_plane_needs_https_and_a_ca() {
        let with = |extra: &[&str]| {
            let mut argv = vec!["switchboard-proxy", "--node-id", "n"];
            argv.extend_from_slice(extra);
            Args::parse_from(argv).bootstrap()
        };
        let b = with(&[
            "--xds-address",
            "https://cp:18000",
            "--xds-ca-file",
            "/ca.pem",
        ])
        .unwrap();
        assert_eq!(
            b.xds_ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        let e = with(&["--xds-address", "https://cp:18000"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("xds_ca_file"), "{e}");
        let e = with(&[
            "--xds-address",
            "http://cp:18000",
            "--xds-ca-file",
            "/ca.pem",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn the_xds_protocol_flag_overrides_the_bootstrap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.yaml");
        std::fs::write(
            &path,
            "xds_address: http://a:1\nnode_id: n\nads_config: {api_type: GRPC}\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let parse = |extra: &[&str]| {
            let mut argv = vec!["switchboard-proxy", "--bootstrap", file];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).unwrap().bootstrap().unwrap()
        };
        // The variable is the flag's too: the file speaks only when neither is given.
        if std::env::var_os("SWITCHBOARD_PROXY_XDS_PROTOCOL").is_none() {
            assert_eq!(parse(&[]).ads_config.api_type, Some(ApiType::Grpc));
        }
        assert_eq!(
            parse(&["--xds-protocol", "delta"]).ads_config.api_type,
            Some(ApiType::DeltaGrpc)
        );
        let flags_only = Args::try_parse_from([
            "switchboard-proxy",
            "--xds-address",
            "http://a:1",
            "--node-id",
            "n",
            "--xds-protocol",
            "sotw",
        ])
        .unwrap();
        assert_eq!(
            flags_only.bootstrap().unwrap().ads_config.api_type,
            Some(ApiType::Grpc)
        );
        let e = Args::try_parse_from(["switchboard-proxy", "--xds-protocol", "rest"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("delta") && e.contains("sotw"), "{e}");
    }

    #[test]
    fn missing_fields_are_named() {
        let args = Args::parse_from(["switchboard-proxy", "--node-id", "n"]);
        let e = args.bootstrap().unwrap_err().to_string();
        assert!(e.contains("--xds-address"), "{e}");
        assert!(Args::try_parse_from(["switchboard-proxy", "--metadata", "novalue"]).is_err());
    }
}
