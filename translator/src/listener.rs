//! Listeners: proxyless API listeners (named after host names), the sidecars' outbound HTTP
//! listener, and gateway listeners.

use switchboard_model::GatewaySpec;
use switchboard_model::spec::GatewayProtocol;

use crate::common::socket_address;
use crate::filters::{
    forward_proxy_http1, hcm_filter, hcm_rds, http_filters, tcp_proxy_filter, tls_inspector,
};
use crate::gateway_tls::{SniChain, filter_chains};
use crate::names;
use crate::pb::envoy::config::core::v3::TrafficDirection;
use crate::pb::envoy::config::listener::v3::{ApiListener, FilterChain, Listener};
use switchboard_xds_proto::pack;

/// What proxyless gRPC asks for: a listener without an address whose `api_listener` is an
/// HTTP connection manager taking route configuration `route_config` over ADS, router last.
pub(crate) fn api_listener(name: &str, route_config: &str, with_fault: bool) -> Listener {
    let hcm = hcm_rds(name, route_config, http_filters(with_fault));
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&hcm)),
        }),
        ..Default::default()
    }
}

/// The sidecars' outbound listener on 127.0.0.1:15001, serving route configuration
/// [`names::OUTBOUND`]. It accepts proxy-style absolute URIs, so applications can use it as
/// `HTTP_PROXY`, and plain requests with a `Host` header.
pub(crate) fn outbound_listener(with_fault: bool) -> Listener {
    let mut hcm = hcm_rds(names::OUTBOUND, names::OUTBOUND, http_filters(with_fault));
    hcm.http_protocol_options = Some(forward_proxy_http1());
    Listener {
        name: names::OUTBOUND.to_owned(),
        address: Some(socket_address(
            names::OUTBOUND_ADDRESS,
            names::OUTBOUND_PORT,
        )),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            filters: vec![hcm_filter(&hcm)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A gateway's listener on 0.0.0.0:port: HTTP with route configuration `gateway/{name}`, or
/// TCP proxying to the gateway's service; behind TLS with one filter chain per certificate
/// when `tls` has chains (see [`crate::gateway_tls`]). `None` for a TCP gateway without a
/// service, which validation rejects and Envoy would too (a listener needs a filter chain).
pub(crate) fn gateway_listener(
    name: &str,
    spec: &GatewaySpec,
    with_fault: bool,
    tls: &[SniChain],
) -> Option<Listener> {
    let listener_name = names::gateway(name);
    let filter = match spec.protocol {
        GatewayProtocol::Http => hcm_filter(&hcm_rds(
            &listener_name,
            &listener_name,
            http_filters(with_fault),
        )),
        GatewayProtocol::Tcp => {
            let service = spec.service.as_deref()?;
            tcp_proxy_filter(&listener_name, &names::cluster(service))
        }
    };
    let (filter_chains, listener_filters) = if tls.is_empty() {
        let plain = FilterChain {
            filters: vec![filter],
            ..Default::default()
        };
        (vec![plain], vec![])
    } else {
        let alpn: &[&str] = match spec.protocol {
            GatewayProtocol::Http => &["h2", "http/1.1"],
            GatewayProtocol::Tcp => &[],
        };
        (filter_chains(tls, &filter, alpn), vec![tls_inspector()])
    };
    Some(Listener {
        address: Some(socket_address("0.0.0.0", spec.port)),
        traffic_direction: TrafficDirection::Inbound as i32,
        filter_chains,
        listener_filters,
        name: listener_name,
        ..Default::default()
    })
}
