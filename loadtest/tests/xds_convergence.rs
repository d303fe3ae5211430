#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `xds-convergence` at its smallest with the side-by-side run and the restart storm: 20
//! streams, 2 rounds, against the debug `switchboard` binary and go-control-plane (built by
//! the tool with the machine's Go). Asserts that the run succeeds and prints its figures:
//! every stream converged and saw every round on both servers, the comparison table has
//! numbers for both and their ratios, and every stream reconverged after the SIGKILL. Never
//! timings.
//!
//! Needs Go (`go` on the path or `/usr/local/go/bin/go`, or `SWITCHBOARD_GOCP_LOADTEST_BIN`);
//! without it the test skips with a notice, unless `SWITCHBOARD_REQUIRE_PEERS=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const STREAMS: usize = 20;
const ROUNDS: usize = 2;

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

fn go_available() -> bool {
    std::env::var_os("SWITCHBOARD_GOCP_LOADTEST_BIN").is_some()
        || std::env::var_os("GO").is_some()
        || Command::new("go").arg("version").output().is_ok()
        || Path::new("/usr/local/go/bin/go").exists()
}

/// The numbers of the last line of `out` that starts with `label` (after it).
fn numbers(out: &str, label: &str) -> Vec<f64> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no line starting with {label:?} in:\n{out}"));
    line[label.len()..]
        .split_whitespace()
        .map(|n| n.parse().unwrap_or_else(|_| panic!("{n:?} in {line:?}")))
        .collect()
}

#[test]
fn comparison_and_restart_storm_at_tiny_sizes() {
    if !go_available() {
        let required = std::env::var("SWITCHBOARD_REQUIRE_PEERS").is_ok_and(|v| v == "1");
        assert!(!required, "SWITCHBOARD_REQUIRE_PEERS=1 but there is no Go");
        eprintln!("no Go: skipping the go-control-plane comparison");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xds-convergence"));
    cmd.env("SWITCHBOARD_BIN", control_plane())
        .env("LOADTEST_STREAMS", STREAMS.to_string())
        .env("LOADTEST_CHANNELS", "2")
        .env("LOADTEST_SERVICES", "5")
        .env("LOADTEST_ROUNDS", ROUNDS.to_string())
        .env("LOADTEST_PAUSE_MS", "300")
        .env("LOADTEST_CLOSE_WAIT_SECS", "1")
        .env("LOADTEST_COMPARE", "go-control-plane")
        .env("LOADTEST_RESTART", "1")
        .env("LOADTEST_CONVERGE_TIMEOUT_SECS", "60")
        .env("LOADTEST_RESTART_TIMEOUT_SECS", "60")
        // Building go-control-plane's server the first time takes a while.
        .env("LOADTEST_TIMEOUT_SECS", "600")
        .env_remove("SWITCHBOARD_TEST_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(660);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("xds-convergence ran over 660 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&out).unwrap();
    let err = std::fs::read_to_string(&err).unwrap();
    assert!(status.success(), "{status}\nstdout:\n{out}\nstderr:\n{err}");

    // Both servers: every stream converged, and every stream ACKed every round.
    let converged = format!("{STREAMS} streams opened and converged");
    assert_eq!(out.matches(&converged).count(), 2, "{out}");
    let all_rounds = format!("{}/{}", STREAMS * ROUNDS, STREAMS * ROUNDS);
    let all_rows: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("all "))
        .collect();
    assert_eq!(all_rows.len(), 2, "{out}");
    assert!(all_rows.iter().all(|r| r.contains(&all_rounds)), "{out}");

    // The table: five figures per server, and five ratios.
    let sb = numbers(&out, "switchboard ");
    let go = numbers(&out, "go-control-plane ");
    let ratio = numbers(&out, "ratio (sb ÷ gocp)");
    assert_eq!((sb.len(), go.len(), ratio.len()), (5, 5, 5), "{out}");
    assert!(
        sb.iter().chain(&go).all(|n| n.is_finite() && *n >= 0.0),
        "{out}"
    );
    // The latencies are above zero, so their ratios are numbers.
    assert!(
        ratio[1..].iter().all(|r| r.is_finite() && *r > 0.0),
        "{out}"
    );

    // The restart storm: every stream back, with the process sampled.
    let storm =
        format!("restart storm: SIGKILL with {STREAMS} streams converged at round {ROUNDS}");
    assert!(out.contains(&storm), "{out}");
    assert!(
        out.contains("every stream reconnected and converged again after"),
        "{out}"
    );
    let summary = format!("all {STREAMS} streams reconverged");
    assert!(out.contains(&summary), "{out}");
    let peak = out
        .lines()
        .find(|l| l.starts_with("control plane during the storm"))
        .unwrap_or_else(|| panic!("no storm samples in:\n{out}"));
    assert!(!peak.contains("peak RSS 0.0 MiB"), "{peak}");
}
