//! `x-forwarded-client-cert` handling of an HTTP connection manager (Envoy's
//! `forward_client_cert_details` and `set_current_client_cert_details`).
//!
//! The header tells an application who called it over mTLS. Since any client can send the
//! header, the default (`SANITIZE`) removes it; only a proxy that verified the caller's
//! certificate sets it.

use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as PbHcm;
use switchboard_xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};

use super::{ConfigError, Path, check_fields};

/// What to do with `x-forwarded-client-cert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardClientCert {
    /// Remove it (Envoy's default).
    #[default]
    Sanitize,
    /// Keep the client's only on mTLS connections; remove it otherwise.
    ForwardOnly,
    /// On mTLS, append this connection's element to the client's; remove it otherwise.
    AppendForward,
    /// On mTLS, replace it with this connection's element; remove it otherwise.
    SanitizeSet,
    /// Keep whatever the client sent.
    AlwaysForwardOnly,
}

/// Which fields of the client certificate an element carries, besides `By` and `Hash`,
/// which are always there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientCertDetails {
    pub subject: bool,
    pub uri: bool,
    pub dns: bool,
}

/// The HCM's `x-forwarded-client-cert` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Xfcc {
    pub mode: ForwardClientCert,
    pub details: ClientCertDetails,
}

/// Reads the two HCM fields.
pub(crate) fn xfcc(h: &PbHcm, path: &Path) -> Result<Xfcc, ConfigError> {
    let p = path.field("forward_client_cert_details");
    let mode = match ForwardClientCertDetails::try_from(h.forward_client_cert_details) {
        Ok(ForwardClientCertDetails::Sanitize) => ForwardClientCert::Sanitize,
        Ok(ForwardClientCertDetails::ForwardOnly) => ForwardClientCert::ForwardOnly,
        Ok(ForwardClientCertDetails::AppendForward) => ForwardClientCert::AppendForward,
        Ok(ForwardClientCertDetails::SanitizeSet) => ForwardClientCert::SanitizeSet,
        Ok(ForwardClientCertDetails::AlwaysForwardOnly) => ForwardClientCert::AlwaysForwardOnly,
        Err(_) => {
            return Err(p.err(format!("unknown value {}", h.forward_client_cert_details)));
        }
    };
    let details = match &h.set_current_client_cert_details {
        None => ClientCertDetails::default(),
        Some(d) => details(d, &path.field("set_current_client_cert_details"))?,
    };
    Ok(Xfcc { mode, details })
}

fn details(d: &SetCurrentClientCertDetails, path: &Path) -> Result<ClientCertDetails, ConfigError> {
    check_fields(d, &["subject", "uri", "dns"], path).map_err(|_| {
        path.err("only subject, uri and dns are supported (cert and chain are not)")
    })?;
    Ok(ClientCertDetails {
        subject: d.subject.as_ref().is_some_and(|b| b.value),
        uri: d.uri,
        dns: d.dns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(h: &PbHcm) -> Result<Xfcc, ConfigError> {
        xfcc(h, &Path::root("listener", "l"))
    }

    #[test]
    fn defaults_to_sanitize_and_reads_sanitize_set_with_uri() {
        assert_eq!(read(&PbHcm::default()).unwrap(), Xfcc::default());
        let h = PbHcm {
            forward_client_cert_details: ForwardClientCertDetails::SanitizeSet as i32,
            set_current_client_cert_details: Some(SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let x = read(&h).unwrap();
        assert_eq!(x.mode, ForwardClientCert::SanitizeSet);
        assert!(x.details.uri && !x.details.dns && !x.details.subject);
    }

    #[test]
    fn refuses_what_it_cannot_set() {
        let h = PbHcm {
            set_current_client_cert_details: Some(SetCurrentClientCertDetails {
                cert: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = read(&h).unwrap_err().to_string();
        assert!(e.contains("set_current_client_cert_details"), "{e}");
        let h = PbHcm {
            forward_client_cert_details: 42,
            ..Default::default()
        };
        assert!(read(&h).is_err());
    }
}
