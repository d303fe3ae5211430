//! `check-layout [WORKSPACE_DIR]`: checks the layout rules (see the library's documentation)
//! on every package of the workspace, as `cargo metadata` lists them. Prints each finding and
//! exits 1 when there is any.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use switchboard_layout::{Target, check};

/// Target kinds whose module trees are checked (tests and benches are not).
const CHECKED_KINDS: [&str; 7] = [
    "lib",
    "rlib",
    "proc-macro",
    "bin",
    "example",
    "custom-build",
    "cdylib",
];

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("check-layout: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool> {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let (root, targets, package_dirs) = workspace(&dir)?;
    let report = check(&targets, &package_dirs);
    print!("{}", report.render(&root));
    Ok(report.passed())
}

/// The workspace root, the targets to check and the package directories, from `cargo metadata`.
fn workspace(dir: &Path) -> Result<(PathBuf, Vec<Target>, Vec<PathBuf>)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    let root = PathBuf::from(meta["workspace_root"].as_str().unwrap_or("."));
    let mut targets = Vec::new();
    let mut package_dirs = Vec::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let package = p["name"].as_str().unwrap_or_default().to_owned();
        if let Some(dir) = p["manifest_path"]
            .as_str()
            .map(Path::new)
            .and_then(Path::parent)
        {
            package_dirs.push(dir.to_path_buf());
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let kinds: Vec<&str> = t["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let Some(kind) = kinds.iter().find(|k| CHECKED_KINDS.contains(k)) else {
                continue;
            };
            let Some(src) = t["src_path"].as_str() else {
                continue;
            };
            targets.push(Target {
                package: package.clone(),
                kind: (*kind).to_owned(),
                name: t["name"].as_str().unwrap_or_default().to_owned(),
                root: PathBuf::from(src),
            });
        }
    }
    if targets.is_empty() {
        bail!("cargo metadata lists no target under {}", dir.display());
    }
    Ok((root, targets, package_dirs))
}
