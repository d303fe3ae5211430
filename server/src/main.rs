//! `switchboard`: the control plane (`serve`, `migrate`) and `bootstrap`, which prints a
//! bootstrap file for a proxy or a proxyless gRPC client.
//!
//! - `settings`: every setting declared once (flag, `SWITCHBOARD_*` variable, config file key,
//!   default), layered and validated.
//! - `serve`: start-up (logging, store, admin token, listeners) and shutdown.
//! - `ca_key`: the key that encrypts the mesh CAs' keys (configured, or generated for SQLite)
//!   and its check against the store.
//! - `admin`: the admin port (`/metrics`, `/healthz`, `/readyz`); `metrics`: the Prometheus
//!   exporter, its buckets and every documented metric; `memory`: the allocator's statistics
//!   as gauges.
//! - `tls`: TLS on the REST and xDS ports, the certificate re-read when its files change.
//! - `bootstrap`: the `bootstrap` subcommand.
//! - `backup`: the `export` and `import` subcommands (a tenant's backup and restore through
//!   the REST API).
//! - `cli`: the verbs over the REST API (`login`, `config`, `apply`, `diff`, `plan`, `get`,
//!   `delete`, `status`, `rollout`, `history`, `rollback`, `audit`) and `completion` and `man`.

mod admin;
mod backup;
mod bootstrap;
mod ca_key;
mod cli;
mod issuer;
mod memory;
mod metrics;
mod node_configs;
mod serve;
mod settings;
mod telemetry;
mod tls;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// See the `jemalloc` feature in Cargo.toml: memory freed when streams close goes back to the
/// system.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use std::process::ExitCode;

/// Writes a new secret file readable by its owner only (mode 0600); never overwrites.
fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Switchboard: a multi-tenant xDS control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: REST API, xDS server and admin endpoints.
    Serve(settings::ServeArgs),
    /// Apply database migrations and exit (serve also applies them at start-up).
    Migrate(settings::ServeArgs),
    /// Print a bootstrap for a node: `bootstrap proxy` (switchboard-proxy) or `bootstrap grpc`.
    #[command(subcommand)]
    Bootstrap(bootstrap::Bootstrap),
    /// Write a tenant's meshes and resources as YAML documents (secrets only when asked,
    /// encrypted with a passphrase).
    Export(backup::ExportArgs),
    /// Apply a file of documents (as `export` writes them) to a tenant in one transaction.
    Import(backup::ImportArgs),
    /// Save an API URL and key (and tenant, mesh, CA file) as a named context, made current.
    Login(cli::context::LoginArgs),
    /// Manage the config file's contexts.
    #[command(subcommand)]
    Config(cli::context::ConfigCommand),
    /// Create or replace the resources in files of documents (as `export` writes them), one
    /// transaction per mesh; applying the same files again changes nothing.
    Apply(cli::apply::ApplyArgs),
    /// Show what `apply` would change, as a unified diff of specs; exit 3 if it would
    /// change anything.
    Diff(cli::apply::DiffArgs),
    /// Show what files of documents (and deletions) would send to the proxies: the Envoy
    /// resources added, changed (with a JSON diff) or removed, and which connected proxies
    /// would receive each; exit 3 if any would change.
    Plan(cli::plan::PlanArgs),
    /// List the resources of a kind, or show one, as a table, YAML or JSON documents.
    Get(cli::show::GetArgs),
    /// Delete a resource (a mesh with everything in it).
    Delete(cli::show::DeleteArgs),
    /// The proxies of a mesh and what each has ACKed or NACKed.
    Status(cli::show::StatusArgs),
    /// Whether a revision has reached every proxy of a mesh, and why not where it has not.
    Rollout(cli::show::RolloutArgs),
    /// The revisions of a resource, with the API key that wrote each.
    History(cli::history::HistoryArgs),
    /// Write a resource back to its spec at a revision; `rollback mesh M` the whole mesh, in
    /// one transaction.
    Rollback(cli::history::RollbackArgs),
    /// Who changed what in the tenant, and when (newest first).
    Audit(cli::history::AuditArgs),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff); with --dir, write a page per subcommand there.
    Man {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, migrate_only) = match cli.command {
        Command::Serve(a) => (a, false),
        Command::Migrate(a) => (a, true),
        Command::Export(a) => return backup::export(&a),
        Command::Import(a) => return backup::import(&a),
        Command::Login(a) => return cli::context::login(&a),
        Command::Config(c) => return cli::context::config(&c),
        Command::Apply(a) => return cli::apply::apply(&a),
        Command::Diff(a) => return cli::apply::diff(&a),
        Command::Plan(a) => return cli::plan::plan(&a),
        Command::Get(a) => return cli::show::get(&a),
        Command::Delete(a) => return cli::show::delete(&a),
        Command::Status(a) => return cli::show::status(&a),
        Command::Rollout(a) => return cli::show::rollout(&a),
        Command::History(a) => return cli::history::history(&a),
        Command::Rollback(a) => return cli::history::rollback(&a),
        Command::Audit(a) => return cli::history::audit(&a),
        Command::Completion { shell } => return cli::completion(shell, Cli::command()),
        Command::Man { dir } => return cli::man(Cli::command(), dir.as_deref()),
        Command::Bootstrap(b) => {
            return match bootstrap::render(&b) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchboard bootstrap: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    let settings = match settings::Settings::load(&args, std::env::vars()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        if migrate_only {
            serve::migrate(settings).await
        } else {
            serve::run(settings).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
