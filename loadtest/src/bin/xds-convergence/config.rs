//! The run's counts and bounds, from `LOADTEST_*` environment variables.

use std::time::Duration;

use anyhow::{Result, bail};
use switchboard_loadtest::count_from_env;

use crate::scenario::{ROUND_BASE, SHARED};

pub struct Config {
    pub streams: usize,
    pub channels: usize,
    pub services: usize,
    pub endpoints: usize,
    pub rounds: u32,
    pub converge_timeout: Duration,
    pub round_timeout: Duration,
    /// Between the end of a round and the next PUT.
    pub pause: Duration,
    /// When set, between one PUT and the next (a steady rate of changes; a round that takes
    /// longer delays the next), instead of `pause`.
    pub interval: Option<Duration>,
    pub deadline: Duration,
    /// How long after every stream closed the server's RSS is read.
    pub close_wait: Duration,
    pub server_log: String,
    /// `LOADTEST_COMPARE=go-control-plane`: the same scenario against go-control-plane after.
    pub compare: bool,
    /// `LOADTEST_RESTART=1`: the restart storm after the rounds.
    pub restart: bool,
    /// How long after the SIGKILL every stream must have reconverged.
    pub restart_timeout: Duration,
}

impl Config {
    pub fn from_env() -> Result<Config> {
        let secs = |var: &str, default: usize| -> Result<Duration> {
            Ok(Duration::from_secs(count_from_env(var, default)? as u64))
        };
        let c = Config {
            streams: count_from_env("LOADTEST_STREAMS", 1000)?,
            channels: count_from_env("LOADTEST_CHANNELS", 10)?,
            services: count_from_env("LOADTEST_SERVICES", 100)?,
            endpoints: count_from_env("LOADTEST_ENDPOINTS", 3)?,
            rounds: u32::try_from(count_from_env("LOADTEST_ROUNDS", 20)?)?,
            converge_timeout: secs("LOADTEST_CONVERGE_TIMEOUT_SECS", 120)?,
            round_timeout: secs("LOADTEST_ROUND_TIMEOUT_SECS", 30)?,
            pause: Duration::from_millis(count_from_env("LOADTEST_PAUSE_MS", 1000)? as u64),
            interval: match std::env::var_os("LOADTEST_INTERVAL_MS") {
                Some(_) => Some(Duration::from_millis(
                    count_from_env("LOADTEST_INTERVAL_MS", 1000)? as u64,
                )),
                None => None,
            },
            deadline: secs("LOADTEST_TIMEOUT_SECS", 900)?,
            close_wait: secs("LOADTEST_CLOSE_WAIT_SECS", 10)?,
            server_log: std::env::var("LOADTEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            compare: match std::env::var("LOADTEST_COMPARE")
                .unwrap_or_default()
                .as_str()
            {
                "" => false,
                "go-control-plane" => true,
                other => {
                    bail!("LOADTEST_COMPARE={other:?}: the only reference is go-control-plane")
                }
            },
            restart: match std::env::var("LOADTEST_RESTART")
                .unwrap_or_default()
                .as_str()
            {
                "" | "0" => false,
                "1" => true,
                other => bail!("LOADTEST_RESTART={other:?}: expected 1 or 0"),
            },
            restart_timeout: secs("LOADTEST_RESTART_TIMEOUT_SECS", 120)?,
        };
        if c.services < 2 {
            bail!("LOADTEST_SERVICES must be at least 2 (route {SHARED} splits between two)");
        }
        if c.rounds > 1000 - ROUND_BASE {
            bail!(
                "LOADTEST_ROUNDS must be at most {} (a weight encodes the round)",
                1000 - ROUND_BASE
            );
        }
        if c.endpoints > 250 {
            bail!("LOADTEST_ENDPOINTS must be at most 250");
        }
        Ok(c)
    }
}
