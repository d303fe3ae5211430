//! The REST API's [`NodeConfigs`] port, served by this process's xDS server. The adapter lives
//! here so that neither crate depends on the other: the API defines what it needs, the xDS
//! server knows nothing of HTTP, and the binary wires the two.

use switchboard_api::{NodeConfigFuture, NodeConfigs};
use switchboard_xds_server::XdsServer;
use switchboard_xds_server::report::ReportError;

/// What a node is being sent, as the xDS server reports it.
pub struct XdsNodeConfigs(pub XdsServer);

impl NodeConfigs for XdsNodeConfigs {
    fn node_config<'a>(
        &'a self,
        tenant: &'a str,
        mesh: &'a str,
        node: &'a str,
    ) -> NodeConfigFuture<'a> {
        Box::pin(async move {
            self.0
                .node_config(tenant, mesh, node)
                .await
                .map_err(|e| match e {
                    ReportError::Store(e) => e,
                })
        })
    }
}
