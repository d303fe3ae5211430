//! `x-forwarded-client-cert`, as Envoy writes it: one element per hop, `Key=value` pairs
//! separated by `;`, elements separated by `,`, values quoted when they hold `,;="`.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use switchboard_proxy_xds::config::xfcc::{ForwardClientCert, Xfcc};

use crate::headers;
use crate::tls::PeerIdentity;

const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Applies the connection manager's XFCC setting to a request's headers; `peer` is the
/// verified client certificate of an mTLS connection.
pub(super) fn apply(headers: &mut HeaderMap, xfcc: &Xfcc, peer: Option<&PeerIdentity>) {
    let element = || peer.and_then(|p| HeaderValue::from_str(&element(p, xfcc)).ok());
    match (xfcc.mode, peer) {
        (ForwardClientCert::AlwaysForwardOnly, _) | (ForwardClientCert::ForwardOnly, Some(_)) => {}
        (ForwardClientCert::SanitizeSet, Some(_)) => match element() {
            Some(v) => drop(headers.insert(XFCC, v)),
            None => headers::remove(headers, &XFCC),
        },
        (ForwardClientCert::AppendForward, Some(_)) => {
            let previous: Vec<String> = headers
                .get_all(XFCC)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_owned))
                .collect();
            headers.remove(XFCC);
            let Some(own) = element() else { return };
            let joined = previous
                .into_iter()
                .chain(own.to_str().ok().map(str::to_owned))
                .collect::<Vec<_>>()
                .join(",");
            if let Ok(v) = HeaderValue::from_str(&joined) {
                headers.insert(XFCC, v);
            }
        }
        // Most requests: a plaintext connection (or an mTLS one in `sanitize`), and no
        // header to take out.
        _ => headers::remove(headers, &XFCC),
    }
}

/// This hop's element: `By` and `Hash` always, then the configured details.
fn element(peer: &PeerIdentity, xfcc: &Xfcc) -> String {
    let mut parts = Vec::new();
    if let Some(by) = &peer.local_uri {
        parts.push(format!("By={}", quoted(by)));
    }
    parts.push(format!("Hash={}", peer.hash));
    if xfcc.details.subject {
        // Envoy always quotes the subject.
        parts.push(format!("Subject=\"{}\"", peer.subject.replace('"', "\\\"")));
    }
    if xfcc.details.uri {
        // Envoy writes the first URI SAN.
        if let Some(uri) = peer.uri_sans.first() {
            parts.push(format!("URI={}", quoted(uri)));
        }
    }
    if xfcc.details.dns {
        for d in &peer.dns_sans {
            parts.push(format!("DNS={}", quoted(d)));
        }
    }
    parts.join(";")
}

fn quoted(v: &str) -> String {
    if v.contains([',', ';', '=', '"']) {
        format!("\"{}\"", v.replace('"', "\\\""))
    } else {
        v.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proxy_xds::config::xfcc::ClientCertDetails;

    fn peer() -> PeerIdentity {
        PeerIdentity {
            uri_sans: vec!["spiffe://acme.local/mesh/prod/service/web".into()],
            dns_sans: vec!["web.local".into()],
            subject: "CN=web".into(),
            hash: "ab12".into(),
            local_uri: Some("spiffe://acme.local/mesh/prod/service/pay".into()),
        }
    }

    fn with(mode: ForwardClientCert, uri: bool) -> Xfcc {
        Xfcc {
            mode,
            details: ClientCertDetails {
                uri,
                ..Default::default()
            },
        }
    }

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(XFCC, HeaderValue::from_static("URI=spiffe://evil"));
        h
    }

    #[test]
    fn sanitize_set_replaces_a_spoofed_header_with_the_verified_peer() {
        let mut h = spoofed();
        apply(
            &mut h,
            &with(ForwardClientCert::SanitizeSet, true),
            Some(&peer()),
        );
        assert_eq!(
            h.get(XFCC).unwrap(),
            "By=spiffe://acme.local/mesh/prod/service/pay;Hash=ab12;\
             URI=spiffe://acme.local/mesh/prod/service/web"
        );
        // Without a client certificate, nothing is vouched for: the header goes.
        let mut h = spoofed();
        apply(&mut h, &with(ForwardClientCert::SanitizeSet, true), None);
        assert!(h.get(XFCC).is_none());
    }

    #[test]
    fn each_mode_does_what_envoy_does() {
        let mut h = spoofed();
        apply(&mut h, &Xfcc::default(), Some(&peer()));
        assert!(h.get(XFCC).is_none(), "sanitize is the default");
        let mut h = spoofed();
        apply(
            &mut h,
            &with(ForwardClientCert::ForwardOnly, false),
            Some(&peer()),
        );
        assert_eq!(h.get(XFCC).unwrap(), "URI=spiffe://evil");
        let mut h = spoofed();
        apply(&mut h, &with(ForwardClientCert::ForwardOnly, false), None);
        assert!(h.get(XFCC).is_none());
        let mut h = spoofed();
        apply(
            &mut h,
            &with(ForwardClientCert::AlwaysForwardOnly, false),
            None,
        );
        assert_eq!(h.get(XFCC).unwrap(), "URI=spiffe://evil");
        let mut h = spoofed();
        let mut x = with(ForwardClientCert::AppendForward, false);
        x.details.dns = true;
        x.details.subject = true;
        apply(&mut h, &x, Some(&peer()));
        assert_eq!(
            h.get(XFCC).unwrap(),
            "URI=spiffe://evil,By=spiffe://acme.local/mesh/prod/service/pay;Hash=ab12;\
             Subject=\"CN=web\";DNS=web.local"
        );
    }
}
