//! A crate's module tree, read from its root file by following `mod` declarations as rustc
//! does (`name.rs` or `name/mod.rs`, `#[path]`, inline modules), every `cfg` included.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::str::FromStr;

use proc_macro2::TokenStream;

use crate::scan::{self, Body};

/// One module of a crate.
pub struct Module {
    /// From the crate root: empty for the root itself.
    pub path: Vec<String>,
    /// The file its body is in (an inline module's is its parent's).
    pub file: PathBuf,
    pub parent: Option<usize>,
    pub children: BTreeMap<String, usize>,
    pub body: Body,
}

impl Module {
    /// `crate::a::b`, as written in code.
    pub fn display(&self) -> String {
        std::iter::once("crate")
            .chain(self.path.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("::")
    }
}

/// The modules of one crate (a library or a binary); index 0 is the root.
pub struct Tree {
    pub modules: Vec<Module>,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("cannot tokenize {0}: {1}")]
    Lex(PathBuf, String),
    #[error("module `{name}` declared in {file}: none of {candidates:?} exists")]
    Missing {
        name: String,
        file: PathBuf,
        candidates: Vec<PathBuf>,
    },
}

impl Tree {
    /// Reads the tree whose root is `root` (`src/lib.rs`, `src/main.rs`, …).
    pub fn load(root: &FsPath) -> Result<Tree, TreeError> {
        let mut tree = Tree {
            modules: Vec::new(),
        };
        let dir = root.parent().unwrap_or(FsPath::new(".")).to_path_buf();
        let tokens = lex(root)?;
        tree.add(Vec::new(), root.to_path_buf(), None, tokens, dir)?;
        Ok(tree)
    }

    /// Adds a module whose body is `tokens`; `dir` is where its `mod x;` children live.
    fn add(
        &mut self,
        path: Vec<String>,
        file: PathBuf,
        parent: Option<usize>,
        tokens: TokenStream,
        dir: PathBuf,
    ) -> Result<usize, TreeError> {
        let mut body = scan::read(tokens);
        let mods = std::mem::take(&mut body.mods);
        let id = self.modules.len();
        self.modules.push(Module {
            path: path.clone(),
            file: file.clone(),
            parent,
            children: BTreeMap::new(),
            body,
        });
        for m in mods {
            let mut child_path = path.clone();
            child_path.push(m.name.clone());
            let child = match (m.inline, m.path_attr) {
                (Some(tokens), attr) => {
                    let child_dir = match attr {
                        Some(p) => dir.join(p),
                        None => dir.join(&m.name),
                    };
                    self.add(child_path, file.clone(), Some(id), tokens, child_dir)?
                }
                (None, Some(p)) => {
                    let base = file.parent().unwrap_or(FsPath::new("."));
                    let child_file = base.join(p);
                    let child_dir = child_file
                        .parent()
                        .unwrap_or(FsPath::new("."))
                        .to_path_buf();
                    let tokens = lex(&child_file)?;
                    self.add(child_path, child_file, Some(id), tokens, child_dir)?
                }
                (None, None) => {
                    let candidates = [
                        dir.join(format!("{}.rs", m.name)),
                        dir.join(&m.name).join("mod.rs"),
                    ];
                    let Some(child_file) = candidates.iter().find(|c| c.is_file()) else {
                        return Err(TreeError::Missing {
                            name: m.name,
                            file,
                            candidates: candidates.to_vec(),
                        });
                    };
                    let tokens = lex(child_file)?;
                    let child_dir = dir.join(&m.name);
                    self.add(child_path, child_file.clone(), Some(id), tokens, child_dir)?
                }
            };
            self.modules[id].children.insert(m.name, child);
        }
        Ok(id)
    }
}

fn lex(file: &FsPath) -> Result<TokenStream, TreeError> {
    let text = std::fs::read_to_string(file).map_err(|e| TreeError::Read(file.to_path_buf(), e))?;
    // A shebang line is not Rust tokens.
    let text = match text.strip_prefix("#!") {
        Some(rest) if !rest.starts_with('[') => rest.split_once('\n').map_or("", |(_, r)| r),
        _ => text.as_str(),
    };
    TokenStream::from_str(text).map_err(|e| TreeError::Lex(file.to_path_buf(), e.to_string()))
}
