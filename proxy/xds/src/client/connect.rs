//! Connecting to the control plane, the same for both protocols: a new channel per stream
//! (TLS and a client certificate read from their files each time), and the token as
//! `authorization` metadata.

use std::time::Duration;

use switchboard_xds_proto::service::ads::AggregatedDiscoveryServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::bootstrap::Bootstrap;

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("cannot read the token file {path}: {source} (hint: is the proxy token mounted?)")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read xds_ca_file {path}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    /// Names the file only: the key's contents never reach a message.
    #[error("cannot read {what} {path}: {source}")]
    ClientCert {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("invalid xds_address {address:?}: {source}")]
    Address {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {address}: {source} (hint: is the control plane reachable?)")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("the stream failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("the token is not valid gRPC metadata")]
    BadToken,
    #[error("the stream closed")]
    Closed,
}

/// The ADS client of a new connection, and the `authorization` value to send (if any).
pub(crate) async fn connect(
    bootstrap: &Bootstrap,
    connect_timeout: Duration,
) -> Result<
    (
        AggregatedDiscoveryServiceClient<Channel>,
        Option<MetadataValue<tonic::metadata::Ascii>>,
    ),
    StreamError,
> {
    let address = bootstrap.xds_address.clone();
    let authorization = match &bootstrap.token_file {
        Some(path) => {
            let token =
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| StreamError::Token {
                        path: path.display().to_string(),
                        source,
                    })?;
            let value = format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| StreamError::BadToken)?;
            Some(value)
        }
        None => None,
    };
    // A new connection per stream: a server that went away must not be reached through an
    // old HTTP/2 connection.
    let mut endpoint =
        Endpoint::from_shared(address.clone()).map_err(|source| StreamError::Address {
            address: address.clone(),
            source,
        })?;
    if let Some(path) = &bootstrap.xds_ca_file {
        // Read on every connect, so that a rotated CA applies to the next stream.
        let pem = tokio::fs::read(path)
            .await
            .map_err(|source| StreamError::Ca {
                path: path.display().to_string(),
                source,
            })?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let (Some(cert), Some(key)) = (
            &bootstrap.xds_client_cert_file,
            &bootstrap.xds_client_key_file,
        ) {
            // Also read on every connect: a renewed certificate applies to the next stream.
            let read = |what, path: &std::path::PathBuf| {
                let path = path.clone();
                async move {
                    tokio::fs::read(&path)
                        .await
                        .map_err(|source| StreamError::ClientCert {
                            what,
                            path: path.display().to_string(),
                            source,
                        })
                }
            };
            let cert = read("xds_client_cert_file", cert).await?;
            let key = read("xds_client_key_file", key).await?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|source| StreamError::Address {
                address: address.clone(),
                source,
            })?;
    }
    let channel = endpoint
        .connect_timeout(connect_timeout)
        // Notices a control plane that vanished without closing the connection.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|source| StreamError::Connect { address, source })?;
    let client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    Ok((client, authorization))
}
