//! The length rule: no Rust source file of a package over the limit, counting the whole file
//! (inline test modules included). A package's `tests/` and `benches/` directories are exempt;
//! `target/`, hidden directories and nested packages (checked as packages of their own) are
//! skipped.

use std::path::{Path, PathBuf};

/// A file over the limit.
#[derive(Debug, PartialEq, Eq)]
pub struct LongFile {
    pub file: PathBuf,
    pub lines: usize,
}

/// Every `.rs` file under `package_dir` (the directory of its Cargo.toml) with more than
/// `limit` lines.
pub fn long_files(package_dir: &Path, limit: usize) -> std::io::Result<Vec<LongFile>> {
    let mut out = Vec::new();
    walk(package_dir, true, limit, &mut out)?;
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

fn walk(dir: &Path, top: bool, limit: usize, out: &mut Vec<LongFile>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_dir() {
            let exempt = top && (name == "tests" || name == "benches");
            let skipped = name == "target" || name.starts_with('.');
            let nested_package = path.join("Cargo.toml").is_file();
            if !exempt && !skipped && !nested_package {
                walk(&path, false, limit, out)?;
            }
        } else if name.ends_with(".rs") {
            let lines = std::fs::read_to_string(&path)?.lines().count();
            if lines > limit {
                out.push(LongFile { file: path, lines });
            }
        }
    }
    Ok(())
}
