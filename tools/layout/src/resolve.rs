//! Which module each named path lands in: through child modules, `use` aliases (so re-exports
//! count as the module that defines the item) and glob imports. Paths that start outside the
//! crate (std, other crates, local variables) resolve to nothing.

use crate::tree::Tree;

/// Enough for any real chain of re-exports; it stops alias loops.
const MAX_DEPTH: usize = 16;

/// One path named in module `from` that lands in module `to`.
pub struct Reference {
    pub from: usize,
    pub to: usize,
    pub written: String,
}

/// Every reference of every module of `tree` to a module of the same crate.
pub fn references(tree: &Tree) -> Vec<Reference> {
    let mut out = Vec::new();
    for (from, m) in tree.modules.iter().enumerate() {
        for path in &m.body.refs {
            if let Some(to) = resolve(tree, from, path, 0) {
                out.push(Reference {
                    from,
                    to,
                    written: path.join("::"),
                });
            }
        }
    }
    out
}

/// The module that `path`, written in module `m`, names (or the module defining the item it
/// names); `None` when it leads outside the crate.
pub fn resolve(tree: &Tree, m: usize, path: &[String], depth: usize) -> Option<usize> {
    let (first, rest) = path.split_first()?;
    match first.as_str() {
        "crate" => walk(tree, 0, rest, depth),
        "self" => walk(tree, m, rest, depth),
        "super" => {
            let mut at = tree.modules[m].parent?;
            let mut rest = rest;
            while let Some(("super", more)) = rest.split_first().map(|(s, r)| (s.as_str(), r)) {
                at = tree.modules[at].parent?;
                rest = more;
            }
            walk(tree, at, rest, depth)
        }
        "::" => None,
        _ if in_scope(tree, m, first, depth) => walk(tree, m, path, depth),
        _ => None,
    }
}

/// Follows `segments` from module `m`. A segment that is no child module, alias or glob
/// import of `m` names an item of `m` (or something unknown, which counts as `m`).
fn walk(tree: &Tree, m: usize, segments: &[String], depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return Some(m);
    }
    let Some((first, rest)) = segments.split_first() else {
        return Some(m);
    };
    let module = &tree.modules[m];
    if let Some(&child) = module.children.get(first) {
        return walk(tree, child, rest, depth);
    }
    if module.body.items.contains(first) {
        return Some(m);
    }
    if let Some((_, target)) = module.body.imports.iter().find(|(name, _)| name == first) {
        let at = resolve(tree, m, target, depth + 1)?;
        return walk(tree, at, rest, depth + 1);
    }
    for glob in &module.body.globs {
        if let Some(g) = resolve(tree, m, glob, depth + 1)
            && g != m
            && in_scope(tree, g, first, depth + 1)
        {
            return walk(tree, g, segments, depth + 1);
        }
    }
    Some(m)
}

/// Whether `name` is a child module, item, import or glob-imported name of module `m`.
fn in_scope(tree: &Tree, m: usize, name: &str, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let module = &tree.modules[m];
    module.children.contains_key(name)
        || module.body.items.contains(name)
        || module.body.imports.iter().any(|(n, _)| n == name)
        || module.body.globs.iter().any(|glob| {
            resolve(tree, m, glob, depth + 1)
                .is_some_and(|g| g != m && in_scope(tree, g, name, depth + 1))
        })
}
