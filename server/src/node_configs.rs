//! The REST API's [`NodeConfigs`] port, served by this process's xDS server. The adapter lives
//! here so that neither crate depends on the other: the API defines what it needs, the xDS
//! server knows nothing of HTTP, and the binary wires the two.

use switchboard_api::plan::{
    DiffOp, PlanInput, PlanOutcome, PlanUnavailable, PlannedResource, Receivers,
};
use switchboard_api::{NodeConfigFuture, NodeConfigs};
use switchboard_xds_server::XdsServer;
use switchboard_xds_server::plan::{Action, MeshPlan, Planner};
use switchboard_xds_server::report::ReportError;

/// What a node is being sent, as the xDS server reports it, and plans with its code (the
/// planner starts from the translators of the meshes this replica serves, and keeps the
/// meshes it planned against translated).
pub struct XdsNodeConfigs {
    xds: XdsServer,
    planner: Planner,
}

impl XdsNodeConfigs {
    pub fn new(xds: XdsServer) -> Self {
        Self {
            planner: Planner::seeded(xds.cache().clone()),
            xds,
        }
    }
}

impl NodeConfigs for XdsNodeConfigs {
    fn node_config<'a>(
        &'a self,
        tenant: &'a str,
        mesh: &'a str,
        node: &'a str,
    ) -> NodeConfigFuture<'a> {
        Box::pin(async move {
            self.xds
                .node_config(tenant, mesh, node)
                .await
                .map_err(|e| match e {
                    ReportError::Store(e) => e,
                })
        })
    }

    fn plan(&self, input: PlanInput) -> Result<Option<PlanOutcome>, PlanUnavailable> {
        let domain = self.xds.trust_domain();
        let plan = match &input.before {
            Some(before) => Some(
                self.planner
                    .plan(before, &input.changed, domain, &input.streams),
            ),
            None => self.planner.plan_held(
                (&input.tenant, &input.mesh, input.revision),
                &input.changed,
                domain,
                &input.streams,
            ),
        };
        Ok(plan.map(outcome))
    }

    fn holds(&self, tenant: &str, mesh: &str, revision: i64) -> bool {
        self.planner
            .holds(tenant, mesh, revision, self.xds.trust_domain())
    }
}

/// The xDS server's plan as the API shows it.
pub fn outcome(plan: MeshPlan) -> PlanOutcome {
    PlanOutcome {
        resources: plan
            .resources
            .into_iter()
            .map(|r| PlannedResource {
                action: match r.action {
                    Action::Added => "add",
                    Action::Changed => "change",
                    Action::Removed => "remove",
                },
                kind: format!("{:?}", r.resource_type),
                type_url: r.resource_type.type_url().to_owned(),
                name: r.name,
                diff: r
                    .diff
                    .into_iter()
                    .map(|d| DiffOp {
                        op: d.op,
                        path: d.path,
                        before: d.before,
                        after: d.after,
                    })
                    .collect(),
                proxies: Receivers {
                    count: r.nodes.len(),
                    nodes: r.nodes,
                },
            })
            .collect(),
        connected_proxies: plan.connected_nodes,
        warnings: plan.warnings,
    }
}
