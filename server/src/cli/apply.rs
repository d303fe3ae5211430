//! `switchboard apply -f` and `switchboard diff -f`: files of documents (as `export`
//! writes them: `{apiVersion, kind, mesh, name, spec}`, YAML or JSON, several per file),
//! sent to the API's import, one call (one transaction) per mesh.
//!
//! Each file is read whole first, so a syntax error anywhere applies nothing. With several
//! meshes, every mesh's documents are checked by a dry-run import before any is written, so
//! a bad document (named by file, document number and field) applies nothing of any file.
//! Applying the same files again changes nothing: the store writes nothing for a spec equal
//! to the stored one, and commits nothing (no new revision) when nothing changed.
//!
//! Every document is sent labelled `switchboard.dev/managed-by: apply`. With `--prune`, each
//! import also deletes, in its mesh, every resource carrying that label that the files no
//! longer name (in the same transaction): resources written some other way are never pruned,
//! nor anything in a mesh the files do not name.
//!
//! `diff` asks the dry run for the specs as they would be stored (defaults filled in, as
//! the server normalizes them) and compares them with what a GET shows now: a unified diff
//! per changed resource, exit 3 when there is one.

use super::{ApiArgs, Failure, Target, api_failure, error, print, runtime, usage};
use clap::Args;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use switchboard_client::bundle::{Documents, document_field};
use switchboard_client::resources::parse_kind;
use switchboard_client::{Client, ClientError};
use switchboard_model::{MANAGED_BY, MANAGED_BY_APPLY};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// A YAML or JSON file of documents, a directory (its *.yaml, *.yml and *.json files,
    /// not its subdirectories) or `-` for standard input; may be repeated.
    #[arg(short, long = "filename", required = true)]
    pub file: Vec<PathBuf>,
    /// Check everything, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete what `apply` wrote earlier in these meshes and the files no longer name.
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// As for `apply`.
    #[arg(short, long = "filename", required = true)]
    pub file: Vec<PathBuf>,
    /// Also show what `apply --prune` would delete.
    #[arg(long)]
    pub prune: bool,
}

/// A document and where it came from.
pub(super) struct Sourced {
    pub(super) document: Value,
    file: String,
    /// Its number in the file (1-based).
    position: usize,
}

impl Sourced {
    /// Its file and number in it.
    pub(super) fn place(&self) -> (String, usize) {
        (self.file.clone(), self.position)
    }
}

/// The documents of every path, in order.
pub(super) fn load(paths: &[PathBuf]) -> Result<Vec<Sourced>, Failure> {
    let mut files = vec![];
    for path in paths {
        if path.as_os_str() == "-" {
            files.push((PathBuf::from("<stdin>"), true));
        } else if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(usage(format!(
                    "{}: no .yaml, .yml or .json file in it",
                    path.display()
                )));
            }
            files.extend(found.into_iter().map(|p| (p, false)));
        } else {
            files.push((path.clone(), false));
        }
    }
    let mut out = vec![];
    for (path, stdin) in files {
        let name = path.display().to_string();
        let text = if stdin {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| error(format!("cannot read standard input: {e}")))?;
            text
        } else {
            std::fs::read_to_string(&path).map_err(|e| usage(format!("cannot read {name}: {e}")))?
        };
        let docs = Documents::parse(&text).map_err(|e| error(format!("{name}: {e}")))?;
        for (document, position) in docs.documents.into_iter().zip(docs.positions) {
            out.push(Sourced {
                document,
                file: name.clone(),
                position,
            });
        }
    }
    Ok(out)
}

/// The documents by mesh (a mesh document's mesh is its name), each group in file order.
/// A document naming no mesh goes in its own group, for the API to say what is missing.
pub(super) fn by_mesh(docs: Vec<Sourced>) -> Vec<Vec<Sourced>> {
    let mut groups: BTreeMap<String, Vec<Sourced>> = BTreeMap::new();
    for d in docs {
        groups.entry(mesh_of(&d.document)).or_default().push(d);
    }
    groups.into_values().collect()
}

/// The mesh a document is in (a mesh document's is its name); empty when it names none.
pub(super) fn mesh_of(document: &Value) -> String {
    let text = |k: &str| {
        document
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match document
        .get("kind")
        .and_then(Value::as_str)
        .and_then(parse_kind)
    {
        Some(switchboard_model::Kind::Mesh) => text("name"),
        _ => text("mesh"),
    }
}

/// An import's problem, its fields named by file, document and field.
pub(super) fn explain(e: ClientError, group: &[Sourced]) -> Failure {
    match e {
        ClientError::Problem { problem } if !problem.errors.is_empty() => error(
            problem
                .errors
                .iter()
                .map(|f| {
                    match document_field(&f.field).and_then(|(i, at)| Some((group.get(i)?, at))) {
                        Some((d, "")) => {
                            format!("{}: document {}: {}", d.file, d.position, f.message)
                        }
                        Some((d, at)) => {
                            format!("{}: document {}: {at}: {}", d.file, d.position, f.message)
                        }
                        None => format!("{}: {}", f.field, f.message),
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        e => api_failure(e),
    }
}

/// `document` with apply's label, [`MANAGED_BY`] = [`MANAGED_BY_APPLY`], added to its own.
fn managed(document: &Value) -> Value {
    let mut document = document.clone();
    if let Some(doc) = document.as_object_mut() {
        let labels = doc
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(MANAGED_BY.into(), MANAGED_BY_APPLY.into());
        }
    }
    document
}

/// How an import is made.
#[derive(Debug, Clone, Copy)]
struct Mode {
    dry_run: bool,
    prune: bool,
}

/// One import of a group (a dry run, or not): the API's items, one per document, then one per
/// resource pruned.
async fn import(
    client: &Client,
    tenant: &str,
    group: &[Sourced],
    mode: Mode,
) -> Result<(Option<i64>, Vec<Value>), Failure> {
    let docs = Documents {
        documents: group.iter().map(|d| managed(&d.document)).collect(),
        positions: group.iter().map(|d| d.position).collect(),
    };
    let result = client
        .import(tenant, &docs, None, mode.dry_run, mode.prune)
        .await
        .map_err(|e| explain(e, group))?;
    let items = match result.get("items") {
        Some(Value::Array(items)) if items.len() >= group.len() => items.clone(),
        _ => {
            return Err(error(
                "unexpected answer from the API: no item per document",
            ));
        }
    };
    Ok((result.get("revision").and_then(Value::as_i64), items))
}

fn field<'a>(item: &'a Value, key: &str) -> &'a str {
    item.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// `kind mesh/name` (`mesh name` for a mesh).
fn label(item: &Value) -> String {
    match field(item, "mesh") {
        "" => format!("{} {}", field(item, "kind"), field(item, "name")),
        mesh => format!("{} {mesh}/{}", field(item, "kind"), field(item, "name")),
    }
}

pub fn apply(args: &ApplyArgs) -> ExitCode {
    super::finish("apply", run_apply(args))
}

fn run_apply(args: &ApplyArgs) -> Result<ExitCode, Failure> {
    let target = Target::resolve(&args.api)?;
    let tenant = target.tenant()?;
    let groups = by_mesh(load(&args.file)?);
    let mode = Mode {
        dry_run: args.dry_run,
        prune: args.prune,
    };
    runtime()?.block_on(apply_groups(&target.client, tenant, &groups, mode))
}

async fn apply_groups(
    client: &Client,
    tenant: &str,
    groups: &[Vec<Sourced>],
    mode: Mode,
) -> Result<ExitCode, Failure> {
    let dry_run = mode.dry_run;
    // Several transactions: check them all before writing any.
    if groups.len() > 1 || dry_run {
        let check = Mode {
            dry_run: true,
            ..mode
        };
        for g in groups {
            import(client, tenant, g, check).await?;
        }
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut revisions = vec![];
    let mut lines = String::new();
    for g in groups {
        let (revision, items) = import(client, tenant, g, mode).await?;
        revisions.extend(revision);
        for item in &items {
            let effect = field(item, "effect");
            *counts.entry(effect.to_owned()).or_default() += 1;
            lines.push_str(&format!("{} {effect}\n", label(item)));
        }
    }
    print(&lines)?;
    let mut effects = vec!["created", "updated", "unchanged"];
    if mode.prune {
        effects.push("deleted");
    }
    let summary = effects
        .iter()
        .map(|e| format!("{} {e}", counts.get(*e).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ");
    match (dry_run, revisions.iter().max()) {
        (true, _) => eprintln!("dry run: {summary}; nothing written"),
        (false, Some(r)) => eprintln!("applied: {summary} (revision {r})"),
        (false, None) => eprintln!("applied: {summary}; nothing changed"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn diff(args: &DiffArgs) -> ExitCode {
    super::finish("diff", run_diff(args))
}

fn run_diff(args: &DiffArgs) -> Result<ExitCode, Failure> {
    let target = Target::resolve(&args.api)?;
    let tenant = target.tenant()?;
    let groups = by_mesh(load(&args.file)?);
    runtime()?.block_on(diff_groups(&target.client, tenant, &groups, args.prune))
}

async fn diff_groups(
    client: &Client,
    tenant: &str,
    groups: &[Vec<Sourced>],
    prune: bool,
) -> Result<ExitCode, Failure> {
    let mode = Mode {
        dry_run: true,
        prune,
    };
    let mut planned = vec![];
    for g in groups {
        planned.extend(import(client, tenant, g, mode).await?.1);
    }
    let mut out = String::new();
    for item in &planned {
        let before = match field(item, "effect") {
            "updated" | "deleted" => {
                let kind = parse_kind(field(item, "kind")).ok_or_else(|| {
                    error(format!(
                        "unknown kind in the API's answer: {}",
                        field(item, "kind")
                    ))
                })?;
                let live = client
                    .get_resource(tenant, kind, field(item, "mesh"), field(item, "name"))
                    .await
                    .map_err(api_failure)?;
                yaml(&live)?
            }
            "created" => String::new(),
            _ => continue,
        };
        let after = match field(item, "effect") {
            "deleted" => String::new(),
            _ => yaml(item)?,
        };
        let name = label(item).replace(' ', "/");
        out.push_str(
            &similar::TextDiff::from_lines(&before, &after)
                .unified_diff()
                .context_radius(3)
                .header(&format!("live/{name}"), &format!("file/{name}"))
                .to_string(),
        );
    }
    if out.is_empty() {
        eprintln!("no changes");
        return Ok(ExitCode::SUCCESS);
    }
    print(&out)?;
    Ok(ExitCode::from(3))
}

/// A resource's labels and spec (from a GET, or a dry run's item) as YAML, for diffing line
/// by line.
fn yaml(resource: &Value) -> Result<String, Failure> {
    let labels = resource
        .get("labels")
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    let spec = resource.get("spec").cloned().unwrap_or(Value::Null);
    serde_yaml_ng::to_string(&serde_json::json!({"labels": labels, "spec": spec}))
        .map_err(|e| error(format!("cannot write a spec as YAML: {e}")))
}
