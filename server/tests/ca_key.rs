//! The CA key-encryption key of the built `switchboard` binary: generated for the embedded
//! SQLite default, required with PostgreSQL, and checked against the stored CAs at start-up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{BIN, call, free_port};

const ADMIN: &str = "ca-key-test-admin-token";

/// Runs `serve` with `extra` in `dir`, expecting it to refuse to start: its stderr.
/// Its stderr, at trace level, holds no secret (not even the bad key it was given).
fn refused(dir: &std::path::Path, extra: &[&str]) -> String {
    common::remember_flags(extra);
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .args(["serve", "--admin-token", ADMIN])
        .args(["--rest-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--xds-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .args(extra)
        .args(["--log-level", common::LOG_LEVEL])
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .env_remove("SWITCHBOARD_CA_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "serve {extra:?} exited successfully");
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            common::remember_generated(&dir.join("data"));
            let leaks = switchboard_runtime::leaks::find_leaks(&err);
            assert!(
                leaks.is_empty(),
                "serve {extra:?} logged a secret: {leaks:?}"
            );
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve {extra:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn sqlite_generates_the_key_and_start_up_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path(), &["--admin-token", ADMIN], None).await;
    let key_file = dir.path().join("data/ca-key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(key.trim().len(), 64, "64 hex characters");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // A mesh, and with it a CA sealed with that key.
    let c = reqwest::Client::new();
    let v1 = format!("{}/v1", server.rest);
    let (s, _) = call(
        &c,
        reqwest::Method::POST,
        &format!("{v1}/tenants"),
        ADMIN,
        Some(json!({"name": "acme"})),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = call(
        &c,
        reqwest::Method::POST,
        &format!("{v1}/tenants/acme/meshes"),
        ADMIN,
        Some(json!({"name": "prod"})),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let (s, ca) = call(
        &c,
        reqwest::Method::GET,
        &format!("{v1}/tenants/acme/meshes/prod/ca"),
        ADMIN,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{ca}");
    drop(server);

    // Another key: refused, naming the mismatch.
    let err = refused(dir.path(), &["--ca-key", &"77".repeat(32)]);
    assert!(err.contains("key-encryption key"), "{err}");
    // A malformed key: refused, naming the setting and not echoing it.
    let err = refused(dir.path(), &["--ca-key", "not-a-key-at-all"]);
    assert!(
        err.contains("ca_key") && !err.contains("not-a-key-at-all"),
        "{err}"
    );
    // The key file gone while CAs exist: refused rather than replaced.
    let saved = dir.path().join("saved-key");
    std::fs::rename(&key_file, &saved).unwrap();
    let err = refused(dir.path(), &[]);
    assert!(err.contains("is missing"), "{err}");
    // The same key given through ca_key_file starts again.
    let saved = saved.display().to_string();
    let server = common::start(
        dir.path(),
        &["--admin-token", ADMIN, "--ca-key-file", &saved],
        None,
    )
    .await;
    let (s, again) = call(
        &c,
        reqwest::Method::GET,
        &format!("{}/v1/tenants/acme/meshes/prod/ca", server.rest),
        ADMIN,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(again["active"]["id"], ca["active"]["id"]);
}

#[tokio::test]
async fn postgres_requires_a_configured_key() {
    let Some(db) = switchboard_store::testing::fresh(switchboard_store::Backend::Postgres).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let err = refused(dir.path(), &["--database-url", &db.url]);
    assert!(
        err.contains("ca_key_file or SWITCHBOARD_CA_KEY is required"),
        "{err}"
    );
    assert!(!dir.path().join("data/ca-key").exists());
}
