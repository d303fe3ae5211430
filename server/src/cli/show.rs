//! `switchboard get`, `delete`, `status` and `rollout`: reads and deletes through the REST
//! API, written as a table or, with `-o yaml|json`, as documents in the shape `export`
//! writes and `apply` reads (`get -o yaml > f; apply -f f` changes nothing).

use super::{ApiArgs, Failure, Output, Target, api_failure, error, print, runtime, table, usage};
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use std::process::ExitCode;
use switchboard_client::resources::{API_VERSION, document, document_kind, parse_kind};
use switchboard_model::Kind;
use switchboard_store::{ProxyStatusRecord, TypeState};

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// mesh, service, endpoint, route, gateway, authorization-policy or certificate
    /// (singular or plural).
    pub kind: String,
    /// One resource; without it, every resource of the kind in the mesh.
    pub name: Option<String>,
    /// The mesh (every kind but meshes); default: the context's.
    #[arg(short, long)]
    pub mesh: Option<String>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// As for `get`.
    pub kind: String,
    pub name: String,
    /// The mesh (every kind but meshes); default: the context's.
    #[arg(short, long)]
    pub mesh: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The mesh; default: the context's.
    #[arg(short, long)]
    pub mesh: Option<String>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The mesh; default: the context's.
    #[arg(short, long)]
    pub mesh: Option<String>,
    /// A committed revision of the tenant; default: the current one.
    #[arg(long)]
    pub revision: Option<i64>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

/// A kind as the verbs take it (`service`, `services`, `authorization-policy` …).
pub(super) fn kind(text: &str) -> Result<Kind, Failure> {
    parse_kind(text).ok_or_else(|| {
        usage(format!(
            "unknown kind {text:?}: use mesh, service, endpoint, route, gateway, \
             authorization-policy or certificate"
        ))
    })
}

/// The mesh a kind's resources are in: none for meshes.
fn mesh_of<'a>(target: &'a Target, kind: Kind, given: Option<&'a str>) -> Result<&'a str, Failure> {
    match kind {
        Kind::Mesh => Ok(""),
        _ => target.mesh(given),
    }
}

/// `kind mesh/name` as the verbs print it.
fn label(kind: Kind, mesh: &str, name: &str) -> String {
    match mesh {
        "" => format!("{} {name}", document_kind(kind)),
        mesh => format!("{} {mesh}/{name}", document_kind(kind)),
    }
}

fn to_yaml(v: &Value) -> Result<String, Failure> {
    serde_yaml_ng::to_string(v).map_err(|e| error(format!("cannot write YAML: {e}")))
}

fn to_json(v: &Value) -> Result<String, Failure> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| error(format!("cannot write JSON: {e}")))
}

/// `v` as YAML or JSON.
pub(super) fn structured(output: Output, v: &Value) -> Result<String, Failure> {
    match output {
        Output::Json => to_json(v),
        _ => to_yaml(v),
    }
}

pub fn get(args: &GetArgs) -> ExitCode {
    super::finish("get", run_get(args))
}

fn run_get(args: &GetArgs) -> Result<ExitCode, Failure> {
    let kind = kind(&args.kind)?;
    let target = Target::resolve(&args.api)?;
    let tenant = target.tenant()?;
    let mesh = mesh_of(&target, kind, args.mesh.as_deref())?;
    let rt = runtime()?;
    let views = match &args.name {
        Some(name) => vec![
            rt.block_on(target.client.get_resource(tenant, kind, mesh, name))
                .map_err(api_failure)?,
        ],
        None => rt
            .block_on(target.client.list_resources(tenant, kind, mesh))
            .map_err(api_failure)?,
    };
    let docs: Vec<Value> = views.iter().map(|v| document(kind, v)).collect();
    let text = match (args.output, &args.name, docs.as_slice()) {
        (Output::Table, _, _) => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
                    vec![
                        s("name").to_owned(),
                        v.get("revision")
                            .and_then(Value::as_i64)
                            .unwrap_or(0)
                            .to_string(),
                        s("updateTime").to_owned(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!(
                    "no {} in {}",
                    kind.plural(),
                    if mesh.is_empty() { "the tenant" } else { mesh }
                );
                String::new()
            } else {
                table(&["NAME", "REVISION", "UPDATED"], &rows)
            }
        }
        (Output::Json, Some(_), [one]) => to_json(one)?,
        (Output::Json, _, _) => to_json(&json!({"apiVersion": API_VERSION, "documents": docs}))?,
        (Output::Yaml, _, _) => {
            let mut out = String::new();
            for d in &docs {
                out.push_str("---\n");
                out.push_str(&to_yaml(d)?);
            }
            out
        }
    };
    print(&text)?;
    Ok(ExitCode::SUCCESS)
}

pub fn delete(args: &DeleteArgs) -> ExitCode {
    super::finish("delete", run_delete(args))
}

fn run_delete(args: &DeleteArgs) -> Result<ExitCode, Failure> {
    let kind = kind(&args.kind)?;
    let target = Target::resolve(&args.api)?;
    let tenant = target.tenant()?;
    let mesh = mesh_of(&target, kind, args.mesh.as_deref())?;
    runtime()?
        .block_on(
            target
                .client
                .delete_resource(tenant, kind, mesh, &args.name),
        )
        .map_err(api_failure)?;
    print(&format!("{} deleted\n", label(kind, mesh, &args.name)))?;
    Ok(ExitCode::SUCCESS)
}

/// One stream as `GET …/proxies` shows it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamView {
    node: String,
    replica: String,
    connected_since: String,
    #[serde(flatten)]
    status: ProxyStatusRecord,
}

#[derive(Deserialize)]
struct StreamList {
    items: Vec<StreamView>,
}

pub fn status(args: &StatusArgs) -> ExitCode {
    super::finish("status", run_status(args))
}

fn run_status(args: &StatusArgs) -> Result<ExitCode, Failure> {
    let target = Target::resolve(&args.api)?;
    let tenant = target.tenant()?;
    let mesh = target.mesh(args.mesh.as_deref())?;
    let answer = runtime()?
        .block_on(target.client.proxies(tenant, mesh))
        .map_err(api_failure)?;
    if args.output != Output::Table {
        print(&structured(args.output, &answer)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let list: StreamList = serde_json::from_value(answer)
        .map_err(|e| error(format!("unexpected answer from the API: {e}")))?;
    if list.items.is_empty() {
        eprintln!("no proxies connected to mesh {mesh:?}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![];
    let mut nacks = String::new();
    for s in &list.items {
        let types = s
            .status
            .types
            .iter()
            .map(|t| format!("{}:{}", t.type_name, state(t.state)))
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(vec![
            s.node.clone(),
            s.status.role.clone(),
            s.replica.clone(),
            s.connected_since.clone(),
            s.status
                .acked_revision
                .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            types,
        ]);
        for t in &s.status.types {
            if let (TypeState::Nacked, Some(n)) = (t.state, &t.nack) {
                nacks.push_str(&format!(
                    "{} NACKed {} of revision {}: {}\n",
                    s.node,
                    t.type_name,
                    n.revision,
                    n.error.replace('\n', " ")
                ));
            }
        }
    }
    let mut text = table(
        &[
            "NODE",
            "ROLE",
            "REPLICA",
            "CONNECTED",
            "ACKED REVISION",
            "TYPES",
        ],
        &rows,
    );
    if !nacks.is_empty() {
        text.push('\n');
        text.push_str(&nacks);
    }
    print(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn state(s: TypeState) -> &'static str {
    match s {
        TypeState::Requested => "REQUESTED",
        TypeState::Pending => "PENDING",
        TypeState::Acked => "ACK",
        TypeState::Nacked => "NACK",
    }
}

/// `GET …/rollout` as the API writes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rollout {
    revision: i64,
    mesh_revision: i64,
    proxies: usize,
    acked: usize,
    complete: bool,
    #[serde(default)]
    pending: Vec<Pending>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    node: String,
    reason: String,
    #[serde(default)]
    acked_revision: Option<i64>,
    #[serde(default)]
    nack: Option<Value>,
    #[serde(default)]
    disconnected_since: Option<String>,
}

pub fn rollout(args: &RolloutArgs) -> ExitCode {
    super::finish("rollout", run_rollout(args))
}

fn run_rollout(args: &RolloutArgs) -> Result<ExitCode, Failure> {
    let target = Target::resolve(&args.api)?;
    let tenant = target.tenant()?;
    let mesh = target.mesh(args.mesh.as_deref())?;
    let answer = runtime()?
        .block_on(target.client.rollout(tenant, mesh, args.revision))
        .map_err(api_failure)?;
    if args.output != Output::Table {
        print(&structured(args.output, &answer)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let r: Rollout = serde_json::from_value(answer)
        .map_err(|e| error(format!("unexpected answer from the API: {e}")))?;
    let mut text = format!(
        "revision {} (mesh {mesh:?} at revision {}): {}/{} proxies have it{}\n",
        r.revision,
        r.mesh_revision,
        r.acked,
        r.proxies,
        if r.complete { ", complete" } else { "" }
    );
    if !r.pending.is_empty() {
        let rows: Vec<Vec<String>> = r
            .pending
            .iter()
            .map(|p| {
                let s = |v: &Value, k: &str| {
                    v.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let detail = match (&p.nack, &p.disconnected_since) {
                    (Some(n), _) => {
                        format!("{}: {}", s(n, "type"), s(n, "error").replace('\n', " "))
                    }
                    (None, Some(since)) => format!("since {since}"),
                    (None, None) => String::new(),
                };
                vec![
                    p.node.clone(),
                    p.reason.to_uppercase(),
                    p.acked_revision
                        .map_or_else(|| "-".to_owned(), |r| r.to_string()),
                    detail,
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&table(
            &["NODE", "REASON", "ACKED REVISION", "DETAIL"],
            &rows,
        ));
    }
    print(&text)?;
    Ok(ExitCode::SUCCESS)
}
