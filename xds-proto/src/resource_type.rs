//! The xDS resource types Switchboard serves, and the order to push them in.

use std::fmt;

use crate::type_url;

/// One of the five xDS resource types Switchboard serves.
///
/// The variants are declared in [push order](ResourceType::PUSH_ORDER), so the
/// derived `Ord` sorts a batch of pending updates into the order they must be
/// sent in (e.g. as a `BTreeMap<ResourceType, _>` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// SDS: `envoy.extensions.transport_sockets.tls.v3.Secret`.
    Secret,
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    ClusterLoadAssignment,
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    RouteConfiguration,
}

impl ResourceType {
    /// Make-before-break order for sending updates on one ADS stream:
    /// SDS, CDS, EDS, LDS, RDS.
    ///
    /// Envoy's xDS protocol ("Eventual consistency considerations") asks that
    /// CDS go first, EDS after the clusters it belongs to, LDS after the
    /// CDS/EDS it points at and RDS after the listeners that use it, so that
    /// no resource ever refers to one the client does not have yet (which
    /// would drop traffic: a route to an unknown cluster answers 503).
    /// Secrets go before all of them because they refer to nothing and are
    /// referred to by clusters (`UpstreamTlsContext`) and listeners
    /// (`DownstreamTlsContext`): Envoy keeps a cluster or listener warming
    /// until its secrets arrive, so sending them first lets it activate
    /// without waiting, and a rotated certificate is in place before anything
    /// that depends on it changes. This only orders what the server has to
    /// send; a client still receives only the names it subscribed to.
    pub const PUSH_ORDER: [ResourceType; 5] = [
        ResourceType::Secret,
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
    ];

    /// Order for removing resources: the reverse of [`Self::PUSH_ORDER`], so
    /// that whatever refers to a resource is gone before the resource itself
    /// (Envoy's protocol removes stale clusters only after the new
    /// listeners and routes are in place).
    pub const REMOVAL_ORDER: [ResourceType; 5] = [
        ResourceType::RouteConfiguration,
        ResourceType::Listener,
        ResourceType::ClusterLoadAssignment,
        ResourceType::Cluster,
        ResourceType::Secret,
    ];

    /// The type URL used in `DiscoveryRequest/Response.type_url` and in the
    /// `Any` of each resource.
    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Secret => type_url::SECRET,
            ResourceType::Cluster => type_url::CLUSTER,
            ResourceType::ClusterLoadAssignment => type_url::CLUSTER_LOAD_ASSIGNMENT,
            ResourceType::Listener => type_url::LISTENER,
            ResourceType::RouteConfiguration => type_url::ROUTE_CONFIGURATION,
        }
    }

    /// The resource type for a type URL, or `None` for a type Switchboard
    /// does not serve. The match is exact (no other prefix than
    /// `type.googleapis.com/`): a response must repeat the request's type URL
    /// verbatim, so a request spelled differently cannot be answered anyway.
    pub fn from_type_url(type_url: &str) -> Option<Self> {
        Self::PUSH_ORDER
            .into_iter()
            .find(|t| t.type_url() == type_url)
    }

    /// The discovery service's short name ("LDS", "RDS", "CDS", "EDS",
    /// "SDS"), for logs and metric labels.
    pub const fn short_name(self) -> &'static str {
        match self {
            ResourceType::Secret => "SDS",
            ResourceType::Cluster => "CDS",
            ResourceType::ClusterLoadAssignment => "EDS",
            ResourceType::Listener => "LDS",
            ResourceType::RouteConfiguration => "RDS",
        }
    }

    /// The resource type for a short name such as "cds" (case-insensitive).
    pub fn from_short_name(name: &str) -> Option<Self> {
        Self::PUSH_ORDER
            .into_iter()
            .find(|t| t.short_name().eq_ignore_ascii_case(name))
    }

    /// Whether a state-of-the-world response must list every subscribed
    /// resource of this type. True for LDS and CDS: Envoy treats a listener or
    /// cluster missing from such a response as deleted. For the other types a
    /// response may carry only what changed, and a resource goes away when
    /// the client stops asking for it.
    pub const fn sotw_requires_full_state(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }
}

impl fmt::Display for ResourceType {
    /// Writes the short name ("CDS", ...).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_url_roundtrip() {
        for t in ResourceType::PUSH_ORDER {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
            assert_eq!(ResourceType::from_short_name(t.short_name()), Some(t));
            assert_eq!(
                ResourceType::from_short_name(&t.to_string().to_lowercase()),
                Some(t)
            );
        }
        assert_eq!(ResourceType::from_type_url(type_url::ROUTER), None);
        assert_eq!(
            ResourceType::from_type_url("envoy.config.cluster.v3.Cluster"),
            None
        );
        assert_eq!(ResourceType::from_short_name("VHDS"), None);
    }

    #[test]
    fn ord_is_push_order_and_removal_is_reverse() {
        let mut sorted = ResourceType::REMOVAL_ORDER;
        sorted.sort();
        assert_eq!(sorted, ResourceType::PUSH_ORDER);
        let mut reversed = ResourceType::PUSH_ORDER;
        reversed.reverse();
        assert_eq!(reversed, ResourceType::REMOVAL_ORDER);
        let names: Vec<_> = ResourceType::PUSH_ORDER
            .iter()
            .map(|t| t.short_name())
            .collect();
        assert_eq!(names, ["SDS", "CDS", "EDS", "LDS", "RDS"]);
    }

    #[test]
    fn full_state_types() {
        let full: Vec<_> = ResourceType::PUSH_ORDER
            .into_iter()
            .filter(|t| t.sotw_requires_full_state())
            .collect();
        assert_eq!(full, [ResourceType::Cluster, ResourceType::Listener]);
    }
}
