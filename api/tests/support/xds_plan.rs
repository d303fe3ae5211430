//! The [`NodeConfigs`] port planning with the xDS server's own code (as the binary's adapter
//! does), for `plan`'s tests and benchmark: no stream is served, so no node's config.

use switchboard_api::plan::{
    DiffOp, PlanInput, PlanOutcome, PlanUnavailable, PlannedResource, Receivers,
};
use switchboard_api::{NodeConfigFuture, NodeConfigs};
use switchboard_xds_server::plan::{Action, Planner};

#[derive(Default)]
pub struct XdsPlanner(Planner);

impl XdsPlanner {
    /// Starting from the translators of the meshes `cache` has loaded, as a replica serving
    /// them does.
    pub fn seeded(cache: switchboard_xds_server::SnapshotCache) -> Self {
        Self(Planner::seeded(cache))
    }
}

impl NodeConfigs for XdsPlanner {
    fn node_config<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> NodeConfigFuture<'a> {
        Box::pin(async { Ok(None) })
    }

    fn plan(&self, input: PlanInput) -> Result<Option<PlanOutcome>, PlanUnavailable> {
        let p = match &input.before {
            Some(before) => self.0.plan(before, &input.changed, DOMAIN, &input.streams),
            None => match self.0.plan_held(
                (&input.tenant, &input.mesh, input.revision),
                &input.changed,
                DOMAIN,
                &input.streams,
            ) {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        Ok(Some(PlanOutcome {
            resources: p
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
            connected_proxies: p.connected_nodes,
            warnings: p.warnings,
        }))
    }

    fn holds(&self, tenant: &str, mesh: &str, revision: i64) -> bool {
        self.0.holds(tenant, mesh, revision, DOMAIN)
    }
}

/// The trust domain plans translate with.
const DOMAIN: &str = "switchboard.local";
