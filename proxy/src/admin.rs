//! The admin port (127.0.0.1:15000 by default): `/ready`, `/stats` (Prometheus text),
//! `/config_dump` (the protos applied and refused, as JSON), `/clusters` (endpoints with
//! health, ejection and request counts) and `/listeners`.
//!
//! It binds loopback by default: it exposes the configuration and must not face the mesh.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_proxy_data::ClusterManager;
use switchboard_proxy_xds::dump::DumpEntry;
use switchboard_proxy_xds::{ConfigDump, ConfigStore};
use switchboard_xds_proto::{Node, ResourceType, any_to_json};
use tokio::sync::watch;

#[derive(Clone)]
pub struct Admin {
    pub ready: watch::Receiver<bool>,
    /// Listeners waiting for their secrets.
    pub warming: watch::Receiver<std::collections::BTreeSet<String>>,
    pub prometheus: PrometheusHandle,
    pub dump: ConfigDump,
    pub store: ConfigStore,
    pub clusters: Arc<ClusterManager>,
    pub node: Node,
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ready", get(ready))
        .route("/stats", get(stats))
        .route("/stats/prometheus", get(stats))
        .route("/config_dump", get(config_dump))
        .route("/clusters", get(clusters))
        .route("/listeners", get(listeners))
        .with_state(admin)
}

async fn index() -> &'static str {
    "switchboard-proxy admin\n\
     /ready         200 once the initial listeners, routes, clusters, endpoints and secrets are applied\n\
     /stats         Prometheus text (also /stats/prometheus)\n\
     /config_dump   applied and refused xDS resources, as JSON\n\
     /clusters      endpoints with health, ejection and request counts (?format=text)\n\
     /listeners     bound listeners\n"
}

async fn ready(State(a): State<Admin>) -> Response {
    let warming = a.warming.borrow().clone();
    if !warming.is_empty() {
        let names: Vec<&str> = warming.iter().map(String::as_str).collect();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "listeners warming (waiting for their secrets): {}\n",
                names.join(", ")
            ),
        )
            .into_response();
    }
    if *a.ready.borrow() {
        (StatusCode::OK, "LIVE\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "initial configuration not applied yet (waiting for LDS, RDS, CDS, EDS and SDS)\n",
        )
            .into_response()
    }
}

async fn stats(State(a): State<Admin>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        a.prometheus.render(),
    )
        .into_response()
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn proto_json(any: &switchboard_xds_proto::pb::google::protobuf::Any) -> Value {
    match any_to_json(any) {
        Ok(mut v) => {
            if let Value::Object(map) = &mut v {
                map.insert("@type".to_owned(), Value::String(any.type_url.clone()));
            }
            v
        }
        Err(e) => json!({ "@type": any.type_url, "error": e.to_string() }),
    }
}

/// One resource in Envoy's `config_dump` shape: the active version, and the last refused
/// one beside it (`error_state`), so a NACK shows where it matters.
fn dump_entry(name: &str, field: &str, e: &DumpEntry) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("name".to_owned(), json!(name));
    if let Some(a) = &e.applied {
        out.insert(
            "active_state".to_owned(),
            json!({
                "version_info": a.version,
                field: proto_json(&a.resource),
                "last_updated": timestamp(a.last_updated),
            }),
        );
    }
    if let Some(r) = &e.error {
        out.insert(
            "error_state".to_owned(),
            json!({
                "failed_configuration": r.resource.as_ref().map(proto_json),
                "version_info": r.version,
                "last_update_attempt": timestamp(r.last_updated),
                "details": r.details,
            }),
        );
    }
    Value::Object(out)
}

async fn config_dump(State(a): State<Admin>) -> Response {
    let section = |kind: ResourceType, admin_type: &str, list: &str, field: &str| {
        let entries: Vec<Value> = a
            .dump
            .entries(kind)
            .iter()
            .map(|(name, e)| dump_entry(name, field, e))
            .collect();
        json!({ "@type": format!("type.googleapis.com/envoy.admin.v3.{admin_type}"), list: entries })
    };
    let node = json!({
        "id": a.node.id,
        "user_agent_name": a.node.user_agent_name,
        "metadata": a.node.metadata.as_ref().map(|m| {
            m.fields
                .iter()
                .map(|(k, v)| {
                    let s = match &v.kind {
                        Some(switchboard_xds_proto::pb::google::protobuf::value::Kind::StringValue(s)) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (k.clone(), Value::String(s))
                })
                .collect::<serde_json::Map<_, _>>()
        }),
    });
    let body = json!({
        "configs": [
            { "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": { "node": node } },
            section(ResourceType::Listener, "ListenersConfigDump", "dynamic_listeners", "listener"),
            section(ResourceType::RouteConfiguration, "RoutesConfigDump", "dynamic_route_configs", "route_config"),
            section(ResourceType::Cluster, "ClustersConfigDump", "dynamic_active_clusters", "cluster"),
            section(ResourceType::ClusterLoadAssignment, "EndpointsConfigDump", "dynamic_endpoint_configs", "endpoint_config"),
            section(ResourceType::Secret, "SecretsConfigDump", "dynamic_active_secrets", "secret"),
        ]
    });
    json_response(&body)
}

fn json_response(body: &Value) -> Response {
    match serde_json::to_string_pretty(body) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text + "\n").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct Format {
    format: Option<String>,
}

async fn clusters(State(a): State<Admin>, Query(q): Query<Format>) -> Response {
    let snapshot = a.store.snapshot();
    let statuses = a.clusters.describe(&snapshot);
    if q.format.as_deref() == Some("text") {
        // Envoy's line format: cluster::address::field::value.
        let mut out = String::new();
        for c in &statuses {
            for e in &c.endpoints {
                let prefix = format!("{}::{}", c.name, e.address);
                out.push_str(&format!("{prefix}::health_flags::{}\n", e.health_flags()));
                out.push_str(&format!("{prefix}::weight::{}\n", e.weight));
                out.push_str(&format!("{prefix}::priority::{}\n", e.priority));
                out.push_str(&format!("{prefix}::rq_active::{}\n", e.active_requests));
                out.push_str(&format!("{prefix}::rq_total::{}\n", e.total_requests));
                out.push_str(&format!("{prefix}::rq_error::{}\n", e.failures));
            }
        }
        return ([(header::CONTENT_TYPE, "text/plain")], out).into_response();
    }
    let body: Vec<Value> = statuses
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "lb_policy": format!("{:?}", c.lb_policy),
                "endpoints": c.endpoints.iter().map(|e| json!({
                    "address": e.address.to_string(),
                    "priority": e.priority,
                    "locality": { "region": e.locality.region, "zone": e.locality.zone, "sub_zone": e.locality.sub_zone },
                    "weight": e.weight,
                    "health": format!("{:?}", e.health),
                    "ejected": e.ejected_until.is_some(),
                    "health_flags": e.health_flags(),
                    "active_requests": e.active_requests,
                    "total_requests": e.total_requests,
                    "failures": e.failures,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json_response(&json!({ "cluster_statuses": body }))
}

async fn listeners(State(a): State<Admin>) -> Response {
    let snapshot = a.store.snapshot();
    let body: Vec<Value> = snapshot
        .listeners
        .values()
        .map(|l| json!({ "name": l.name, "address": l.address.to_string() }))
        .collect();
    json_response(&json!({ "listener_statuses": body }))
}
