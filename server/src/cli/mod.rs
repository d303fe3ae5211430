//! The CLI's verbs over the REST API (`switchboard-client`): `login` and `config` (named
//! contexts in a config file, `context`), `apply` and `diff` (files of documents, `apply`),
//! `plan` (what files would send to which proxies, `plan`), `get`, `delete`, `status` and
//! `rollout` (`show`), `history`, `rollback` and `audit` (`history`), and shell completions
//! and the man page.
//! The API does the work; these modules read flags, files and the environment, and turn
//! problems into one line.
//!
//! Exit codes, for CI: 0 done, 1 an error (one line on stderr), 2 bad usage, 3 `diff` or
//! `plan` found changes.

pub mod apply;
pub mod context;
pub mod history;
pub mod plan;
pub mod show;

use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchboard_client::{Client, ClientError};
use zeroize::Zeroizing;

/// Where the API is, who calls it and for which tenant. Each flag (or its variable)
/// overrides the context's value; the context is `--context`, else the config file's
/// current one.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The context of the config file to use instead of its current one.
    #[arg(long, env = "SWITCHBOARD_CONTEXT")]
    pub context: Option<String>,
    /// The REST API's base URL (http:// or https://); default http://127.0.0.1:8080.
    #[arg(long, env = "SWITCHBOARD_API_URL")]
    pub api_url: Option<String>,
    /// A file holding the API key (or the admin token); else $SWITCHBOARD_TOKEN, else the
    /// context's key.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The tenant.
    #[arg(long, env = "SWITCHBOARD_TENANT")]
    pub tenant: Option<String>,
    /// PEM certificates to trust for an https:// API instead of the platform's roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// How `get`, `status`, `rollout`, `history` and `audit` write what they read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

/// A failure: its message, and whether it is bad usage (exit 2) or an error (exit 1).
pub struct Failure {
    usage: bool,
    message: String,
}

pub fn error(message: impl Into<String>) -> Failure {
    Failure {
        usage: false,
        message: message.into(),
    }
}

pub fn usage(message: impl Into<String>) -> Failure {
    Failure {
        usage: true,
        message: message.into(),
    }
}

/// The exit code of a verb, its failure written as one line.
pub fn finish(verb: &str, result: Result<ExitCode, Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("switchboard {verb}: {}", f.message.replace('\n', " "));
            ExitCode::from(if f.usage { 2 } else { 1 })
        }
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| error(format!("cannot start the async runtime: {e}")))
}

/// A secret from a file (`-`: standard input): one trailing newline removed.
pub fn read_secret(path: &Path, what: &str) -> Result<Zeroizing<String>, Failure> {
    let text = if path.as_os_str() == "-" {
        let mut text = Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| error(format!("cannot read the {what} from standard input: {e}")))?;
        text
    } else {
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            usage(format!(
                "cannot read the {what} file {}: {e}",
                path.display()
            ))
        })?)
    };
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    if trimmed.trim().is_empty() {
        return Err(usage(format!(
            "the {what} file {} is empty",
            path.display()
        )));
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

/// The API as the flags, the environment and the context say, with the tenant and the
/// default mesh.
pub struct Target {
    pub client: Client,
    tenant: Option<String>,
    mesh: Option<String>,
}

impl Target {
    pub fn resolve(args: &ApiArgs) -> Result<Target, Failure> {
        let config = context::ConfigFile::load()?;
        let ctx = config.context(args.context.as_deref())?;
        let token = match &args.token_file {
            Some(path) => read_secret(path, "token")?,
            None => match std::env::var("SWITCHBOARD_TOKEN") {
                Ok(t) if !t.trim().is_empty() => Zeroizing::new(t),
                _ => match ctx {
                    Some(c) => Zeroizing::new(c.token.clone()),
                    None => {
                        return Err(usage(
                            "no API key: give --token-file FILE, set SWITCHBOARD_TOKEN, or \
                             `switchboard login`",
                        ));
                    }
                },
            },
        };
        let api_url = args
            .api_url
            .clone()
            .or_else(|| ctx.map(|c| c.api_url.clone()))
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
        let ca_file = args
            .ca_file
            .clone()
            .or_else(|| ctx.and_then(|c| c.ca_file.clone()));
        let ca =
            match &ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    usage(format!("cannot read the CA file {}: {e}", path.display()))
                })?),
                None => None,
            };
        let client = Client::new(&api_url, &token, ca.as_deref()).map_err(|e| match e {
            ClientError::Ca(why) => usage(format!(
                "the CA file {}: {why}",
                ca_file.as_deref().unwrap_or(Path::new("")).display()
            )),
            e => usage(e.to_string()),
        })?;
        Ok(Target {
            client,
            tenant: args
                .tenant
                .clone()
                .or_else(|| ctx.and_then(|c| c.tenant.clone())),
            mesh: ctx.and_then(|c| c.mesh.clone()),
        })
    }

    pub fn tenant(&self) -> Result<&str, Failure> {
        self.tenant.as_deref().ok_or_else(|| {
            usage("no tenant: give --tenant, or log in with one (`switchboard login --tenant`)")
        })
    }

    /// The mesh: `given`, else the context's.
    pub fn mesh<'a>(&'a self, given: Option<&'a str>) -> Result<&'a str, Failure> {
        given.or(self.mesh.as_deref()).ok_or_else(|| {
            usage("no mesh: give --mesh, or log in with one (`switchboard login --mesh`)")
        })
    }
}

/// An API failure as one line: the fields it names, else its detail.
pub fn api_failure(e: ClientError) -> Failure {
    match e {
        ClientError::Problem { problem } if !problem.errors.is_empty() => error(
            problem
                .errors
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        e => error(e.to_string()),
    }
}

/// Writes `text` to standard output.
pub fn print(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| error(format!("cannot write to standard output: {e}")))
}

/// Rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0) + 3;
                out.push_str(&format!("{cell:<pad$}"));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `switchboard completion SHELL`: the completion script, from the clap definition.
pub fn completion(shell: clap_complete::Shell, mut command: clap::Command) -> ExitCode {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "switchboard", &mut out);
    finish(
        "completion",
        print(&String::from_utf8_lossy(&out)).map(|()| ExitCode::SUCCESS),
    )
}

/// `switchboard man`: the man page (roff) from the clap definition, on standard output;
/// with `dir`, one page per command there (`switchboard.1`, `switchboard-apply.1`, …).
pub fn man(command: clap::Command, dir: Option<&Path>) -> ExitCode {
    let result = match dir {
        Some(dir) => clap_mangen::generate_to(command, dir).map_err(|e| {
            error(format!(
                "cannot write the man pages to {}: {e}",
                dir.display()
            ))
        }),
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .map_err(|e| error(format!("cannot render the man page: {e}")))
                .and_then(|()| print(&String::from_utf8_lossy(&out)))
        }
    };
    finish("man", result.map(|()| ExitCode::SUCCESS))
}
