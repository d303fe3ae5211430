#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The checks' self-test: tiny crates written to a temporary directory, with and without the
//! faults the checks must catch.

use std::path::{Path, PathBuf};
use std::process::Command;

use switchboard_layout::{MAX_LINES, Report, Target, check};

/// Writes `files` (path, contents) under a fresh directory.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Checks the library rooted at `src/lib.rs` of `dir` (and the lengths under `dir`).
fn check_lib(dir: &Path) -> Report {
    let target = Target {
        package: "fixture".into(),
        kind: "lib".into(),
        name: "fixture".into(),
        root: dir.join("src/lib.rs"),
    };
    check(&[target], &[dir.to_path_buf()])
}

/// The members of every cycle found, each as `parent: a, b`.
fn cycles(report: &Report) -> Vec<String> {
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report
        .cycles
        .iter()
        .map(|(_, c)| format!("{}: {}", c.parent, c.members.join(", ")))
        .collect()
}

#[test]
fn a_cycle_through_crate_paths_is_found_with_its_files() {
    let dir = tree(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("src/a.rs", "use crate::b::B;\npub struct A(B);\n"),
        ("src/b.rs", "pub struct B;\npub fn f(_: crate::a::A) {}\n"),
        ("src/c.rs", "pub fn g() { crate::a::A(crate::b::B); }\n"),
    ]);
    let report = check_lib(dir.path());
    assert_eq!(cycles(&report), ["crate: a, b"]);
    assert!(!report.passed());
    let text = report.render(dir.path());
    assert!(text.contains("for example: a -> b -> a"), "{text}");
    assert!(
        text.contains("src/b.rs names crate::a::A (in src/a.rs)"),
        "{text}"
    );
    assert!(
        text.contains("src/a.rs names crate::b::B (in src/b.rs)"),
        "{text}"
    );
}

#[test]
fn parents_and_children_may_use_each_other() {
    let dir = tree(&[
        (
            "src/lib.rs",
            "mod a;\nmod b;\npub use a::X;\nfn helper() {}\nfn f() { a::inner::g(); b::h(); }\n",
        ),
        (
            "src/a.rs",
            "pub mod inner;\npub struct X;\nfn f() { super::helper(); inner::g(); }\n",
        ),
        (
            "src/a/inner.rs",
            "use super::*;\npub fn g() { let _ = X; super::super::helper(); crate::b::h(); }\n",
        ),
        ("src/b.rs", "pub fn h() { crate::helper(); }\n"),
    ]);
    let report = check_lib(dir.path());
    assert_eq!(cycles(&report), Vec::<String>::new());
    assert!(report.passed(), "{}", report.render(dir.path()));
}

#[test]
fn a_re_export_counts_as_the_module_that_defines_the_item() {
    let dir = tree(&[
        ("src/lib.rs", "mod a;\nmod b;\npub use b::Thing;\n"),
        ("src/a.rs", "pub fn x(_: crate::Thing) {}\n"),
        (
            "src/b.rs",
            "pub struct Thing;\nfn y() { let _ = crate::a::x; }\n",
        ),
    ]);
    assert_eq!(cycles(&check_lib(dir.path())), ["crate: a, b"]);
}

#[test]
fn aliases_and_globs_are_followed() {
    let dir = tree(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        // b names a's function through c's glob re-export of a.
        (
            "src/a.rs",
            "pub fn from_a() {}\nfn f() { crate::b::from_b(); }\n",
        ),
        ("src/c.rs", "pub use crate::a::*;\n"),
        (
            "src/b.rs",
            "use crate::c::*;\npub fn from_b() { from_a(); }\n",
        ),
    ]);
    let report = check_lib(dir.path());
    assert_eq!(cycles(&report), ["crate: a, b, c"]);
    let (_, cycle) = &report.cycles[0];
    let b_to_a = &cycle.edges[&("b".to_owned(), "a".to_owned())];
    assert_eq!(b_to_a[0].written, "from_a");
}

#[test]
fn deeper_levels_and_super_paths_are_checked() {
    let dir = tree(&[
        ("src/lib.rs", "mod p;\n"),
        ("src/p.rs", "mod x;\nmod y;\n"),
        ("src/p/x.rs", "use super::y::Y;\npub struct X;\n"),
        (
            "src/p/y/mod.rs",
            "pub struct Y;\nmod deep { fn f(_: super::super::x::X) {} }\n",
        ),
    ]);
    assert_eq!(cycles(&check_lib(dir.path())), ["crate::p: x, y"]);
}

#[test]
fn path_attributes_inline_modules_and_test_modules_count() {
    let dir = tree(&[
        (
            "src/lib.rs",
            "#[path = \"other/file.rs\"]\nmod a;\nmod b { pub fn f() {} }\nmod c;\nmod d;\n",
        ),
        ("src/other/file.rs", "pub fn g() { crate::b::f() }\n"),
        (
            "src/c.rs",
            "pub fn c() {}\n#[cfg(test)]\nmod tests { use crate::d::*; }\n",
        ),
        ("src/d.rs", "pub fn d() { crate::c::c(); crate::a::g(); }\n"),
    ]);
    let report = check_lib(dir.path());
    assert_eq!(cycles(&report), ["crate: c, d"]);
    // a -> b is one way only.
    let dir = tree(&[
        (
            "src/lib.rs",
            "#[path = \"other/file.rs\"]\nmod a;\nmod b { pub fn f() { crate::a::g() } }\n",
        ),
        ("src/other/file.rs", "pub fn g() { crate::b::f() }\n"),
    ]);
    assert_eq!(cycles(&check_lib(dir.path())), ["crate: a, b"]);
}

#[test]
fn comments_strings_and_docs_name_nothing() {
    let dir = tree(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "pub fn f() { crate::b::g() }\n"),
        (
            "src/b.rs",
            "/// See [`crate::a::f`].\npub fn g() {\n    // crate::a::f()\n    let _ = \"crate::a::f\";\n}\n",
        ),
    ]);
    assert_eq!(cycles(&check_lib(dir.path())), Vec::<String>::new());
}

#[test]
fn a_missing_module_file_is_an_error() {
    let dir = tree(&[("src/lib.rs", "mod gone;\n")]);
    let report = check_lib(dir.path());
    assert!(!report.passed());
    assert!(
        report.errors[0].contains("module `gone`"),
        "{:?}",
        report.errors
    );
}

#[test]
fn long_files_are_found_outside_tests_and_benches() {
    let lines = |n: usize| "// line\n".repeat(n);
    let (limit, over) = (lines(MAX_LINES), lines(MAX_LINES + 1));
    let dir = tree(&[
        ("src/lib.rs", "mod ok;\nmod big;\n"),
        ("src/ok.rs", &limit),
        ("src/big.rs", &over),
        ("src/big/tests.rs", &over),
        ("build.rs", &over),
        ("tests/long.rs", &over),
        ("benches/long.rs", &over),
        ("target/debug/build/out.rs", &over),
        ("nested/Cargo.toml", "[package]\n"),
        ("nested/src/lib.rs", &over),
    ]);
    let report = check_lib(dir.path());
    let found: Vec<PathBuf> = report
        .long_files
        .iter()
        .map(|f| f.file.strip_prefix(dir.path()).unwrap().to_path_buf())
        .collect();
    assert_eq!(
        found,
        [
            PathBuf::from("build.rs"),
            PathBuf::from("src/big/tests.rs"),
            PathBuf::from("src/big.rs"),
        ]
    );
    assert!(report.long_files.iter().all(|f| f.lines == MAX_LINES + 1));
    let text = report.render(dir.path());
    assert!(text.contains("src/big.rs has 801 lines"), "{text}");
}

/// The binary, on a workspace of its own: exit status 1 and the cycle printed.
#[test]
fn the_binary_fails_on_a_cycle_and_passes_without_one() {
    let manifest =
        "[package]\nname = \"fixture\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[workspace]\n";
    let run = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_check-layout"))
            .arg(dir)
            .output()
            .unwrap()
    };
    let bad = tree(&[
        ("Cargo.toml", manifest),
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "pub fn f() { crate::b::g() }\n"),
        ("src/b.rs", "pub fn g() { crate::a::f() }\n"),
    ]);
    let out = run(bad.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "import cycle in fixture (lib fixture) among the modules under crate (src/lib.rs): a, b"
        ),
        "{stdout}"
    );
    let good = tree(&[
        ("Cargo.toml", manifest),
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "pub fn f() { crate::b::g() }\n"),
        ("src/b.rs", "pub fn g() {}\n"),
    ]);
    let out = run(good.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("0 import cycle(s)"), "{stdout}");
}
