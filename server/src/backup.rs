//! `switchboard export` and `switchboard import`: a tenant's backup as a YAML file, and its
//! restore, through the REST API (`switchboard-client`). The API does the work (one
//! consistent read; one transaction); this module reads flags, files and the environment,
//! and turns problems into one line naming the file, the document and the field.
//!
//! The API, key and tenant come as for every verb (`cli::Target`: flags, environment, then
//! the config file's context). Exit codes: 0 done, 1 an error (one line on stderr), 2 bad
//! usage.

use crate::cli::{ApiArgs, Failure, Target, error, finish, print, read_secret, runtime, usage};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchboard_client::ClientError;
use switchboard_client::bundle::{Documents, to_yaml};
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Include the meshes' CA keys and the certificates' private keys, encrypted with the
    /// passphrase in --passphrase-file.
    #[arg(long, requires = "passphrase_file")]
    pub include_secrets: bool,
    /// A file holding the passphrase (at least 12 characters; one trailing newline is
    /// ignored).
    #[arg(long, requires = "include_secrets")]
    pub passphrase_file: Option<PathBuf>,
    /// Write the YAML here (created with mode 0600) instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The YAML (or JSON) file of documents; `-` reads standard input.
    #[arg(short, long)]
    pub file: PathBuf,
    /// Check everything, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A file holding the export's passphrase, for documents with encrypted secrets.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

/// An API failure as one line; `documents` names the documents of the import's file.
fn api_failure(e: ClientError, file: Option<(&str, &Documents)>) -> Failure {
    match (e, file) {
        (ClientError::Problem { problem }, Some((name, docs))) if !problem.errors.is_empty() => {
            error(format!(
                "{name}: {}",
                docs.explain(&problem.errors).join("; ")
            ))
        }
        (e, _) => crate::cli::api_failure(e),
    }
}

/// Writes `text` to `path`, replacing it; a new file is readable by its owner only (an
/// export may hold encrypted keys, and always the tenant's configuration).
fn write_owner_only(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)?.write_all(text.as_bytes())
}

pub fn export(args: &ExportArgs) -> ExitCode {
    finish("export", run_export(args).map(|()| ExitCode::SUCCESS))
}

fn run_export(args: &ExportArgs) -> Result<(), Failure> {
    let target = Target::resolve(&args.api)?;
    let (client, tenant) = (&target.client, target.tenant()?);
    let passphrase = match (&args.passphrase_file, args.include_secrets) {
        (Some(path), true) => Some(read_secret(path, "passphrase")?),
        _ => None,
    };
    let export = runtime()?
        .block_on(client.export(tenant, passphrase.as_ref().map(|p| p.as_str())))
        .map_err(|e| api_failure(e, None))?;
    let yaml = Zeroizing::new(
        to_yaml(&export).map_err(|e| error(format!("cannot write the export as YAML: {e}")))?,
    );
    match &args.output {
        Some(path) => write_owner_only(path, &yaml)
            .map_err(|e| error(format!("cannot write {}: {e}", path.display())))?,
        None => print(&yaml)?,
    }
    let count = export
        .get("documents")
        .and_then(|d| d.as_array())
        .map_or(0, Vec::len);
    eprintln!(
        "exported {count} documents of tenant {:?} at revision {} (secrets {})",
        tenant,
        export.get("revision").and_then(|r| r.as_i64()).unwrap_or(0),
        export
            .get("secrets")
            .and_then(|s| s.as_str())
            .unwrap_or("omitted"),
    );
    Ok(())
}

pub fn import(args: &ImportArgs) -> ExitCode {
    finish("import", run_import(args).map(|()| ExitCode::SUCCESS))
}

fn run_import(args: &ImportArgs) -> Result<(), Failure> {
    let target = Target::resolve(&args.api)?;
    let (client, tenant) = (&target.client, target.tenant()?);
    let passphrase = match &args.passphrase_file {
        Some(path) => Some(read_secret(path, "passphrase")?),
        None => None,
    };
    let (name, text) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| error(format!("cannot read standard input: {e}")))?;
        ("<stdin>".to_owned(), text)
    } else {
        let name = args.file.display().to_string();
        let text = std::fs::read_to_string(&args.file)
            .map_err(|e| usage(format!("cannot read {name}: {e}")))?;
        (name, text)
    };
    let docs = Documents::parse(&text).map_err(|e| error(format!("{name}: {e}")))?;
    let result = runtime()?
        .block_on(client.import(
            tenant,
            &docs,
            passphrase.as_ref().map(|p| p.as_str()),
            args.dry_run,
            false,
        ))
        .map_err(|e| api_failure(e, Some((&name, &docs))))?;
    let items = result
        .get("items")
        .and_then(|i| i.as_array())
        .cloned()
        .unwrap_or_default();
    let count = |effect: &str| {
        items
            .iter()
            .filter(|i| i.get("effect").and_then(|e| e.as_str()) == Some(effect))
            .count()
    };
    let summary = format!(
        "{} created, {} updated, {} unchanged",
        count("created"),
        count("updated"),
        count("unchanged")
    );
    match (
        args.dry_run,
        result.get("revision").and_then(|r| r.as_i64()),
    ) {
        (true, _) => eprintln!(
            "dry run of {name} into tenant {:?}: {} documents would import ({summary}); nothing written",
            tenant,
            items.len()
        ),
        (false, Some(revision)) => eprintln!(
            "imported {name} into tenant {:?} at revision {revision}: {summary}",
            tenant
        ),
        (false, None) => eprintln!(
            "imported {name} into tenant {:?}: nothing changed ({summary})",
            tenant
        ),
    }
    Ok(())
}
