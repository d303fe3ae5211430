//! Building meshes from JSON specs, and reading resources back.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use switchboard_model::{EndpointSpec, GatewaySpec, RouteSpec, ServiceSpec, TrustBundle};
use switchboard_translator::pb::envoy::config::listener::v3::{Listener, filter};
use switchboard_translator::pb::envoy::config::route::v3::{Route, RouteConfiguration};
use switchboard_translator::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use switchboard_translator::pb::google::protobuf::Any;
use switchboard_translator::{MeshConfig, MeshResources, translate};

pub fn spec<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A mesh from `(name, spec)` lists of each kind.
#[derive(Default)]
pub struct Mesh {
    pub config: MeshConfig,
}

impl Mesh {
    pub fn new() -> Self {
        let mut m = Self::default();
        m.config.tenant = "acme".into();
        m.config.mesh = "prod".into();
        m
    }
    pub fn service(mut self, name: &str, v: Value) -> Self {
        self.config
            .services
            .insert(name.into(), spec::<ServiceSpec>(v));
        self
    }
    pub fn endpoint(mut self, name: &str, v: Value) -> Self {
        self.config
            .endpoints
            .insert(name.into(), spec::<EndpointSpec>(v));
        self
    }
    pub fn route(mut self, name: &str, v: Value) -> Self {
        self.config.routes.insert(name.into(), spec::<RouteSpec>(v));
        self
    }
    /// A route `name` sending every request for `hostnames` to `service`.
    pub fn route_to(self, name: &str, hostnames: &[&str], service: &str) -> Self {
        self.route(
            name,
            json!({"hostnames": hostnames, "rules": [{"backends": [{"service": service}]}]}),
        )
    }
    pub fn gateway(mut self, name: &str, v: Value) -> Self {
        self.config
            .gateways
            .insert(name.into(), spec::<GatewaySpec>(v));
        self
    }
    /// Sets the mesh's mTLS mode (`strict`, `permissive`, `off`), trust domain `example.org`
    /// and, if `with_ca`, a trust bundle (its content does not matter to the translator).
    pub fn mtls(mut self, mode: &str, with_ca: bool) -> Self {
        self.config.spec.mtls = spec(json!({"mode": mode}));
        self.config.trust_domain = "example.org".into();
        self.config.trust = if with_ca {
            ca_bundle()
        } else {
            TrustBundle::default()
        };
        self
    }
    pub fn translate(&self) -> MeshResources {
        translate(&self.config)
    }
}

/// A trust bundle with one (made-up) root: the translator only asks whether there is one.
pub fn ca_bundle() -> TrustBundle {
    TrustBundle {
        signer_id: "ca-1".into(),
        roots_pem: vec!["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()],
    }
}

/// Services `a`, `b` (HTTP on 8080), `g` (gRPC on 9090), `m` (HTTP on 8080).
pub fn base() -> Mesh {
    Mesh::new()
        .service("a", json!({"port": 8080}))
        .service("b", json!({"port": 8080}))
        .service("g", json!({"port": 9090, "protocol": "grpc"}))
        .service("m", json!({"port": 8080}))
}

pub fn decode<M: prost::Message + prost::Name + Default>(
    map: &BTreeMap<String, std::sync::Arc<switchboard_translator::XdsResource>>,
    name: &str,
) -> M {
    map.get(name)
        .unwrap_or_else(|| {
            panic!(
                "no resource {name}; have {:?}",
                map.keys().collect::<Vec<_>>()
            )
        })
        .decode()
        .unwrap()
}

pub fn route_config(res: &MeshResources, name: &str) -> RouteConfiguration {
    decode(&res.route_configurations, name)
}

pub fn listener(res: &MeshResources, name: &str) -> Listener {
    decode(&res.listeners, name)
}

/// The Envoy routes of route `r` (host name `r.example`) with these rules.
pub fn rules_routes(rules: Value) -> Vec<Route> {
    let res = base()
        .route("r", json!({"hostnames": ["r.example"], "rules": rules}))
        .translate();
    assert!(res.warnings.is_empty(), "{:?}", res.warnings);
    let rc = route_config(&res, "r");
    assert_eq!(rc.virtual_hosts.len(), 1);
    rc.virtual_hosts.into_iter().next().unwrap().routes
}

/// The single Envoy route of a one-rule, one-match route.
pub fn rule_route(rule: Value) -> Route {
    let routes = rules_routes(json!([rule]));
    assert_eq!(routes.len(), 1, "{routes:?}");
    routes.into_iter().next().unwrap()
}

/// The packed API listener of a proxyless listener.
pub fn api_listener(l: &Listener) -> &Any {
    l.api_listener
        .as_ref()
        .unwrap()
        .api_listener
        .as_ref()
        .unwrap()
}

/// Decodes a packed message after checking its type URL.
pub fn unpack<M: prost::Message + Default>(any: &Any, type_url: &str) -> M {
    assert_eq!(any.type_url, type_url);
    M::decode(any.value.as_slice()).unwrap()
}

/// The HTTP connection manager of a proxyless listener.
pub fn api_hcm(l: &Listener) -> HttpConnectionManager {
    prost::Message::decode(api_listener(l).value.as_slice()).unwrap()
}

/// The HTTP connection manager of a listener's first filter chain.
pub fn chain_hcm(l: &Listener) -> HttpConnectionManager {
    let f = &l.filter_chains[0].filters[0];
    assert_eq!(f.name, "envoy.filters.network.http_connection_manager");
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("no typed config")
    };
    assert!(any.type_url.ends_with("HttpConnectionManager"));
    prost::Message::decode(any.value.as_slice()).unwrap()
}

pub fn filter_names(hcm: &HttpConnectionManager) -> Vec<&str> {
    hcm.http_filters.iter().map(|f| f.name.as_str()).collect()
}
