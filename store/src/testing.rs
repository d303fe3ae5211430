//! Test helpers (feature `testing`): a fresh, migrated database of either backend.
//!
//! PostgreSQL comes from `SWITCHBOARD_TEST_DATABASE_URL` (set by `scripts/test`, which starts a
//! throwaway cluster); each call creates a new database in it, so tests never share state.
//! Without that variable the PostgreSQL variants are skipped, and each test binary says so
//! once on the terminal, unless `SWITCHBOARD_REQUIRE_POSTGRES=1` says they must run.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::{Backend, Store};
use rand::RngCore;
use sqlx::Connection;

/// Keeps a test database alive (the SQLite file's directory).
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh database URL, or None when PostgreSQL is not configured and not required.
pub async fn fresh(backend: Backend) -> Option<TestDb> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("switchboard.db").display()
            );
            Some(TestDb {
                url,
                backend,
                _dir: Some(dir),
            })
        }
        Backend::Postgres => {
            let Ok(admin) = std::env::var("SWITCHBOARD_TEST_DATABASE_URL") else {
                if std::env::var("SWITCHBOARD_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!(
                        "SWITCHBOARD_REQUIRE_POSTGRES=1 but SWITCHBOARD_TEST_DATABASE_URL is not set \
                         (scripts/test sets both; if it ran these tests without starting \
                         PostgreSQL, add this package to PG_PACKAGES there)"
                    );
                }
                eprintln!(
                    "skipping the PostgreSQL variant: SWITCHBOARD_TEST_DATABASE_URL is not set (scripts/test sets it)"
                );
                announce_postgres_skipped();
                return None;
            };
            let mut b = [0u8; 6];
            rand::rng().fill_bytes(&mut b);
            let name = format!("sbtest_{}", hex::encode(b));
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to test PostgreSQL");
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create test database");
            let _ = conn.close().await;
            let (base, _) = admin.rsplit_once('/').expect("database URL has a path");
            Some(TestDb {
                url: format!("{base}/{name}"),
                backend,
                _dir: None,
            })
        }
    }
}

/// Says once per test binary, on the terminal, that the PostgreSQL variants are being skipped
/// and how to run them. Written to the process's stderr directly: libtest captures what
/// `eprintln!` prints in a passing test, so a skip said only that way would go unseen.
fn announce_postgres_skipped() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n*** SKIPPING the PostgreSQL variants of these tests (they pass without running): \
             SWITCHBOARD_TEST_DATABASE_URL is not set. `scripts/test` runs them all (it starts \
             a throwaway PostgreSQL); or point SWITCHBOARD_TEST_DATABASE_URL at a server \
             (postgres://user@host:port/db) where the user may create databases. ***\n"
        );
    });
}

/// A fresh, migrated store.
pub async fn store(backend: Backend) -> Option<(Store, TestDb)> {
    let db = fresh(backend).await?;
    let store = Store::open(&db.url).await.expect("open test store");
    Some((store, db))
}

/// Defines `#[tokio::test]`s `<name>_sqlite` and `<name>_postgres` running `body(backend)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::Backend::Postgres).await
            }
        }
    };
}
