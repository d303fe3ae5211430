//! `switchboard plan -f FILE|DIR|-`: what files of documents (read as `apply` reads them)
//! and `--delete KIND/NAME` would send to the proxies, one plan per mesh from the API
//! (`POST …/meshes/{mesh}/plan`): the Envoy resources added (`+`), changed (`~`, with the
//! JSON diff) or removed (`-`), and the connected proxies that would receive each. Nothing
//! is written.
//!
//! Exit codes as `diff`'s: 0 when no Envoy resource would change (even if specs would: a
//! change the proxies never see is no change to them), 3 when some would, 1 an error, 2 bad
//! usage.

use super::apply::{Sourced, by_mesh, explain, load, mesh_of};
use super::{ApiArgs, Failure, Target, api_failure, error, print, runtime, usage};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use switchboard_client::bundle::Documents;
use switchboard_client::plan::{DiffOp, Plan, PlannedResource};
use switchboard_client::resources::parse_kind;
use switchboard_model::Kind;

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// As for `apply`: a file of documents, a directory or `-`; may be repeated.
    #[arg(short, long = "filename", required_unless_present = "delete")]
    pub file: Vec<PathBuf>,
    /// A resource to delete, as KIND/NAME (route/payments), in --mesh; may be repeated.
    #[arg(long, value_name = "KIND/NAME")]
    pub delete: Vec<String>,
    /// The mesh of the deletions (default: the context's).
    #[arg(long)]
    pub mesh: Option<String>,
    /// `text` (like `terraform plan`) or `json` (the API's plans, by mesh).
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: PlanOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    Text,
    Json,
}

/// One mesh's change: its documents and deletions.
#[derive(Default)]
struct Change {
    documents: Vec<Sourced>,
    deletions: Vec<(Kind, String)>,
}

/// One mesh's plan as `-o json` writes it.
#[derive(Serialize)]
struct MeshPlan<'a> {
    mesh: &'a str,
    #[serde(flatten)]
    plan: &'a Plan,
}

pub fn plan(args: &PlanArgs) -> ExitCode {
    super::finish("plan", run(args))
}

fn run(args: &PlanArgs) -> Result<ExitCode, Failure> {
    let target = Target::resolve(&args.api)?;
    let tenant = target.tenant()?;
    let mut changes: BTreeMap<String, Change> = BTreeMap::new();
    if !args.file.is_empty() {
        for group in by_mesh(load(&args.file)?) {
            let mesh = group.first().map(|d| mesh_of(&d.document));
            match mesh {
                Some(m) if m.is_empty() => {
                    return Err(explain_missing_mesh(&group));
                }
                Some(m) => changes.entry(m).or_default().documents = group,
                None => {}
            }
        }
    }
    if !args.delete.is_empty() {
        let mesh = target.mesh(args.mesh.as_deref())?.to_owned();
        let deletions = &mut changes.entry(mesh).or_default().deletions;
        for d in &args.delete {
            deletions.push(deletion(d)?);
        }
    }
    runtime()?.block_on(async {
        let mut plans = vec![];
        for (mesh, change) in &changes {
            let docs = Documents {
                documents: change
                    .documents
                    .iter()
                    .map(|d| d.document.clone())
                    .collect(),
                positions: vec![],
            };
            let plan = target
                .client
                .plan(tenant, mesh, &docs, &change.deletions)
                .await
                .map_err(|e| {
                    if change.documents.is_empty() {
                        api_failure(e)
                    } else {
                        explain(e, &change.documents)
                    }
                })?;
            plans.push((mesh.as_str(), plan));
        }
        let out = match args.output {
            PlanOutput::Json => {
                let list: Vec<MeshPlan> = plans
                    .iter()
                    .map(|(mesh, plan)| MeshPlan { mesh, plan })
                    .collect();
                serde_json::to_string_pretty(&list)
                    .map_err(|e| error(format!("cannot write the plan as JSON: {e}")))?
                    + "\n"
            }
            PlanOutput::Text => plans.iter().map(|(mesh, plan)| text(mesh, plan)).collect(),
        };
        print(&out)?;
        let changed = plans.iter().any(|(_, p)| p.changes);
        Ok(ExitCode::from(if changed { 3 } else { 0 }))
    })
}

/// A document naming no mesh: the error the import would give, without asking it.
fn explain_missing_mesh(group: &[Sourced]) -> Failure {
    let (file, position) = group.first().map(|d| d.place()).unwrap_or_default();
    error(format!(
        "{file}: document {position}: mesh: missing: the mesh the resource is in"
    ))
}

/// `route/payments` as a deletion.
fn deletion(text: &str) -> Result<(Kind, String), Failure> {
    let (kind, name) = text.split_once('/').ok_or_else(|| {
        usage(format!(
            "--delete {text:?}: expected KIND/NAME, e.g. route/payments"
        ))
    })?;
    let kind = parse_kind(kind)
        .ok_or_else(|| usage(format!("--delete {text:?}: unknown kind {kind:?}")))?;
    if name.is_empty() {
        return Err(usage(format!("--delete {text:?}: no name after the /")));
    }
    Ok((kind, name.to_owned()))
}

/// A mesh's plan for people: one line per resource, its diff, who receives it.
fn text(mesh: &str, plan: &Plan) -> String {
    let mut out = format!(
        "mesh {mesh} (revision {}, {} connected {})\n",
        plan.revision,
        plan.connected_proxies,
        proxies(plan.connected_proxies)
    );
    for r in &plan.resources {
        out.push_str(&resource(r));
    }
    for w in &plan.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    let count = |a: &str| plan.resources.iter().filter(|r| r.action == a).count();
    if plan.changes {
        out.push_str(&format!(
            "Plan: {} to add, {} to change, {} to remove.\n\n",
            count("add"),
            count("change"),
            count("remove")
        ));
    } else {
        out.push_str("No changes: the proxies would be sent nothing new.\n\n");
    }
    out
}

fn proxies(n: usize) -> &'static str {
    if n == 1 { "proxy" } else { "proxies" }
}

fn resource(r: &PlannedResource) -> String {
    let sign = match r.action.as_str() {
        "add" => "+",
        "remove" => "-",
        _ => "~",
    };
    let mut out = format!("{sign} {} {}\n", r.kind, r.name);
    for d in &r.diff {
        out.push_str(&format!("    {}\n", diff_line(d)));
    }
    let who = match r.proxies.count {
        0 => "no connected proxy".to_owned(),
        n => format!("{n} {}: {}", proxies(n), r.proxies.nodes.join(", ")),
    };
    out.push_str(&format!("    → {who}\n"));
    out
}

fn diff_line(d: &DiffOp) -> String {
    let v = |v: &Option<Value>| v.as_ref().map(short).unwrap_or_default();
    match d.op.as_str() {
        "add" => format!("+ {}: {}", d.path, v(&d.after)),
        "remove" => format!("- {}: {}", d.path, v(&d.before)),
        "replace" => format!("~ {}: {} → {}", d.path, v(&d.before), v(&d.after)),
        op => format!("{op} {}", d.path),
    }
}

/// A value on one line, cut at 120 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}
