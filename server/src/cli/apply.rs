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
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// As for `apply`.
    #[arg(short, long = "filename", required = true)]
    pub file: Vec<PathBuf>,
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

/// One import of a group (a dry run, or not): the API's items, one per document.
async fn import(
    client: &Client,
    tenant: &str,
    group: &[Sourced],
    dry_run: bool,
) -> Result<(Option<i64>, Vec<Value>), Failure> {
    let docs = Documents {
        documents: group.iter().map(|d| d.document.clone()).collect(),
        positions: group.iter().map(|d| d.position).collect(),
    };
    let result = client
        .import(tenant, &docs, None, dry_run)
        .await
        .map_err(|e| explain(e, group))?;
    let items = match result.get("items") {
        Some(Value::Array(items)) if items.len() == group.len() => items.clone(),
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
    runtime()?.block_on(apply_groups(&target.client, tenant, &groups, args.dry_run))
}

async fn apply_groups(
    client: &Client,
    tenant: &str,
    groups: &[Vec<Sourced>],
    dry_run: bool,
) -> Result<ExitCode, Failure> {
    // Several transactions: check them all before writing any.
    if groups.len() > 1 || dry_run {
        for g in groups {
            import(client, tenant, g, true).await?;
        }
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut revisions = vec![];
    let mut lines = String::new();
    for g in groups {
        let (revision, items) = import(client, tenant, g, dry_run).await?;
        revisions.extend(revision);
        for item in &items {
            let effect = field(item, "effect");
            *counts.entry(effect.to_owned()).or_default() += 1;
            lines.push_str(&format!("{} {effect}\n", label(item)));
        }
    }
    print(&lines)?;
    let summary = ["created", "updated", "unchanged"]
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
    runtime()?.block_on(diff_groups(&target.client, tenant, &groups))
}

async fn diff_groups(
    client: &Client,
    tenant: &str,
    groups: &[Vec<Sourced>],
) -> Result<ExitCode, Failure> {
    let mut planned = vec![];
    for g in groups {
        planned.extend(import(client, tenant, g, true).await?.1);
    }
    let mut out = String::new();
    for item in &planned {
        let before = match field(item, "effect") {
            "updated" => {
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
                yaml(live.get("spec"))?
            }
            "created" => String::new(),
            _ => continue,
        };
        let after = yaml(item.get("spec"))?;
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

/// A spec as YAML, for diffing line by line.
fn yaml(spec: Option<&Value>) -> Result<String, Failure> {
    serde_yaml_ng::to_string(spec.unwrap_or(&Value::Null))
        .map_err(|e| error(format!("cannot write a spec as YAML: {e}")))
}
