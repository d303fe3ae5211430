#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `loadtest/ghz/run` at its smallest: the four scenarios (state of the world and delta,
//! proxyless and sidecar) at 100 concurrent streams, against the debug `switchboard` binary, with ghz installed (pinned) by the
//! script. Asserts the script's verdicts: every ghz stream was admitted and received one
//! response per subscribed type, with no stream error.
//!
//! Needs Go to install ghz (`/usr/local/go/bin/go`, or ghz already under target/ghz, or
//! `GHZ`); without it the test skips with a notice, unless `SWITCHBOARD_REQUIRE_PEERS=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `switchboard` binary: `SWITCHBOARD_BIN`, else the debug one (`cargo test --workspace`
/// builds it; built here when missing).
fn control_plane() -> PathBuf {
    if let Some(bin) = std::env::var_os("SWITCHBOARD_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target"));
    let bin = target.join("debug").join("switchboard");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "-p", "switchboard", "--bin", "switchboard"])
            .current_dir(ROOT)
            .status()
            .unwrap();
        assert!(status.success(), "building the switchboard binary failed");
    }
    bin
}

/// Whether ghz can be had: given, cached, or installable with Go.
fn ghz_available() -> bool {
    std::env::var_os("GHZ").is_some()
        || Path::new(ROOT).join("target/ghz").exists()
        || Command::new("go").arg("version").output().is_ok()
        || Path::new("/usr/local/go/bin/go").exists()
}

#[test]
fn ghz_streams_each_receive_their_resources() {
    if !ghz_available() {
        let required = std::env::var("SWITCHBOARD_REQUIRE_PEERS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "SWITCHBOARD_REQUIRE_PEERS=1 but there is no Go to install ghz"
        );
        eprintln!("no Go and no ghz: skipping the ghz scenarios");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new("bash")
        .arg(Path::new(ROOT).join("loadtest/ghz/run"))
        .args([
            "sotw-proxyless",
            "sotw-sidecar",
            "delta-proxyless",
            "delta-sidecar",
        ])
        .env("SWITCHBOARD_BIN", control_plane())
        .env("GHZ_CONCURRENCY", "100")
        .env("GHZ_ROUNDS", "2")
        .env("GHZ_SERVICES", "3")
        .env("GHZ_RUN_LIMIT", "120")
        .env_remove("SWITCHBOARD_REST")
        .env_remove("SWITCHBOARD_XDS")
        .env_remove("SWITCHBOARD_ADMIN")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // Bounded: the script's runs are bounded (GHZ_RUN_LIMIT); the ghz install is the slow
    // part the first time.
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadtest/ghz/run took over 900 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&out).unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();
    let verdicts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("verdict:"))
        .collect();
    assert_eq!(
        verdicts.len(),
        4,
        "one verdict per scenario\n{stdout}\n{stderr}"
    );
    for v in &verdicts {
        assert!(v.starts_with("verdict: OK"), "{v}\n{stdout}\n{stderr}");
    }
    assert!(
        verdicts[0].contains("responses 800 == 200 streams x 4 types"),
        "{stdout}"
    );
    assert!(
        verdicts[1].contains("responses 400 == 200 streams x 2 types"),
        "{stdout}"
    );
    assert!(status.success(), "{stdout}\n{stderr}");
}
