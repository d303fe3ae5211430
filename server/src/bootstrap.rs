//! `switchboard bootstrap`: prints a ready bootstrap for one node, checked with the same rules
//! the xDS server applies at connect time, so a bootstrap it prints is never refused for its
//! node id or metadata.
//!
//! - `bootstrap proxy`: YAML for `switchboard-proxy --bootstrap` (sidecar or gateway).
//! - `bootstrap grpc`: JSON for proxyless gRPC clients (`GRPC_XDS_BOOTSTRAP`), with
//!   `node.locality`, which grpc-js-xds requires.
//!
//! `bootstrap grpc` always names the listener xDS-enabled gRPC servers ask for
//! (`server_listener_resource_name_template`, gRFC A36). With `--certificate-dir` it also
//! defines certificate provider instance `default` (a `file_watcher` over that directory's
//! files, gRFC A29) and says so in the node metadata (`certificate_providers`), so that the
//! control plane sends the node the clusters and server listeners with mesh mTLS.
//!
//! With `--xds-ca-file` either connects to a control plane serving TLS (`tls_cert_file`):
//! the proxy verifies the xDS server against that CA; a gRPC client gets gRFC A65's `tls`
//! channel credentials and, with `--jwt-token-file`, gRFC A97's `jwt_token_file` call
//! credentials (a JWT proxy token: `POST …/proxy-tokens {"format": "jwt"}`). With
//! `--xds-client-cert-file` and `--xds-client-key-file` the node presents a client
//! certificate (a workload certificate of the mesh CA) that authenticates it without a token:
//! the proxy's `xds_client_cert_file`/`xds_client_key_file`, gRPC's A65 `tls`
//! `certificate_file`/`private_key_file`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use switchboard_proxy_xds::Bootstrap as ProxyBootstrap;
use switchboard_translator::names;
use switchboard_xds_server::NodeId;
use switchboard_xds_server::node::{CERTIFICATE_PROVIDERS_FIELD, NodeError, node_role};

#[derive(Debug, Subcommand)]
pub enum Bootstrap {
    /// A bootstrap for switchboard-proxy (YAML), as a sidecar or a gateway.
    Proxy(ProxyArgs),
    /// A GRPC_XDS_BOOTSTRAP file for proxyless gRPC clients (JSON).
    Grpc(GrpcArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub mesh: String,
    /// The node's own name, unique within the mesh (a pod or host name).
    #[arg(long)]
    pub node: String,
    /// Locality region and zone of the node, e.g. --region eu-west1 --zone eu-west1-b.
    #[arg(long, default_value = "")]
    pub region: String,
    #[arg(long, default_value = "")]
    pub zone: String,
}

/// Where a proxy looks for its token when the bootstrap names no other file.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/switchboard/proxy-token";

/// A client certificate for TLS to the control plane (both files or neither).
#[derive(Debug, Args)]
pub struct ClientCertArgs {
    /// PEM certificate chain the node presents to the control plane over TLS: a workload
    /// certificate issued by the mesh CA authenticates it as its service, without a token
    /// (needs --xds-ca-file).
    #[arg(long, requires = "xds_client_key_file")]
    pub xds_client_cert_file: Option<PathBuf>,
    /// The PEM private key of --xds-client-cert-file.
    #[arg(long, requires = "xds_client_cert_file")]
    pub xds_client_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Sidecar,
    Gateway,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    #[arg(long, value_enum)]
    pub role: Role,
    /// Sidecar: the service whose application this proxy fronts.
    #[arg(long)]
    pub service: Option<String>,
    /// Sidecar: the port the application listens on, on 127.0.0.1.
    #[arg(long)]
    pub app_port: Option<u16>,
    /// Sidecar: where mesh traffic arrives (default 15006).
    #[arg(long)]
    pub inbound_port: Option<u16>,
    /// Sidecar: where the application's outbound requests go (default 15001).
    #[arg(long)]
    pub outbound_port: Option<u16>,
    /// Gateway: the gateway resource this proxy serves.
    #[arg(long)]
    pub gateway: Option<String>,
    /// The control plane's xDS address as the proxy reaches it (https://… with TLS).
    #[arg(long, default_value = "http://127.0.0.1:18000")]
    pub xds_address: String,
    /// Where the proxy will find its token (POST /v1/tenants/{t}/proxy-tokens); default
    /// /var/run/switchboard/proxy-token, or none with a client certificate.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates of the control plane's TLS certificate, as the proxy will read
    /// them; needs an https:// --xds-address.
    #[arg(long)]
    pub xds_ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub client_cert: ClientCertArgs,
}

#[derive(Debug, Args)]
pub struct GrpcArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The control plane's xDS address as host:port.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds_address: String,
    /// Connect over TLS, verifying the control plane against these PEM CA certificates
    /// (gRFC A65 `tls` channel credentials).
    #[arg(long)]
    pub xds_ca_file: Option<PathBuf>,
    /// A file holding a JWT proxy token, sent as `authorization: Bearer` and re-read as its
    /// `exp` nears (gRFC A97 `jwt_token_file` call credentials; needs --xds-ca-file, and
    /// GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true in the client's environment).
    #[arg(long)]
    pub jwt_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub client_cert: ClientCertArgs,
    /// Mesh mTLS for this client or xDS-enabled server (gRFC A29): a directory holding
    /// `certificate.pem` (the workload's certificate chain from the mesh CA), `private_key.pem`
    /// (its PKCS#8 key) and `ca_certificates.pem` (the mesh's roots), which gRPC re-reads
    /// (see --certificate-refresh-secs). Keep them fresh: renew before the certificate
    /// expires.
    #[arg(long)]
    pub certificate_dir: Option<PathBuf>,
    /// How often gRPC re-reads the files of --certificate-dir, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub certificate_refresh_secs: u64,
}

/// The files `bootstrap grpc --certificate-dir` points gRPC's file watcher at.
pub const CERTIFICATE_FILE: &str = "certificate.pem";
pub const PRIVATE_KEY_FILE: &str = "private_key.pem";
pub const CA_CERTIFICATE_FILE: &str = "ca_certificates.pem";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("--{flag} is only for --role {role}")]
    Misplaced {
        flag: &'static str,
        role: &'static str,
    },
    #[error("cannot render the bootstrap: {0}")]
    Render(String),
    #[error("{0}")]
    Tls(&'static str),
}

/// The bootstrap text for `cmd`, or why the node would be refused.
pub fn render(cmd: &Bootstrap) -> Result<String, BootstrapError> {
    match cmd {
        Bootstrap::Proxy(a) => proxy(a),
        Bootstrap::Grpc(a) => grpc(a),
    }
}

fn node_id(a: &NodeArgs) -> Result<String, BootstrapError> {
    let id = format!("tenants/{}/meshes/{}/nodes/{}", a.tenant, a.mesh, a.node);
    NodeId::parse(&id)?;
    Ok(id)
}

fn proxy(a: &ProxyArgs) -> Result<String, BootstrapError> {
    let id = node_id(&a.node)?;
    let mut metadata = BTreeMap::new();
    let sidecar_only = [
        ("service", a.service.is_some()),
        ("app-port", a.app_port.is_some()),
        ("inbound-port", a.inbound_port.is_some()),
        ("outbound-port", a.outbound_port.is_some()),
    ];
    match a.role {
        Role::Sidecar => {
            if a.gateway.is_some() {
                return Err(BootstrapError::Misplaced {
                    flag: "gateway",
                    role: "gateway",
                });
            }
            metadata.insert("role".to_owned(), "sidecar".to_owned());
            let ports = [
                ("app_port", a.app_port),
                ("inbound_port", a.inbound_port),
                ("outbound_port", a.outbound_port),
            ];
            for (key, port) in ports {
                if let Some(p) = port {
                    metadata.insert(key.to_owned(), p.to_string());
                }
            }
            if let Some(s) = &a.service {
                metadata.insert("service".to_owned(), s.clone());
            }
        }
        Role::Gateway => {
            if let Some((flag, _)) = sidecar_only.iter().find(|(_, set)| *set) {
                return Err(BootstrapError::Misplaced {
                    flag,
                    role: "sidecar",
                });
            }
            metadata.insert("role".to_owned(), "gateway".to_owned());
            if let Some(g) = &a.gateway {
                metadata.insert("gateway".to_owned(), g.clone());
            }
        }
    }
    for (key, value) in [("region", &a.node.region), ("zone", &a.node.zone)] {
        if !value.is_empty() {
            metadata.insert(key.to_owned(), value.clone());
        }
    }
    // A client certificate authenticates the proxy; a token file only if asked for too.
    let cert = &a.client_cert;
    let token_file = a.token_file.clone().or_else(|| {
        cert.xds_client_cert_file
            .is_none()
            .then(|| PathBuf::from(DEFAULT_TOKEN_FILE))
    });
    // The very struct the proxy parses, so the printed file is what it reads.
    let bootstrap = ProxyBootstrap {
        xds_address: a.xds_address.clone(),
        node_id: id,
        metadata,
        token_file: token_file.clone(),
        xds_ca_file: a.xds_ca_file.clone(),
        xds_client_cert_file: cert.xds_client_cert_file.clone(),
        xds_client_key_file: cert.xds_client_key_file.clone(),
        ads_config: Default::default(),
    };
    // The xDS server's own check: a missing service or clashing ports fail here, not at connect.
    node_role(&bootstrap.node())?;
    bootstrap.check_tls().map_err(BootstrapError::Tls)?;
    let yaml =
        serde_yaml_ng::to_string(&bootstrap).map_err(|e| BootstrapError::Render(e.to_string()))?;
    let how = match (&token_file, &cert.xds_client_cert_file) {
        (Some(f), _) => format!(
            "# Put a proxy token of tenant {t} in {f}:\n\
             #   curl -X POST …/v1/tenants/{t}/proxy-tokens -H 'authorization: Bearer <api key>'\n",
            t = a.node.tenant,
            f = f.display(),
        ),
        (None, Some(c)) => format!(
            "# Authenticates with the client certificate in {c} (issued by the mesh CA).\n",
            c = c.display(),
        ),
        (None, None) => String::new(),
    };
    Ok(format!(
        "# switchboard-proxy --bootstrap <this file>\n{how}{yaml}"
    ))
}

fn grpc(a: &GrpcArgs) -> Result<String, BootstrapError> {
    let id = node_id(&a.node)?;
    let cert = &a.client_cert;
    let channel_creds = match (
        &a.xds_ca_file,
        &cert.xds_client_cert_file,
        &cert.xds_client_key_file,
    ) {
        (Some(ca), Some(c), Some(k)) => json!([{"type": "tls", "config": {
            "ca_certificate_file": ca,
            "certificate_file": c,
            "private_key_file": k,
        }}]),
        (Some(ca), _, _) => json!([{"type": "tls", "config": {"ca_certificate_file": ca}}]),
        (None, None, None) => json!([{"type": "insecure"}]),
        (None, _, _) => {
            return Err(BootstrapError::Tls(
                "--xds-client-cert-file needs --xds-ca-file: a client certificate is presented only over TLS",
            ));
        }
    };
    let mut server = json!({
        "server_uri": a.xds_address,
        "channel_creds": channel_creds,
        "server_features": ["xds_v3"],
    });
    if let Some(jwt) = &a.jwt_token_file {
        if a.xds_ca_file.is_none() {
            return Err(BootstrapError::Tls(
                "--jwt-token-file needs --xds-ca-file: gRPC sends call credentials only over TLS",
            ));
        }
        server["call_creds"] =
            json!([{"type": "jwt_token_file", "config": {"jwt_token_file": jwt}}]);
    }
    let mut body = json!({
        "xds_servers": [server],
        "node": {
            "id": id,
            "locality": {"region": a.node.region, "zone": a.node.zone},
        },
        "server_listener_resource_name_template": names::SERVER_LISTENER_TEMPLATE,
    });
    if let Some(dir) = &a.certificate_dir {
        let instance = names::CERTIFICATE_PROVIDER_INSTANCE;
        body["certificate_providers"] = json!({instance: {
            "plugin_name": "file_watcher",
            "config": {
                "certificate_file": dir.join(CERTIFICATE_FILE),
                "private_key_file": dir.join(PRIVATE_KEY_FILE),
                "ca_certificate_file": dir.join(CA_CERTIFICATE_FILE),
                "refresh_interval": format!("{}s", a.certificate_refresh_secs),
            },
        }});
        body["node"]["metadata"] = json!({CERTIFICATE_PROVIDERS_FIELD: [instance]});
    }
    serde_json::to_string_pretty(&body)
        .map(|s| s + "\n")
        .map_err(|e| BootstrapError::Render(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Bootstrap,
    }

    fn run(args: &[&str]) -> Result<String, BootstrapError> {
        let mut argv = vec!["bootstrap"];
        argv.extend_from_slice(args);
        render(&Cli::parse_from(argv).cmd)
    }

    #[test]
    fn a_sidecar_bootstrap_parses_as_the_proxy_reads_it() {
        let text = run(&[
            "proxy",
            "--tenant",
            "acme",
            "--mesh",
            "prod",
            "--node",
            "pay-1",
            "--role",
            "sidecar",
            "--service",
            "payments",
            "--app-port",
            "8080",
            "--outbound-port",
            "25001",
        ])
        .unwrap();
        let b = ProxyBootstrap::parse(&text).unwrap();
        assert_eq!(b.node_id, "tenants/acme/meshes/prod/nodes/pay-1");
        assert_eq!(b.metadata["role"], "sidecar");
        assert_eq!(b.metadata["app_port"], "8080");
        assert_eq!(b.metadata["outbound_port"], "25001");
        assert_eq!(
            b.token_file.as_deref(),
            Some(std::path::Path::new("/var/run/switchboard/proxy-token"))
        );
    }

    #[test]
    fn refused_nodes_are_refused_here() {
        const NODE: [&str; 7] = ["proxy", "--tenant", "acme", "--mesh", "prod", "--node", "x"];
        let cases: [(&str, &[&str], &str); 3] = [
            (
                "acme",
                &["--role", "sidecar", "--service", "payments"],
                "app_port",
            ),
            (
                "Acme",
                &["--role", "gateway", "--gateway", "edge"],
                "malformed",
            ),
            (
                "acme",
                &["--role", "gateway", "--gateway", "edge", "--app-port", "1"],
                "--app-port",
            ),
        ];
        for (tenant, rest, want) in cases {
            let mut args = NODE.to_vec();
            args[2] = tenant;
            args.extend_from_slice(rest);
            let e = run(&args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn grpc_bootstrap_has_a_locality() {
        let text = run(&[
            "grpc", "--tenant", "acme", "--mesh", "prod", "--node", "c-1", "--zone", "z1",
        ])
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["node"]["locality"]["zone"], "z1");
        assert_eq!(v["xds_servers"][0]["server_uri"], "127.0.0.1:18000");
        assert_eq!(v["xds_servers"][0]["channel_creds"][0]["type"], "insecure");
        assert!(v["xds_servers"][0].get("call_creds").is_none());
    }

    #[test]
    fn grpc_bootstrap_with_certificate_providers() {
        let plain = run(&["grpc", "--tenant", "acme", "--mesh", "prod", "--node", "c"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(
            v["server_listener_resource_name_template"],
            "grpc/server?xds.resource.listening_address=%s"
        );
        assert!(v.get("certificate_providers").is_none());
        assert!(v["node"].get("metadata").is_none());
        let text = run(&[
            "grpc",
            "--tenant",
            "acme",
            "--mesh",
            "prod",
            "--node",
            "c",
            "--certificate-dir",
            "/run/mtls",
            "--certificate-refresh-secs",
            "5",
        ])
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["certificate_providers"],
            json!({"default": {"plugin_name": "file_watcher", "config": {
                "certificate_file": "/run/mtls/certificate.pem",
                "private_key_file": "/run/mtls/private_key.pem",
                "ca_certificate_file": "/run/mtls/ca_certificates.pem",
                "refresh_interval": "5s",
            }}})
        );
        assert_eq!(
            v["node"]["metadata"],
            json!({"certificate_providers": ["default"]})
        );
        // The xDS server reads the metadata as gRPC sends it.
        use switchboard_xds_proto::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
        let names = v["node"]["metadata"]["certificate_providers"]
            .as_array()
            .unwrap();
        let list = names.iter().map(|n| Value {
            kind: Some(Kind::StringValue(n.as_str().unwrap().to_owned())),
        });
        let node = switchboard_xds_proto::Node {
            metadata: Some(Struct {
                fields: [(
                    CERTIFICATE_PROVIDERS_FIELD.to_owned(),
                    Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: list.collect(),
                        })),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        };
        assert!(switchboard_xds_server::node::has_certificate_providers(&node).unwrap());
    }

    #[test]
    fn grpc_bootstrap_over_tls_with_a_jwt() {
        const NODE: [&str; 7] = ["grpc", "--tenant", "acme", "--mesh", "prod", "--node", "c"];
        let mut args = NODE.to_vec();
        args.extend([
            "--xds-ca-file",
            "/etc/sb/ca.pem",
            "--jwt-token-file",
            "/run/jwt",
        ]);
        let v: serde_json::Value = serde_json::from_str(&run(&args).unwrap()).unwrap();
        let server = &v["xds_servers"][0];
        assert_eq!(
            server["channel_creds"],
            json!([{"type": "tls", "config": {"ca_certificate_file": "/etc/sb/ca.pem"}}])
        );
        assert_eq!(
            server["call_creds"],
            json!([{"type": "jwt_token_file", "config": {"jwt_token_file": "/run/jwt"}}])
        );
        let mut plaintext = NODE.to_vec();
        plaintext.extend(["--jwt-token-file", "/run/jwt"]);
        let e = run(&plaintext).unwrap_err().to_string();
        assert!(e.contains("--xds-ca-file"), "{e}");
    }

    #[test]
    fn proxy_bootstrap_over_tls() {
        let gateway = ["proxy", "--tenant", "acme", "--mesh", "prod", "--node", "g"];
        let mut args = gateway.to_vec();
        args.extend(["--role", "gateway", "--gateway", "edge"]);
        args.extend([
            "--xds-address",
            "https://cp.example:18000",
            "--xds-ca-file",
            "/etc/sb/ca.pem",
        ]);
        let b = ProxyBootstrap::parse(&run(&args).unwrap()).unwrap();
        assert_eq!(
            b.xds_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/sb/ca.pem"))
        );
        assert_eq!(b.xds_address, "https://cp.example:18000");
        // A CA for a plaintext address, or an https address without a CA: refused here.
        let mut plaintext = gateway.to_vec();
        plaintext.extend([
            "--role",
            "gateway",
            "--gateway",
            "edge",
            "--xds-ca-file",
            "/etc/sb/ca.pem",
        ]);
        assert!(
            run(&plaintext)
                .unwrap_err()
                .to_string()
                .contains("https://")
        );
        let mut no_ca = gateway.to_vec();
        no_ca.extend(["--role", "gateway", "--gateway", "edge"]);
        no_ca.extend(["--xds-address", "https://cp.example:18000"]);
        assert!(run(&no_ca).unwrap_err().to_string().contains("xds_ca_file"));
    }

    const CLIENT_CERT: [&str; 4] = [
        "--xds-client-cert-file",
        "/etc/sb/pay.pem",
        "--xds-client-key-file",
        "/etc/sb/pay-key.pem",
    ];

    #[test]
    fn proxy_bootstrap_with_a_client_certificate_needs_no_token() {
        let mut args = vec!["proxy", "--tenant", "acme", "--mesh", "prod", "--node", "p"];
        args.extend([
            "--role",
            "sidecar",
            "--service",
            "pay",
            "--app-port",
            "8080",
        ]);
        args.extend([
            "--xds-address",
            "https://cp:18000",
            "--xds-ca-file",
            "/ca.pem",
        ]);
        args.extend(CLIENT_CERT);
        let text = run(&args).unwrap();
        assert!(
            text.contains("client certificate in /etc/sb/pay.pem"),
            "{text}"
        );
        let b = ProxyBootstrap::parse(&text).unwrap();
        assert_eq!(b.token_file, None);
        assert_eq!(
            b.xds_client_cert_file.as_deref(),
            Some(std::path::Path::new("/etc/sb/pay.pem"))
        );
        assert_eq!(
            b.xds_client_key_file.as_deref(),
            Some(std::path::Path::new("/etc/sb/pay-key.pem"))
        );
        // Only over TLS.
        let mut plaintext = vec!["proxy", "--tenant", "acme", "--mesh", "prod", "--node", "p"];
        plaintext.extend([
            "--role",
            "sidecar",
            "--service",
            "pay",
            "--app-port",
            "8080",
        ]);
        plaintext.extend(CLIENT_CERT);
        assert!(
            run(&plaintext)
                .unwrap_err()
                .to_string()
                .contains("https://")
        );
        // One file without the other is a usage error.
        let mut argv = vec![
            "bootstrap",
            "proxy",
            "--tenant",
            "a",
            "--mesh",
            "m",
            "--node",
            "n",
        ];
        argv.extend(["--role", "gateway", "--xds-client-cert-file", "/c.pem"]);
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn grpc_bootstrap_with_a_client_certificate() {
        let mut args = vec!["grpc", "--tenant", "acme", "--mesh", "prod", "--node", "g"];
        args.extend(["--xds-ca-file", "/ca.pem"]);
        args.extend(CLIENT_CERT);
        let v: serde_json::Value = serde_json::from_str(&run(&args).unwrap()).unwrap();
        assert_eq!(
            v["xds_servers"][0]["channel_creds"],
            json!([{"type": "tls", "config": {
                "ca_certificate_file": "/ca.pem",
                "certificate_file": "/etc/sb/pay.pem",
                "private_key_file": "/etc/sb/pay-key.pem",
            }}])
        );
        let mut no_ca = vec!["grpc", "--tenant", "acme", "--mesh", "prod", "--node", "g"];
        no_ca.extend(CLIENT_CERT);
        let e = run(&no_ca).unwrap_err().to_string();
        assert!(e.contains("needs --xds-ca-file"), "{e}");
    }
}
