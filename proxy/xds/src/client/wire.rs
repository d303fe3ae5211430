//! The two ADS protocols, as far as they differ: how requests are formed and how responses
//! are read. Everything else (conversion, handlers, subscriptions that follow the applied
//! listeners and clusters, readiness, NACK pacing) is shared by the client.
//!
//! - [`Sotw`]: `StreamAggregatedResources`. Every request restates the type's whole
//!   subscription and the version last applied; a wildcard type's response is complete, so
//!   what it leaves out is removed.
//! - [`Delta`]: `DeltaAggregatedResources` (incremental xDS). Requests carry subscription
//!   changes (`resource_names_subscribe` / `_unsubscribe`, `*` for the wildcard); the first
//!   request of a type on a stream states the versions held (`initial_resource_versions`), so
//!   a reconnect is not sent what it already has; responses carry per-resource versions and
//!   name removals (`removed_resources`), which for a name never held means "does not exist".

use std::future::Future;

use switchboard_xds_proto::service::ads::AggregatedDiscoveryServiceClient;
use switchboard_xds_proto::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Node,
    Status,
};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::resource::{Item, Subscription, TypeState, Update};

/// The wildcard subscription of incremental xDS.
pub(crate) const WILDCARD: &str = "*";

type Client = AggregatedDiscoveryServiceClient<Channel>;
pub(crate) type Requests<R> = tonic::Request<UnboundedReceiverStream<R>>;

/// How one protocol forms requests and reads responses.
pub(crate) trait Wire {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// For logs: `delta` or `sotw`.
    const NAME: &'static str;

    fn open(
        client: &mut Client,
        requests: Requests<Self::Request>,
    ) -> impl Future<Output = Result<Streaming<Self::Response>, tonic::Status>> + Send;

    /// The first request of a type on a new stream: the subscription and what is held; `None`
    /// when the type is not subscribed to at all.
    fn initial(state: &TypeState) -> Option<Self::Request>;

    /// The first request of a stream also names the node.
    fn with_node(request: &mut Self::Request, node: Node);

    fn type_url(response: &Self::Response) -> &str;

    fn nonce(response: &Self::Response) -> &str;

    /// The resources and removals of a response.
    fn read(response: &Self::Response) -> Update<'_>;

    /// The ACK (`error_detail` `None`) or NACK of a response `state` has just handled.
    fn ack(
        state: &mut TypeState,
        response: &Self::Response,
        error_detail: Option<Status>,
    ) -> Self::Request;

    /// The request announcing that a named type's subscription changed.
    fn resubscribe(state: &TypeState, change: &Subscription) -> Self::Request;
}

/// State of the world.
pub(crate) struct Sotw;

impl Sotw {
    fn request(state: &TypeState, error_detail: Option<Status>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: state.version.clone(),
            resource_names: if state.wildcard {
                Vec::new()
            } else {
                state.names.iter().cloned().collect()
            },
            type_url: state.kind.type_url().to_owned(),
            response_nonce: state.nonce.clone(),
            error_detail,
            ..Default::default()
        }
    }
}

impl Wire for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";

    async fn open(
        client: &mut Client,
        requests: Requests<DiscoveryRequest>,
    ) -> Result<Streaming<DiscoveryResponse>, tonic::Status> {
        Ok(client
            .stream_aggregated_resources(requests)
            .await?
            .into_inner())
    }

    fn initial(state: &TypeState) -> Option<DiscoveryRequest> {
        (state.wildcard || !state.names.is_empty()).then(|| Self::request(state, None))
    }

    fn with_node(request: &mut DiscoveryRequest, node: Node) {
        request.node = Some(node);
    }

    fn type_url(response: &DiscoveryResponse) -> &str {
        &response.type_url
    }

    fn nonce(response: &DiscoveryResponse) -> &str {
        &response.nonce
    }

    fn read(response: &DiscoveryResponse) -> Update<'_> {
        Update {
            version: &response.version_info,
            items: response
                .resources
                .iter()
                .map(|any| Item {
                    wrapper_name: None,
                    any: Some(any),
                    version: &response.version_info,
                })
                .collect(),
            removed: &[],
            complete: true,
        }
    }

    fn ack(
        state: &mut TypeState,
        response: &DiscoveryResponse,
        error_detail: Option<Status>,
    ) -> DiscoveryRequest {
        if error_detail.is_none() {
            state.version.clone_from(&response.version_info);
        }
        Self::request(state, error_detail)
    }

    fn resubscribe(state: &TypeState, _: &Subscription) -> DiscoveryRequest {
        Self::request(state, None)
    }
}

/// Incremental xDS.
pub(crate) struct Delta;

impl Wire for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    async fn open(
        client: &mut Client,
        requests: Requests<DeltaDiscoveryRequest>,
    ) -> Result<Streaming<DeltaDiscoveryResponse>, tonic::Status> {
        Ok(client
            .delta_aggregated_resources(requests)
            .await?
            .into_inner())
    }

    /// LDS and CDS subscribe to `*` explicitly (an empty first request would also mean the
    /// wildcard, but only on a first request; `*` says it everywhere). A named type with no
    /// names sends nothing: an empty first request would subscribe it to everything.
    fn initial(state: &TypeState) -> Option<DeltaDiscoveryRequest> {
        let subscribe: Vec<String> = if state.wildcard {
            vec![WILDCARD.to_owned()]
        } else {
            state.names.iter().cloned().collect()
        };
        if subscribe.is_empty() {
            return None;
        }
        Some(DeltaDiscoveryRequest {
            type_url: state.kind.type_url().to_owned(),
            resource_names_subscribe: subscribe,
            initial_resource_versions: state
                .held
                .iter()
                .map(|(name, held)| (name.clone(), held.version.clone()))
                .collect(),
            ..Default::default()
        })
    }

    fn with_node(request: &mut DeltaDiscoveryRequest, node: Node) {
        request.node = Some(node);
    }

    fn type_url(response: &DeltaDiscoveryResponse) -> &str {
        &response.type_url
    }

    fn nonce(response: &DeltaDiscoveryResponse) -> &str {
        &response.nonce
    }

    fn read(response: &DeltaDiscoveryResponse) -> Update<'_> {
        Update {
            version: &response.system_version_info,
            items: response
                .resources
                .iter()
                .map(|r| Item {
                    wrapper_name: Some(r.name.as_str()).filter(|n| !n.is_empty()),
                    any: r.resource.as_ref(),
                    version: &r.version,
                })
                .collect(),
            removed: &response.removed_resources,
            complete: false,
        }
    }

    fn ack(
        state: &mut TypeState,
        response: &DeltaDiscoveryResponse,
        error_detail: Option<Status>,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: state.kind.type_url().to_owned(),
            response_nonce: response.nonce.clone(),
            error_detail,
            ..Default::default()
        }
    }

    fn resubscribe(state: &TypeState, change: &Subscription) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: state.kind.type_url().to_owned(),
            resource_names_subscribe: change.added.clone(),
            resource_names_unsubscribe: change.removed.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use switchboard_xds_proto::ResourceType;

    use super::*;
    use crate::client::resource::Held;
    use crate::dump::ConfigDump;

    fn held(version: &str) -> Held {
        Held {
            version: version.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn a_delta_first_request_states_the_subscription_and_the_versions_held() {
        let mut lds = TypeState::new(ResourceType::Listener, true, ConfigDump::new());
        lds.held.insert("out".to_owned(), held("v7"));
        let r = Delta::initial(&lds).unwrap();
        assert_eq!(r.resource_names_subscribe, [WILDCARD]);
        assert_eq!(r.initial_resource_versions["out"], "v7");
        assert!(r.response_nonce.is_empty());

        // No names: no request, since an empty first request means the wildcard.
        let mut rds = TypeState::new(ResourceType::RouteConfiguration, false, ConfigDump::new());
        assert!(Delta::initial(&rds).is_none());
        rds.names.insert("rc".to_owned());
        let r = Delta::initial(&rds).unwrap();
        assert_eq!(r.resource_names_subscribe, ["rc"]);
        assert!(r.initial_resource_versions.is_empty());
    }

    #[test]
    fn a_sotw_request_restates_the_whole_subscription() {
        let mut eds = TypeState::new(
            ResourceType::ClusterLoadAssignment,
            false,
            ConfigDump::new(),
        );
        assert!(Sotw::initial(&eds).is_none());
        eds.names.extend(["a".to_owned(), "b".to_owned()]);
        eds.version = "e3".to_owned();
        let change = Subscription {
            added: vec!["b".to_owned()],
            removed: vec!["c".to_owned()],
        };
        let r = Sotw::resubscribe(&eds, &change);
        assert_eq!(
            (r.resource_names, r.version_info),
            (vec!["a".to_owned(), "b".to_owned()], "e3".to_owned())
        );
        let d = Delta::resubscribe(&eds, &change);
        assert_eq!(
            (d.resource_names_subscribe, d.resource_names_unsubscribe),
            (vec!["b".to_owned()], vec!["c".to_owned()])
        );
    }
}
