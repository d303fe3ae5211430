//! The Client Status Discovery Service (`envoy.service.status.v3.ClientStatusDiscoveryService`):
//! what each connected proxy was sent, ACKed and NACKed, from the [`ProxyRegistry`].
//!
//! Callers authenticate like REST clients or proxies (`authorization: Bearer <API key or proxy
//! token>`) and see the proxies of their own tenant only (of one mesh, for a mesh-limited
//! token). `node_matchers` select proxies by node id (exact, prefix, suffix or contains).

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::BoxStream;
use switchboard_store::Store;
use switchboard_xds_proto::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use switchboard_xds_proto::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use switchboard_xds_proto::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};
use switchboard_xds_proto::pb::envoy::r#type::matcher::v3::{
    NodeMatcher, StringMatcher, string_matcher::MatchPattern,
};
use switchboard_xds_proto::pb::google::protobuf::Timestamp;
use switchboard_xds_proto::service::csds::ClientStatusDiscoveryService;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, StatusScope};
use crate::status::{ClientState, ProxyRegistry, ProxyStatus, TypeStatus};

/// The CSDS server.
#[derive(Clone)]
pub struct CsdsService {
    store: Store,
    registry: ProxyRegistry,
}

impl std::fmt::Debug for CsdsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsdsService").finish_non_exhaustive()
    }
}

impl CsdsService {
    pub fn new(store: Store, registry: ProxyRegistry) -> Self {
        Self { store, registry }
    }
}

#[tonic::async_trait]
impl ClientStatusDiscoveryService for CsdsService {
    type StreamClientStatusStream = BoxStream<'static, Result<ClientStatusResponse, Status>>;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let scope = auth::status_scope(&self.store, request.metadata())
            .await
            .map_err(|e| e.status())?;
        let registry = self.registry.clone();
        let responses = request.into_inner().map(move |req| {
            let req = req?;
            client_status(&registry, &scope, &req)
        });
        Ok(Response::new(responses.boxed()))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        let scope = auth::status_scope(&self.store, request.metadata())
            .await
            .map_err(|e| e.status())?;
        client_status(&self.registry, &scope, request.get_ref()).map(Response::new)
    }
}

/// Answers one request from the registry.
pub fn client_status(
    registry: &ProxyRegistry,
    scope: &StatusScope,
    req: &ClientStatusRequest,
) -> Result<ClientStatusResponse, Status> {
    for m in &req.node_matchers {
        check_matcher(m)?;
    }
    let config = registry
        .list(&scope.tenant, scope.mesh.as_deref())
        .into_iter()
        .filter(|p| {
            let id = p.node_id.to_string();
            req.node_matchers.is_empty()
                || req
                    .node_matchers
                    .iter()
                    .any(|m| m.node_id.as_ref().is_none_or(|s| string_matches(s, &id)))
        })
        .map(|p| client_config(&p, !req.exclude_resource_contents))
        .collect();
    Ok(ClientStatusResponse { config })
}

fn check_matcher(m: &NodeMatcher) -> Result<(), Status> {
    if !m.node_metadatas.is_empty() {
        return Err(Status::invalid_argument(
            "node_matchers[].node_metadatas is not supported: match on node_id",
        ));
    }
    match m.node_id.as_ref().and_then(|s| s.match_pattern.as_ref()) {
        None
        | Some(MatchPattern::Exact(_))
        | Some(MatchPattern::Prefix(_))
        | Some(MatchPattern::Suffix(_))
        | Some(MatchPattern::Contains(_)) => Ok(()),
        Some(_) => Err(Status::invalid_argument(
            "node_matchers[].node_id supports exact, prefix, suffix and contains",
        )),
    }
}

fn string_matches(m: &StringMatcher, value: &str) -> bool {
    let (value, fold) = if m.ignore_case {
        (value.to_lowercase(), true)
    } else {
        (value.to_owned(), false)
    };
    let norm = |p: &str| if fold { p.to_lowercase() } else { p.to_owned() };
    match &m.match_pattern {
        None => true,
        Some(MatchPattern::Exact(p)) => value == norm(p),
        Some(MatchPattern::Prefix(p)) => value.starts_with(&norm(p)),
        Some(MatchPattern::Suffix(p)) => value.ends_with(&norm(p)),
        Some(MatchPattern::Contains(p)) => value.contains(&norm(p)),
        Some(_) => false,
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// One proxy stream as CSDS reports it: a `GenericXdsConfig` per resource it holds or asked
/// for.
pub fn client_config(p: &ProxyStatus, contents: bool) -> ClientConfig {
    let mut configs = Vec::new();
    for (t, status) in &p.types {
        per_type(*t, status, contents, &mut configs);
    }
    ClientConfig {
        node: Some(switchboard_xds_proto::Node::clone(&p.node)),
        generic_xds_configs: configs,
        ..Default::default()
    }
}

fn per_type(
    t: switchboard_xds_proto::ResourceType,
    status: &TypeStatus,
    contents: bool,
    out: &mut Vec<GenericXdsConfig>,
) {
    let state = status.state();
    let nacked: BTreeSet<&str> = match (&status.nack, state) {
        (Some(n), ClientState::Nacked) => n.names.iter().map(String::as_str).collect(),
        _ => BTreeSet::new(),
    };
    let acked_version = status.acked.as_ref().map(|a| a.version.clone());
    for r in &status.resources {
        let is_nacked = nacked.contains(r.name.as_str());
        let (client_status, config_status, version, updated) = match state {
            ClientState::Nacked if is_nacked => (
                ClientResourceStatus::Nacked,
                ConfigStatus::Error,
                acked_version.clone().unwrap_or_default(),
                status.nack.as_ref().map(|n| n.time),
            ),
            ClientState::Acked | ClientState::Nacked => (
                ClientResourceStatus::Acked,
                ConfigStatus::Synced,
                acked_version.clone().unwrap_or_default(),
                status.acked.as_ref().map(|a| a.time),
            ),
            ClientState::Pending | ClientState::Requested => (
                ClientResourceStatus::Requested,
                ConfigStatus::Stale,
                status
                    .sent
                    .as_ref()
                    .map(|s| s.version.clone())
                    .unwrap_or_default(),
                status.sent.as_ref().map(|s| s.time),
            ),
        };
        let error_state = match (&status.nack, is_nacked && state == ClientState::Nacked) {
            (Some(n), true) => Some(UpdateFailureState {
                failed_configuration: contents.then(|| r.any()),
                last_update_attempt: Some(timestamp(n.time)),
                details: n.message.clone(),
                version_info: n.version.clone(),
            }),
            _ => None,
        };
        out.push(GenericXdsConfig {
            type_url: t.type_url().to_owned(),
            name: r.name.clone(),
            version_info: version,
            // Secrets come from the registry already redacted (`Registration::record_sent`):
            // a dump never holds a private key.
            xds_config: contents.then(|| r.any()),
            last_updated: updated.map(timestamp),
            config_status: config_status as i32,
            client_status: client_status as i32,
            error_state,
            is_static_resource: false,
        });
    }
    // Named resources the proxy asked for and does not have.
    let held: BTreeSet<&str> = status.resources.iter().map(|r| r.name.as_str()).collect();
    for name in status.names.iter().filter(|n| !held.contains(n.as_str())) {
        let known_missing = t.sotw_requires_full_state() && status.sent.is_some();
        out.push(GenericXdsConfig {
            type_url: t.type_url().to_owned(),
            name: name.clone(),
            config_status: ConfigStatus::NotSent as i32,
            client_status: if known_missing {
                ClientResourceStatus::DoesNotExist as i32
            } else {
                ClientResourceStatus::Requested as i32
            },
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(p: MatchPattern, ignore_case: bool) -> StringMatcher {
        StringMatcher {
            ignore_case,
            match_pattern: Some(p),
        }
    }

    #[test]
    fn string_matchers() {
        let id = "tenants/acme/meshes/prod/nodes/a";
        assert!(string_matches(
            &matcher(MatchPattern::Exact(id.to_owned()), false),
            id
        ));
        assert!(string_matches(
            &matcher(MatchPattern::Prefix("tenants/acme/".to_owned()), false),
            id
        ));
        assert!(!string_matches(
            &matcher(MatchPattern::Prefix("tenants/ACME/".to_owned()), false),
            id
        ));
        assert!(string_matches(
            &matcher(MatchPattern::Prefix("tenants/ACME/".to_owned()), true),
            id
        ));
        assert!(string_matches(
            &matcher(MatchPattern::Suffix("/a".to_owned()), false),
            id
        ));
        assert!(string_matches(
            &matcher(MatchPattern::Contains("prod".to_owned()), false),
            id
        ));
    }

    #[test]
    fn unsupported_matchers_are_refused() {
        let regex = NodeMatcher {
            node_id: Some(matcher(MatchPattern::SafeRegex(Default::default()), false)),
            node_metadatas: vec![],
        };
        assert_eq!(
            check_matcher(&regex).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let meta = NodeMatcher {
            node_id: None,
            node_metadatas: vec![Default::default()],
        };
        assert_eq!(
            check_matcher(&meta).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
