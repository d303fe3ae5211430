//! Token-level reading of one module body: the modules it declares, the names it defines and
//! imports, and every path it names. proc-macro2's lexer takes care of comments, strings and
//! raw strings; no name resolution happens here (see `resolve`).

use std::collections::BTreeSet;

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};

/// A path as written, segment by segment: `crate::a::B`, `super::x`, `self::y` or a bare
/// `a::B`. A leading `::` (an extern crate) is kept as a `::` segment.
pub type Path = Vec<String>;

/// A `mod name;` or `mod name { … }` declaration.
pub struct ModDecl {
    pub name: String,
    /// The value of a `#[path = "…"]` attribute on it.
    pub path_attr: Option<String>,
    /// The body of an inline module.
    pub inline: Option<TokenStream>,
}

/// What one module body declares and names (not counting its inline child modules).
#[derive(Default)]
pub struct Body {
    pub mods: Vec<ModDecl>,
    /// Names of the items defined here (functions, types, traits, constants, statics, macros).
    pub items: BTreeSet<String>,
    /// `use` declarations of the module itself: the name brought in and the path it names.
    pub imports: Vec<(String, Path)>,
    /// `use …::*` declarations of the module itself.
    pub globs: Vec<Path>,
    /// Every path named: in code, in `use` declarations (also inside function bodies), in
    /// macro bodies (`$crate::…`).
    pub refs: Vec<Path>,
}

const ITEM_KEYWORDS: [&str; 8] = [
    "fn", "struct", "enum", "trait", "type", "const", "static", "union",
];

/// Reads a module body.
pub fn read(tokens: TokenStream) -> Body {
    let tts: Vec<TokenTree> = tokens.into_iter().collect();
    let mut body = Body::default();
    // Tokens that are neither module declarations, attributes nor `use` declarations: where
    // the remaining paths are looked for.
    let mut rest: Vec<TokenTree> = Vec::with_capacity(tts.len());
    let mut path_attr: Option<String> = None;
    let mut i = 0;
    while i < tts.len() {
        if let Some(end) = attribute_end(&tts, i) {
            if let Some(TokenTree::Group(g)) = tts.get(end - 1) {
                path_attr = path_attr.or_else(|| path_attribute(g.stream()));
            }
            i = end;
            continue;
        }
        if is_ident(&tts, i, "mod")
            && let Some(TokenTree::Ident(name)) = tts.get(i + 1)
        {
            let inline = match tts.get(i + 2) {
                Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => Some(g.stream()),
                _ => None,
            };
            body.mods.push(ModDecl {
                name: unraw(&name.to_string()),
                path_attr: path_attr.take(),
                inline,
            });
            i += 3;
            continue;
        }
        if is_ident(&tts, i, "use") {
            let end = statement_end(&tts, i);
            let mut leaves = Vec::new();
            use_tree(&tts[i + 1..end], &Vec::new(), &mut leaves);
            for leaf in leaves {
                match leaf {
                    Leaf::Named(name, path) => {
                        body.refs.push(path.clone());
                        body.imports.push((name, path));
                    }
                    Leaf::Glob(path) => {
                        body.refs.push(path.clone());
                        body.globs.push(path);
                    }
                    Leaf::Unnamed(path) => body.refs.push(path),
                }
            }
            i = end + 1;
            path_attr = None;
            continue;
        }
        if let TokenTree::Ident(kw) = &tts[i] {
            let kw = kw.to_string();
            if let Some(TokenTree::Ident(name)) = tts.get(i + 1)
                && ITEM_KEYWORDS.contains(&kw.as_str())
            {
                body.items.insert(unraw(&name.to_string()));
            }
            if kw == "macro_rules"
                && is_punct(&tts, i + 1, '!')
                && let Some(TokenTree::Ident(name)) = tts.get(i + 2)
            {
                body.items.insert(name.to_string());
            }
            if kw != "pub" && kw != "unsafe" && kw != "async" && kw != "extern" {
                path_attr = None;
            }
        }
        rest.push(tts[i].clone());
        i += 1;
    }
    paths(&rest, &mut body.refs);
    body
}

/// One leaf of a `use` tree.
enum Leaf {
    /// `a::b` or `a::b as c`: the name brought into scope and the path.
    Named(String, Path),
    /// `a::*`.
    Glob(Path),
    /// `a::b as _`.
    Unnamed(Path),
}

impl Leaf {
    fn into_path(self) -> Path {
        match self {
            Leaf::Named(_, p) | Leaf::Glob(p) | Leaf::Unnamed(p) => p,
        }
    }
}

/// Expands a `use` tree (the tokens between `use` and `;`) into its leaves.
fn use_tree(tts: &[TokenTree], prefix: &Path, out: &mut Vec<Leaf>) {
    let mut path = prefix.clone();
    let mut i = 0;
    if is_path_sep(tts, 0) {
        path.push("::".into());
        i = 2;
    }
    loop {
        match tts.get(i) {
            Some(TokenTree::Punct(p)) if p.as_char() == '$' && is_ident(tts, i + 1, "crate") => {
                path.push("crate".into());
                i += 2;
                if is_path_sep(tts, i) {
                    i += 2;
                    continue;
                }
                out.push(Leaf::Named("crate".into(), path));
                return;
            }
            Some(TokenTree::Ident(id)) => {
                path.push(unraw(&id.to_string()));
                i += 1;
                if is_path_sep(tts, i) {
                    i += 2;
                    continue;
                }
                let alias = if is_ident(tts, i, "as") {
                    match tts.get(i + 1) {
                        Some(TokenTree::Ident(a)) => Some(unraw(&a.to_string())),
                        _ => None,
                    }
                } else {
                    None
                };
                if path.last().is_some_and(|s| s == "self") && path.len() > 1 {
                    path.pop();
                }
                match alias.or_else(|| path.last().cloned()) {
                    Some(name) if name != "_" => out.push(Leaf::Named(name, path)),
                    _ => out.push(Leaf::Unnamed(path)),
                }
                return;
            }
            Some(TokenTree::Punct(p)) if p.as_char() == '*' => {
                out.push(Leaf::Glob(path));
                return;
            }
            Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => {
                let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                for part in inner.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ','))
                {
                    if !part.is_empty() {
                        use_tree(part, &path, out);
                    }
                }
                return;
            }
            _ => return,
        }
    }
}

/// Every path in `tts` (and the groups within), appended to `out`.
fn paths(tts: &[TokenTree], out: &mut Vec<Path>) {
    let mut i = 0;
    while i < tts.len() {
        if let Some(end) = attribute_end(tts, i) {
            i = end;
            continue;
        }
        // `pub(crate)`, `pub(in crate::x)`: a visibility names no item.
        if is_ident(tts, i, "pub")
            && matches!(tts.get(i + 1), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis)
        {
            i += 2;
            continue;
        }
        match &tts[i] {
            TokenTree::Group(g) => {
                let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                paths(&inner, out);
                i += 1;
            }
            TokenTree::Ident(id) if id == "use" && !after_path_or_field(tts, i) => {
                let end = statement_end(tts, i);
                let mut leaves = Vec::new();
                use_tree(&tts[i + 1..end], &Vec::new(), &mut leaves);
                out.extend(leaves.into_iter().map(Leaf::into_path));
                i = end + 1;
            }
            TokenTree::Ident(_) if !after_path_or_field(tts, i) => {
                let (path, end) = read_path(tts, i);
                // `name: value` in a struct expression or pattern names a field, not an item.
                let field = path.len() == 1 && is_punct(tts, end, ':') && !is_path_sep(tts, end);
                if !field {
                    out.push(path);
                }
                i = end.max(i + 1);
            }
            TokenTree::Punct(p) if p.as_char() == '$' && is_ident(tts, i + 1, "crate") => {
                let (mut path, end) = read_path(tts, i + 1);
                if let Some(first) = path.first_mut() {
                    *first = "crate".into();
                }
                out.push(path);
                i = end;
            }
            _ => i += 1,
        }
    }
}

/// `a::b::c` from `i` (an identifier): the segments and the index just after them.
fn read_path(tts: &[TokenTree], i: usize) -> (Path, usize) {
    let mut path = Vec::new();
    let mut j = i;
    while let Some(TokenTree::Ident(id)) = tts.get(j) {
        path.push(unraw(&id.to_string()));
        j += 1;
        if is_path_sep(tts, j) && matches!(tts.get(j + 2), Some(TokenTree::Ident(_))) {
            j += 2;
        } else {
            break;
        }
    }
    (path, j)
}

/// Whether the identifier at `i` continues a path (`::x`), is a field or method (`.x`) or a
/// lifetime (`'x`): then it starts no path of its own.
fn after_path_or_field(tts: &[TokenTree], i: usize) -> bool {
    let Some(prev) = i.checked_sub(1) else {
        return false;
    };
    match &tts[prev] {
        TokenTree::Punct(p) if p.as_char() == ':' => {
            prev.checked_sub(1).is_some_and(|pp| is_path_sep(tts, pp))
        }
        TokenTree::Punct(p) => matches!(p.as_char(), '.' | '\''),
        _ => false,
    }
}

/// If an attribute (`#[…]` or `#![…]`) starts at `i`, the index just after it.
fn attribute_end(tts: &[TokenTree], i: usize) -> Option<usize> {
    if !is_punct(tts, i, '#') {
        return None;
    }
    let j = if is_punct(tts, i + 1, '!') {
        i + 2
    } else {
        i + 1
    };
    match tts.get(j) {
        Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Bracket => Some(j + 1),
        _ => None,
    }
}

/// The value of `path = "…"` inside an attribute's brackets.
fn path_attribute(stream: TokenStream) -> Option<String> {
    let tts: Vec<TokenTree> = stream.into_iter().collect();
    if tts.len() != 3 || !is_ident(&tts, 0, "path") || !is_punct(&tts, 1, '=') {
        return None;
    }
    let TokenTree::Literal(lit) = &tts[2] else {
        return None;
    };
    let text = lit.to_string();
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .map(str::to_owned)
}

/// The index of the `;` ending the statement that starts at `i` (or the end of `tts`).
fn statement_end(tts: &[TokenTree], i: usize) -> usize {
    (i..tts.len())
        .find(|&j| is_punct(tts, j, ';'))
        .unwrap_or(tts.len())
}

fn is_ident(tts: &[TokenTree], i: usize, word: &str) -> bool {
    matches!(tts.get(i), Some(TokenTree::Ident(id)) if id == word)
}

fn is_punct(tts: &[TokenTree], i: usize, c: char) -> bool {
    matches!(tts.get(i), Some(TokenTree::Punct(p)) if p.as_char() == c)
}

/// `::` at `i`: a joint `:` followed by `:`.
fn is_path_sep(tts: &[TokenTree], i: usize) -> bool {
    matches!(tts.get(i), Some(TokenTree::Punct(p)) if p.as_char() == ':' && p.spacing() == Spacing::Joint)
        && is_punct(tts, i + 1, ':')
}

/// `r#type` names the item `type`.
fn unraw(s: &str) -> String {
    s.strip_prefix("r#").unwrap_or(s).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn body(src: &str) -> Body {
        read(TokenStream::from_str(src).unwrap())
    }

    fn joined(paths: &[Path]) -> Vec<String> {
        paths.iter().map(|p| p.join("::")).collect()
    }

    #[test]
    fn use_trees_expand_to_their_leaves() {
        let b = body(
            "pub(crate) use crate::a::{self, b::{C as D, E}, f::*};\nuse super::g as _;\nuse ::std::fmt;",
        );
        let imports: Vec<String> = b
            .imports
            .iter()
            .map(|(n, p)| format!("{n}={}", p.join("::")))
            .collect();
        assert_eq!(
            imports,
            [
                "a=crate::a",
                "D=crate::a::b::C",
                "E=crate::a::b::E",
                "fmt=::::std::fmt"
            ]
        );
        assert_eq!(joined(&b.globs), ["crate::a::f"]);
        assert!(joined(&b.refs).contains(&"super::g".to_owned()));
    }

    #[test]
    fn paths_skip_strings_comments_fields_and_methods() {
        let b = body(
            r#"
            // crate::in_comment::X
            /// crate::in_doc::X
            fn f(x: S) -> u8 {
                let s = "crate::in_string::X";
                let v = S { field: crate::a::make(), other };
                x.method(); x.crate_field;
                use super::inner::{Y, Z};
                macro_rules! m { () => { $crate::b::helper!() } }
                0
            }
            "#,
        );
        let refs = joined(&b.refs);
        for want in [
            "crate::a::make",
            "super::inner::Y",
            "super::inner::Z",
            "crate::b::helper",
            "other",
        ] {
            assert!(
                refs.contains(&want.to_owned()),
                "{want} missing from {refs:?}"
            );
        }
        for unwanted in [
            "in_comment",
            "in_doc",
            "in_string",
            "field",
            "method",
            "crate_field",
        ] {
            assert!(
                !refs.iter().any(|r| r.contains(unwanted)),
                "{unwanted} found in {refs:?}"
            );
        }
        assert!(b.items.contains("f"));
    }

    #[test]
    fn module_declarations_keep_their_path_attribute() {
        let b = body(
            "#[cfg(test)]\n#[path = \"other.rs\"]\nmod a;\npub mod b { fn x() {} }\nmod r#type;",
        );
        let mods: Vec<(String, Option<String>, bool)> = b
            .mods
            .iter()
            .map(|m| (m.name.clone(), m.path_attr.clone(), m.inline.is_some()))
            .collect();
        assert_eq!(
            mods,
            [
                ("a".into(), Some("other.rs".into()), false),
                ("b".into(), None, true),
                ("type".into(), None, false),
            ]
        );
    }
}
