//! `switchboard history`, `rollback` and `audit`: a resource's revisions with the key that
//! wrote each, a resource or a whole mesh written back to a revision, and who changed what
//! in the tenant. Tables by default; `-o yaml|json` writes the API's answer.

use super::show::{kind, structured};
use super::{ApiArgs, Failure, Output, Target, api_failure, error, print, runtime, table, usage};
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use std::process::ExitCode;
use switchboard_client::resources::document_kind;
use switchboard_model::Kind;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// mesh, service, endpoint, route, gateway, authorization-policy or certificate.
    pub kind: String,
    pub name: String,
    /// The mesh (every kind but meshes); default: the context's.
    #[arg(short, long)]
    pub mesh: Option<String>,
    /// At most this many revisions, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The kind as for `history`; `mesh` rolls the whole mesh NAME back.
    pub kind: String,
    pub name: String,
    /// The revision to go back to (see `switchboard history`).
    #[arg(long)]
    pub to_revision: i64,
    /// The mesh (every kind but meshes); default: the context's.
    #[arg(short, long)]
    pub mesh: Option<String>,
    /// Check that the rollback would apply; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only this mesh's changes.
    #[arg(short, long)]
    pub mesh: Option<String>,
    /// Only the changes of this credential id.
    #[arg(long)]
    pub credential: Option<String>,
    /// Only from this time (RFC 3339, e.g. 2026-01-31T12:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many entries, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

/// The credential of an entry, as the API shows it.
#[derive(Deserialize)]
struct CredentialRef {
    id: String,
    description: String,
}

/// One revision, as `GET …/history` lists it.
#[derive(Deserialize)]
struct HistoryItem {
    revision: i64,
    time: String,
    op: String,
    credential: Option<CredentialRef>,
}

/// One entry, as `GET …/audit` lists it.
#[derive(Deserialize)]
struct AuditItem {
    revision: i64,
    time: String,
    #[serde(default)]
    mesh: String,
    kind: String,
    name: String,
    op: String,
    credential: Option<CredentialRef>,
}

/// What `POST …/{kind}/{name}/rollback` answers (the part the table shows).
#[derive(Deserialize)]
struct RollbackAnswer {
    effect: String,
    resource: RolledBack,
}

#[derive(Deserialize)]
struct RolledBack {
    revision: i64,
}

/// What `POST …/meshes/{m}/rollback` answers.
#[derive(Deserialize)]
struct MeshRollbackAnswer {
    revision: Option<i64>,
    items: Vec<MeshRollbackItem>,
}

#[derive(Deserialize)]
struct MeshRollbackItem {
    kind: String,
    name: String,
    effect: String,
}

/// The API's answer as `T`.
fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| error(format!("unexpected answer from the API: {e}")))
}

/// `id (description)`, or `-` for the control plane's own changes.
fn credential(c: &Option<CredentialRef>) -> String {
    match c {
        Some(c) => format!("{} ({})", c.id, c.description),
        None => "-".to_owned(),
    }
}

pub fn history(args: &HistoryArgs) -> ExitCode {
    super::finish("history", run_history(args))
}

fn run_history(args: &HistoryArgs) -> Result<ExitCode, Failure> {
    let kind = kind(&args.kind)?;
    let target = Target::resolve(&args.api)?;
    let tenant = target.tenant()?;
    let mesh = match kind {
        Kind::Mesh => "",
        _ => target.mesh(args.mesh.as_deref())?,
    };
    let items = runtime()?
        .block_on(
            target
                .client
                .history(tenant, kind, mesh, &args.name, args.limit),
        )
        .map_err(api_failure)?;
    if args.output != Output::Table {
        return print(&structured(args.output, &json!({ "items": items }))?)
            .map(|()| ExitCode::SUCCESS);
    }
    if items.is_empty() {
        eprintln!("no history for {} {:?}", document_kind(kind), args.name);
        return Ok(ExitCode::SUCCESS);
    }
    let items: Vec<HistoryItem> = typed(Value::Array(items))?;
    let rows: Vec<Vec<String>> = items
        .into_iter()
        .map(|h| {
            vec![
                h.revision.to_string(),
                h.time,
                h.op,
                credential(&h.credential),
            ]
        })
        .collect();
    print(&table(&["REVISION", "TIME", "OP", "CREDENTIAL"], &rows))?;
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(args: &RollbackArgs) -> ExitCode {
    super::finish("rollback", run_rollback(args))
}

fn run_rollback(args: &RollbackArgs) -> Result<ExitCode, Failure> {
    let kind = kind(&args.kind)?;
    if args.to_revision < 0 {
        return Err(usage(format!(
            "--to-revision {} is negative: revisions start at 0",
            args.to_revision
        )));
    }
    let target = Target::resolve(&args.api)?;
    let tenant = target.tenant()?;
    let rt = runtime()?;
    let n = args.to_revision;
    let dry = if args.dry_run { " (dry run)" } else { "" };
    if kind == Kind::Mesh {
        let answer = rt
            .block_on(
                target
                    .client
                    .rollback_mesh(tenant, &args.name, n, args.dry_run),
            )
            .map_err(api_failure)?;
        if args.output != Output::Table {
            return print(&structured(args.output, &answer)?).map(|()| ExitCode::SUCCESS);
        }
        let answer: MeshRollbackAnswer = typed(answer)?;
        let items = answer.items;
        let mut out = match answer.revision {
            Some(r) => format!(
                "mesh {} rolled back to revision {n} at revision {r}\n",
                args.name
            ),
            None if items.is_empty() => {
                format!("mesh {} is as it was at revision {n}{dry}\n", args.name)
            }
            None => format!("mesh {} would roll back to revision {n}{dry}\n", args.name),
        };
        for i in &items {
            out.push_str(&format!("  {} {} {}\n", i.kind, i.name, i.effect));
        }
        print(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mesh = target.mesh(args.mesh.as_deref())?;
    let answer = rt
        .block_on(
            target
                .client
                .rollback(tenant, kind, mesh, &args.name, n, args.dry_run),
        )
        .map_err(api_failure)?;
    if args.output != Output::Table {
        return print(&structured(args.output, &answer)?).map(|()| ExitCode::SUCCESS);
    }
    let answer: RollbackAnswer = typed(answer)?;
    let what = format!("{} {mesh}/{}", document_kind(kind), args.name);
    let line = match (answer.effect.as_str(), args.dry_run) {
        ("deleted", _) => format!("{what} deleted: it did not exist at revision {n}{dry}\n"),
        (_, true) => format!("{what} would roll back to revision {n}{dry}\n"),
        _ => format!(
            "{what} rolled back to revision {n} at revision {}\n",
            answer.resource.revision
        ),
    };
    print(&line)?;
    Ok(ExitCode::SUCCESS)
}

pub fn audit(args: &AuditArgs) -> ExitCode {
    super::finish("audit", run_audit(args))
}

fn run_audit(args: &AuditArgs) -> Result<ExitCode, Failure> {
    let target = Target::resolve(&args.api)?;
    let tenant = target.tenant()?;
    let items = runtime()?
        .block_on(target.client.audit(
            tenant,
            args.mesh.as_deref(),
            args.credential.as_deref(),
            args.since.as_deref(),
            args.limit,
        ))
        .map_err(api_failure)?;
    if args.output != Output::Table {
        return print(&structured(args.output, &json!({ "items": items }))?)
            .map(|()| ExitCode::SUCCESS);
    }
    if items.is_empty() {
        eprintln!("no changes recorded");
        return Ok(ExitCode::SUCCESS);
    }
    let items: Vec<AuditItem> = typed(Value::Array(items))?;
    let rows: Vec<Vec<String>> = items
        .into_iter()
        .map(|a| {
            let name = match a.mesh.as_str() {
                "" => a.name,
                m if a.kind == "mesh" => m.to_owned(),
                m => format!("{m}/{}", a.name),
            };
            vec![
                a.time,
                a.revision.to_string(),
                credential(&a.credential),
                a.op,
                a.kind,
                name,
            ]
        })
        .collect();
    print(&table(
        &["TIME", "REVISION", "CREDENTIAL", "OP", "KIND", "NAME"],
        &rows,
    ))?;
    Ok(ExitCode::SUCCESS)
}
