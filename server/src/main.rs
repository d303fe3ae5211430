//! `switchboard`: the control plane (`serve`, `migrate`) and `bootstrap`, which prints a
//! bootstrap file for a proxy or a proxyless gRPC client.
//!
//! - `settings`: every setting declared once (flag, `SWITCHBOARD_*` variable, config file key,
//!   default), layered and validated.
//! - `serve`: start-up (logging, store, admin token, listeners) and shutdown.
//! - `admin`: the admin port (`/metrics`, `/healthz`, `/readyz`).
//! - `tls`: TLS on the REST and xDS ports, the certificate re-read when its files change.
//! - `bootstrap`: the `bootstrap` subcommand.

mod admin;
mod bootstrap;
mod node_configs;
mod serve;
mod settings;
mod tls;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, migrate_only) = match cli.command {
        Command::Serve(a) => (a, false),
        Command::Migrate(a) => (a, true),
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
