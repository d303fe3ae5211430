//! The repository's layout rules, as `scripts/check-layout` (and so `scripts/test` and CI)
//! checks them:
//!
//! 1. No import cycle between the modules of any crate (library, binaries, examples, build
//!    scripts): at every level of the module tree, the sibling modules under one parent, with
//!    an edge A -> B when any file in A's subtree names something in B's subtree (through
//!    `crate::`, `super::`, `self::`, `use` aliases, re-exports and glob imports), must form
//!    an acyclic graph. A parent using its own child, and a child using its parent's items,
//!    are fine.
//! 2. No Rust source file over [`MAX_LINES`] lines, inline test modules included; a package's
//!    `tests/` and `benches/` directories aside.
//!
//! Modules:
//! - [`scan`]: reads one module body from its tokens (module declarations, items, `use`
//!   trees, named paths), with proc-macro2's lexer.
//! - [`tree`]: a crate's module tree, following `mod` declarations to their files.
//! - [`resolve`]: which module a named path lands in.
//! - [`cycles`]: the sibling graphs and their strongly connected components.
//! - [`lines`]: the length rule.

pub mod cycles;
pub mod lines;
pub mod resolve;
pub mod scan;
pub mod tree;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The most lines a source file may have.
pub const MAX_LINES: usize = 800;

/// One crate to check: a target of a package.
#[derive(Debug, Clone)]
pub struct Target {
    pub package: String,
    /// `lib`, `bin`, `example`, `custom-build`, …
    pub kind: String,
    pub name: String,
    /// Its root file (`src/lib.rs`, `src/main.rs`, …).
    pub root: PathBuf,
}

/// What the checks found.
#[derive(Debug, Default)]
pub struct Report {
    pub crates: usize,
    pub modules: usize,
    pub cycles: Vec<(Target, cycles::Cycle)>,
    pub long_files: Vec<lines::LongFile>,
    /// Files that could not be read or followed.
    pub errors: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.cycles.is_empty() && self.long_files.is_empty() && self.errors.is_empty()
    }

    /// The findings, with paths relative to `root`.
    pub fn render(&self, root: &Path) -> String {
        let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
        let mut out = String::new();
        for e in &self.errors {
            let _ = writeln!(out, "error: {e}");
        }
        for (t, c) in &self.cycles {
            let _ = writeln!(
                out,
                "import cycle in {} ({} {}) among the modules under {} ({}): {}",
                t.package,
                t.kind,
                t.name,
                c.parent,
                rel(&c.parent_file),
                c.members.join(", ")
            );
            let _ = writeln!(out, "  for example: {}", c.example.join(" -> "));
            for ((a, b), evidence) in &c.edges {
                let _ = writeln!(out, "  {a} -> {b}:");
                for e in evidence.iter().take(3) {
                    let _ = writeln!(
                        out,
                        "    {} names {} (in {})",
                        rel(&e.file),
                        e.written,
                        rel(&e.target_file)
                    );
                }
                if evidence.len() > 3 {
                    let _ = writeln!(out, "    … and {} more", evidence.len() - 3);
                }
            }
        }
        for f in &self.long_files {
            let _ = writeln!(
                out,
                "{} has {} lines, over the limit of {MAX_LINES}: split it (inline tests can move to their own file)",
                rel(&f.file),
                f.lines
            );
        }
        let _ = writeln!(
            out,
            "layout: {} crates, {} modules: {} import cycle(s), {} file(s) over {MAX_LINES} lines, {} error(s)",
            self.crates,
            self.modules,
            self.cycles.len(),
            self.long_files.len(),
            self.errors.len()
        );
        out
    }
}

/// Checks both rules: cycles in every target's module tree, lengths under every package
/// directory.
pub fn check(targets: &[Target], package_dirs: &[PathBuf]) -> Report {
    let mut report = Report::default();
    for t in targets {
        match tree::Tree::load(&t.root) {
            Ok(tree) => {
                report.crates += 1;
                report.modules += tree.modules.len();
                let refs = resolve::references(&tree);
                for c in cycles::find(&tree, &refs) {
                    report.cycles.push((t.clone(), c));
                }
            }
            Err(e) => report
                .errors
                .push(format!("{} ({} {}): {e}", t.package, t.kind, t.name)),
        }
    }
    for dir in package_dirs {
        match lines::long_files(dir, MAX_LINES) {
            Ok(files) => report.long_files.extend(files),
            Err(e) => report
                .errors
                .push(format!("cannot read {}: {e}", dir.display())),
        }
    }
    report
}
