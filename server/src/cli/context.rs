//! Named contexts, as kubectl's: a YAML config file of contexts (API URL, key, tenant,
//! default mesh, CA file), one of them current; `switchboard login` writes one, `config
//! use-context` / `get-contexts` / `current-context` / `delete-context` manage them. The
//! file holds API keys, so it is written with mode 0600 (its directory 0700), replaced
//! whole through a rename so a crash never leaves half a file.
//!
//! Where: `$SWITCHBOARD_CONFIG`, else `$XDG_CONFIG_HOME/switchboard/config`, else
//! `~/.config/switchboard/config`.

use super::{Failure, api_failure, error, print, read_secret, runtime, table, usage};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchboard_client::Client;

/// One context. No `Debug`: it holds the key.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Context {
    pub name: String,
    pub api_url: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// The config file. No `Debug`: it holds keys.
#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// The config file's path, from the environment.
pub fn path() -> Result<PathBuf, Failure> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("SWITCHBOARD_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = var("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(p).join("switchboard").join("config"));
    }
    match var("HOME") {
        Some(h) => Ok(PathBuf::from(h)
            .join(".config")
            .join("switchboard")
            .join("config")),
        None => Err(usage(
            "no config file: set SWITCHBOARD_CONFIG, XDG_CONFIG_HOME or HOME",
        )),
    }
}

impl ConfigFile {
    /// The config file, or an empty one where there is none.
    pub fn load() -> Result<ConfigFile, Failure> {
        let path = path()?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(error(format!("cannot read {}: {e}", path.display()))),
        };
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(&text).map_err(|e| error(format!("{}: {e}", path.display())))
    }

    /// The context `name`, else the current one (None when there is none and none was
    /// asked for).
    pub fn context(&self, name: Option<&str>) -> Result<Option<&Context>, Failure> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Ok(None);
        };
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .map(Some)
            .ok_or_else(|| usage(format!("no context {name:?} in the config file")))
    }

    fn save(&self) -> Result<PathBuf, Failure> {
        let path = path()?;
        let text = serde_yaml_ng::to_string(self)
            .map_err(|e| error(format!("cannot write the config file: {e}")))?;
        write_private(&path, &text)
            .map_err(|e| error(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    }
}

/// Writes `text` to `path` through a temporary file of mode 0600 beside it and a rename;
/// a missing directory is made with mode 0700.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() && !dir.exists() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        b.mode(0o700);
        b.create(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".to_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let written = opts
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()));
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The context to write (replaced if it exists) and make current.
    #[arg(long, default_value = "default")]
    pub context: String,
    /// The REST API's base URL (http:// or https://).
    #[arg(long, env = "SWITCHBOARD_API_URL")]
    pub api_url: String,
    /// A file holding the API key (or the admin token), `-` for standard input; else
    /// $SWITCHBOARD_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The tenant the verbs work on.
    #[arg(long, env = "SWITCHBOARD_TENANT")]
    pub tenant: Option<String>,
    /// The mesh `get`, `delete`, `status` and `rollout` use when given no --mesh.
    #[arg(long)]
    pub mesh: Option<String>,
    /// PEM certificates to trust for an https:// API instead of the platform's roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Store the context without first checking the key against the API.
    #[arg(long)]
    pub no_verify: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Make a context the current one.
    UseContext { name: String },
    /// List the contexts (the current one marked `*`).
    GetContexts,
    /// Print the current context's name.
    CurrentContext,
    /// Remove a context.
    DeleteContext { name: String },
    /// Print the config file's path.
    Path,
}

pub fn login(args: &LoginArgs) -> ExitCode {
    super::finish("login", run_login(args))
}

fn run_login(args: &LoginArgs) -> Result<ExitCode, Failure> {
    let token = match &args.token_file {
        Some(p) => read_secret(p, "token")?,
        None => match std::env::var("SWITCHBOARD_TOKEN") {
            Ok(t) if !t.trim().is_empty() => zeroize::Zeroizing::new(t.trim().to_owned()),
            _ => {
                return Err(usage(
                    "no API key: give --token-file FILE (or -) or set SWITCHBOARD_TOKEN",
                ));
            }
        },
    };
    let ca_file = match &args.ca_file {
        Some(p) => Some(
            std::fs::canonicalize(p)
                .map_err(|e| usage(format!("cannot read the CA file {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let ca = match &ca_file {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| usage(format!("cannot read the CA file {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let client =
        Client::new(&args.api_url, &token, ca.as_deref()).map_err(|e| usage(e.to_string()))?;
    if !args.no_verify {
        runtime()?
            .block_on(client.check(args.tenant.as_deref()))
            .map_err(api_failure)?;
    }
    let mut config = ConfigFile::load()?;
    let context = Context {
        name: args.context.clone(),
        api_url: args.api_url.trim().to_owned(),
        token: token.trim().to_owned(),
        tenant: args.tenant.clone(),
        mesh: args.mesh.clone(),
        ca_file,
    };
    match config.contexts.iter_mut().find(|c| c.name == args.context) {
        Some(c) => *c = context,
        None => config.contexts.push(context),
    }
    config.current_context = Some(args.context.clone());
    let path = config.save()?;
    eprintln!(
        "logged in to {} as context {:?} (saved in {})",
        args.api_url.trim(),
        args.context,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn config(command: &ConfigCommand) -> ExitCode {
    super::finish("config", run_config(command))
}

fn run_config(command: &ConfigCommand) -> Result<ExitCode, Failure> {
    let mut config = ConfigFile::load()?;
    match command {
        ConfigCommand::UseContext { name } => {
            config.context(Some(name))?;
            config.current_context = Some(name.clone());
            config.save()?;
            eprintln!("switched to context {name:?}");
        }
        ConfigCommand::GetContexts => {
            let current = config.current_context.as_deref();
            let rows: Vec<Vec<String>> = config
                .contexts
                .iter()
                .map(|c| {
                    vec![
                        if Some(c.name.as_str()) == current {
                            "*"
                        } else {
                            ""
                        }
                        .to_owned(),
                        c.name.clone(),
                        c.api_url.clone(),
                        c.tenant.clone().unwrap_or_default(),
                        c.mesh.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print(&table(
                &["CURRENT", "NAME", "API URL", "TENANT", "MESH"],
                &rows,
            ))?;
        }
        ConfigCommand::CurrentContext => match &config.current_context {
            Some(name) => print(&format!("{name}\n"))?,
            None => return Err(error("no current context: `switchboard login` makes one")),
        },
        ConfigCommand::DeleteContext { name } => {
            config.context(Some(name))?;
            config.contexts.retain(|c| &c.name != name);
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
            }
            config.save()?;
            eprintln!("deleted context {name:?}");
        }
        ConfigCommand::Path => print(&format!("{}\n", path()?.display()))?,
    }
    Ok(ExitCode::SUCCESS)
}
