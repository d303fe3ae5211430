//! A PostgreSQL cluster that one test owns, so that it may stop and start it: the suite's
//! shared cluster (`SWITCHBOARD_TEST_DATABASE_URL`) must never be stopped. Made as
//! scripts/lib/pg.sh makes that one (Debian's binaries; as root, run as the postgres user,
//! since initdb refuses root), on a free loopback port, removed on drop. Every step is
//! bounded (`pg_ctl -w -t`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Seconds `pg_ctl` may wait for a start or a stop.
const PG_CTL_WAIT: &str = "30";

pub struct OwnPg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    pub port: u16,
    pub url: String,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The newest Debian PostgreSQL's bin directory holding `initdb`.
fn find_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// Whether this run must have PostgreSQL (scripts/test sets one of these).
fn required() -> bool {
    std::env::var("SWITCHBOARD_REQUIRE_POSTGRES").as_deref() == Ok("1")
        || std::env::var_os("SWITCHBOARD_TEST_DATABASE_URL").is_some()
}

impl OwnPg {
    /// A fresh cluster, started; `None` (the test skips) when PostgreSQL is not installed and
    /// the run does not require it.
    pub fn start() -> Option<OwnPg> {
        let Some(bin) = find_bin() else {
            assert!(
                !required(),
                "this test needs its own PostgreSQL cluster, and no initdb was found under \
                 /usr/lib/postgresql (install Debian's postgresql)"
            );
            eprintln!("skipping: no PostgreSQL installed to give this test a cluster of its own");
            return None;
        };
        let as_postgres = is_root();
        let dir = tempfile::tempdir().unwrap();
        run("chmod", &["755", path(dir.path())]);
        if as_postgres {
            run("chown", &["postgres", path(dir.path())]);
        }
        let mut pg = OwnPg {
            dir,
            bin,
            as_postgres,
            port: 0,
            url: String::new(),
        };
        let data = pg.data();
        pg.ctl_checked(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "-E", "UTF8"],
        );
        // A port may be taken between the probe and PostgreSQL's bind: try a few.
        for _ in 0..5 {
            pg.port = super::free_port();
            if pg.pg_ctl_start().status.success() {
                pg.url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
                return Some(pg);
            }
        }
        panic!("cannot start a PostgreSQL cluster\n{}", pg.log());
    }

    fn data(&self) -> String {
        path(&self.dir.path().join("data")).to_owned()
    }

    fn log(&self) -> String {
        super::tail(&self.dir.path().join("pg.log"), 4000)
    }

    /// Runs one of PostgreSQL's programs (as the postgres user when we are root).
    fn ctl(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        cmd.args(args).output().unwrap()
    }

    fn ctl_checked(&self, program: &str, args: &[&str]) {
        let out = self.ctl(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl_start(&self) -> Output {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            path(self.dir.path())
        );
        let log = self.dir.path().join("pg.log");
        self.ctl(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                path(&log),
                "-w",
                "-t",
                PG_CTL_WAIT,
                "-o",
                &options,
                "start",
            ],
        )
    }

    /// Stops the cluster as an operator or a failover would: `pg_ctl stop -m fast` (open
    /// connections are ended).
    pub fn stop(&self) {
        let data = self.data();
        self.ctl_checked(
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "-t", PG_CTL_WAIT, "stop"],
        );
    }

    /// Starts the stopped cluster again, on the same port.
    pub fn start_again(&self) {
        let out = self.pg_ctl_start();
        assert!(
            out.status.success(),
            "cannot restart PostgreSQL\n{}",
            self.log()
        );
    }
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.ctl("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?} failed");
}
